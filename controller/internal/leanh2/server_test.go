package leanh2

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/cloudvlan/cloudvlan/controller/internal/testcert"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// testServer serves h with a leanh2 server on a loopback TLS listener.
type testServer struct {
	srv    *Server
	addr   string
	pool   *x509.CertPool
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	ln     net.Listener
}

func newTestServer(t *testing.T, srv *Server, h http.Handler) *testServer {
	t.Helper()
	cert, pool := testcert.SelfSigned(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, addr: ln.Addr().String(), pool: pool, ln: ln}
	ts.ctx, ts.cancel = context.WithCancel(context.Background())
	cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{http2.NextProtoTLS}, MinVersion: tls.VersionTLS13}
	ts.wg.Add(1)
	go func() {
		defer ts.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ts.wg.Add(1)
			go func() {
				defer ts.wg.Done()
				tc := tls.Server(c, cfg)
				if err := tc.HandshakeContext(ts.ctx); err != nil {
					_ = c.Close()
					return
				}
				_ = srv.ServeConn(ts.ctx, tc, h)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = ln.Close()
		srv.Close()
		ts.cancel()
		ts.wg.Wait()
	})
	return ts
}

// client is x/net's HTTP/2 client for the test server.
func (ts *testServer) client(t *testing.T) *http.Client {
	t.Helper()
	tr := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: ts.pool, ServerName: "localhost"}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// rawConn is a hand-driven HTTP/2 client connection, for what clients do not normally do.
type rawConn struct {
	t   *testing.T
	tc  *tls.Conn
	fr  *http2.Framer
	enc *hpack.Encoder
	buf bytes.Buffer
}

func (ts *testServer) raw(t *testing.T, settings ...http2.Setting) *rawConn {
	t.Helper()
	tc, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ts.pool, ServerName: "localhost", NextProtos: []string{http2.NextProtoTLS}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tc.Close() })
	_ = tc.SetDeadline(time.Now().Add(20 * time.Second))
	rc := &rawConn{t: t, tc: tc, fr: http2.NewFramer(tc, tc)}
	rc.enc = hpack.NewEncoder(&rc.buf)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := io.WriteString(tc, clientPreface); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return rc
}

func (rc *rawConn) request(id uint32, path string, endStream bool) {
	rc.t.Helper()
	rc.buf.Reset()
	for _, f := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"}, {Name: ":authority", Value: "localhost"}, {Name: ":path", Value: path}} {
		_ = rc.enc.WriteField(f)
	}
	if err := rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.buf.Bytes(), EndHeaders: true, EndStream: endStream}); err != nil {
		rc.t.Fatal(err)
	}
}

// next reads frames until one of type T (skipping SETTINGS, WINDOW_UPDATE and the like).
func next[T http2.Frame](rc *rawConn) T {
	rc.t.Helper()
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			rc.t.Fatalf("read frame: %v", err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			_ = rc.fr.WriteSettingsAck()
		}
		if v, ok := f.(T); ok {
			return v
		}
	}
}

func TestRequestResponse(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		w.Header().Set("Trailer", "X-Declared")
		w.Header().Set("X-Proto", r.Proto)
		if r.TLS != nil && r.TLS.HandshakeComplete {
			w.Header().Set("X-TLS", "yes")
		}
		_, _ = w.Write(bytes.ToUpper(body))
		w.Header().Set("X-Declared", "declared")
		w.Header().Set(http.TrailerPrefix+"X-Prefixed", "prefixed")
	})
	ts := newTestServer(t, &Server{}, h)
	cl := ts.client(t)
	big := strings.Repeat("abcdefgh", 64<<10) // 512 KiB: several windows each way
	tests := []struct{ name, body string }{{"empty", ""}, {"small", "hello"}, {"larger than the windows", big}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := cl.Post("https://"+ts.addr+"/echo", "text/plain", strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			got, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || string(got) != strings.ToUpper(tt.body) {
				t.Fatalf("status %d, body of %d bytes, want 200 and %d bytes", resp.StatusCode, len(got), len(tt.body))
			}
			if resp.Header.Get("X-Proto") != "HTTP/2.0" || resp.Header.Get("X-TLS") != "yes" {
				t.Errorf("headers %v", resp.Header)
			}
			if resp.Trailer.Get("X-Declared") != "declared" || resp.Trailer.Get("X-Prefixed") != "prefixed" {
				t.Errorf("trailers %v, want X-Declared and X-Prefixed", resp.Trailer)
			}
			if resp.Header.Get("X-Declared") != "" {
				t.Errorf("a trailer was sent as a header: %v", resp.Header)
			}
		})
	}
}

// TestSendWaitsForWindow: the server sends no more than the client's window and resumes after
// WINDOW_UPDATE.
func TestSendWaitsForWindow(t *testing.T) {
	const size = 3000
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write(bytes.Repeat([]byte("x"), size))
	})
	ts := newTestServer(t, &Server{}, h)
	rc := ts.raw(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
	rc.request(1, "/", true)
	next[*http2.MetaHeadersFrame](rc)
	got := 0
	for got < 1000 {
		got += len(next[*http2.DataFrame](rc).Data())
	}
	if got != 1000 {
		t.Fatalf("got %d bytes within a 1000-byte window", got)
	}
	// Nothing more arrives until the window grows.
	_ = rc.tc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if f, err := rc.fr.ReadFrame(); err == nil {
		t.Fatalf("frame %v sent beyond the window", f)
	}
	// A timed-out tls.Conn read cannot be resumed: check over a fresh connection that the server
	// resumes after WINDOW_UPDATE.
	rc2 := ts.raw(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1000})
	rc2.request(1, "/", true)
	next[*http2.MetaHeadersFrame](rc2)
	got = 0
	for got < 1000 {
		got += len(next[*http2.DataFrame](rc2).Data())
	}
	if err := rc2.fr.WriteWindowUpdate(1, size); err != nil {
		t.Fatal(err)
	}
	for {
		df := next[*http2.DataFrame](rc2)
		got += len(df.Data())
		if df.StreamEnded() {
			break
		}
	}
	if got != size {
		t.Fatalf("got %d bytes, want %d", got, size)
	}
}

// TestWriteDeadline: a handler whose client grants no window fails its write at the deadline
// instead of waiting forever, and the stream is reset.
func TestWriteDeadline(t *testing.T) {
	werr := make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		_ = rc.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write(bytes.Repeat([]byte("x"), 100))
		werr <- rc.Flush()
	})
	ts := newTestServer(t, &Server{}, h)
	rc := ts.raw(t, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 0})
	rc.request(1, "/", true)
	select {
	case err := <-werr:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("flush: %v, want a deadline error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("write still blocked 10 s after its deadline")
	}
	if f := next[*http2.RSTStreamFrame](rc); f.StreamID != 1 {
		t.Fatalf("reset stream %d", f.StreamID)
	}
}

// TestClientResetCancelsHandler: RST_STREAM from the client ends the handler's context.
func TestClientResetCancelsHandler(t *testing.T) {
	started, ended := make(chan struct{}), make(chan error, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		ended <- r.Context().Err()
	})
	ts := newTestServer(t, &Server{}, h)
	rc := ts.raw(t)
	rc.request(1, "/", true)
	<-started
	if err := rc.fr.WriteRSTStream(1, http2.ErrCodeCancel); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("handler context: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler context not canceled after RST_STREAM")
	}
}

// TestConcurrentStreamLimit: a stream past MaxConcurrentStreams is refused; the others go on.
func TestConcurrentStreamLimit(t *testing.T) {
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-release
	})
	ts := newTestServer(t, &Server{MaxConcurrentStreams: 2}, h)
	rc := ts.raw(t)
	rc.request(1, "/", true)
	rc.request(3, "/", true)
	next[*http2.MetaHeadersFrame](rc)
	next[*http2.MetaHeadersFrame](rc)
	rc.request(5, "/", true)
	if f := next[*http2.RSTStreamFrame](rc); f.StreamID != 5 || f.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("got RST_STREAM %d %v, want 5 REFUSED_STREAM", f.StreamID, f.ErrCode)
	}
	close(release)
	for range 2 {
		if f := next[*http2.DataFrame](rc); !f.StreamEnded() {
			t.Fatalf("stream %d not ended", f.StreamID)
		}
	}
}

// TestProtocolErrors: each violation ends the connection with GOAWAY and the right code.
func TestProtocolErrors(t *testing.T) {
	ts := newTestServer(t, &Server{}, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-r.Context().Done() // reads nothing: the body fills the windows
		}
	}))
	tests := []struct {
		name string
		send func(rc *rawConn)
		code http2.ErrCode
	}{
		{"even stream", func(rc *rawConn) { rc.request(2, "/", true) }, http2.ErrCodeProtocol},
		{"data on idle stream", func(rc *rawConn) { _ = rc.fr.WriteData(7, true, []byte("x")) }, http2.ErrCodeProtocol},
		{"window overflow", func(rc *rawConn) { _ = rc.fr.WriteWindowUpdate(0, 1<<31-1) }, http2.ErrCodeFlowControl},
		{"frame larger than advertised", func(rc *rawConn) {
			rc.request(1, "/slow", false)
			_ = rc.fr.WriteData(1, false, make([]byte, 20<<10))
		}, http2.ErrCodeFrameSize},
		{"connection window overrun", func(rc *rawConn) {
			rc.request(1, "/slow", false)
			for range 5 {
				_ = rc.fr.WriteData(1, false, make([]byte, 16<<10))
			}
		}, http2.ErrCodeFlowControl},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := ts.raw(t)
			tt.send(rc)
			if f := next[*http2.GoAwayFrame](rc); f.ErrCode != tt.code {
				t.Fatalf("GOAWAY %v, want %v", f.ErrCode, tt.code)
			}
			if _, err := rc.fr.ReadFrame(); err == nil {
				t.Fatal("connection still open after GOAWAY")
			}
		})
	}
}

func TestBadPreface(t *testing.T) {
	ts := newTestServer(t, &Server{}, http.NotFoundHandler())
	tc, err := tls.Dial("tcp", ts.addr, &tls.Config{RootCAs: ts.pool, ServerName: "localhost", NextProtos: []string{http2.NextProtoTLS}})
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	_ = tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(tc, "GET / HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadAll(tc); err != nil && !errors.Is(err, io.EOF) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			t.Fatal("connection not closed after a bad preface")
		}
	}
}

// TestPanicResetsStream: a panicking handler resets its stream; the connection serves on.
func TestPanicResetsStream(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/panic" {
			panic(http.ErrAbortHandler)
		}
		_, _ = io.WriteString(w, "ok")
	})
	ts := newTestServer(t, &Server{}, h)
	rc := ts.raw(t)
	rc.request(1, "/panic", true)
	if f := next[*http2.RSTStreamFrame](rc); f.StreamID != 1 || f.ErrCode != http2.ErrCodeInternal {
		t.Fatalf("got RST_STREAM %d %v", f.StreamID, f.ErrCode)
	}
	rc.request(3, "/fine", true)
	if f := next[*http2.DataFrame](rc); f.StreamID != 3 || string(f.Data()) != "ok" {
		t.Fatalf("got %q on stream %d", f.Data(), f.StreamID)
	}
}

func TestPing(t *testing.T) {
	ts := newTestServer(t, &Server{}, http.NotFoundHandler())
	rc := ts.raw(t)
	data := [8]byte{1, 2, 3, 4, 5, 6, 7, 8}
	if err := rc.fr.WritePing(false, data); err != nil {
		t.Fatal(err)
	}
	if f := next[*http2.PingFrame](rc); !f.IsAck() || f.Data != data {
		t.Fatalf("got PING %v %v", f.IsAck(), f.Data)
	}
}

// TestShutdown: GOAWAY reaches the client, an open request finishes, a new one is refused, and
// Shutdown returns once the connection ended.
func TestShutdown(t *testing.T) {
	release := make(chan struct{})
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "done")
	})
	ts := newTestServer(t, &Server{}, h)
	rc := ts.raw(t)
	rc.request(1, "/", true)
	next[*http2.MetaHeadersFrame](rc)
	shut := make(chan error, 1)
	go func() { shut <- ts.srv.Shutdown(context.Background()) }()
	if f := next[*http2.GoAwayFrame](rc); f.ErrCode != http2.ErrCodeNo || f.LastStreamID != 1 {
		t.Fatalf("GOAWAY %v last %d", f.ErrCode, f.LastStreamID)
	}
	rc.request(3, "/", true)
	if f := next[*http2.RSTStreamFrame](rc); f.StreamID != 3 || f.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("got RST_STREAM %d %v", f.StreamID, f.ErrCode)
	}
	close(release)
	if f := next[*http2.DataFrame](rc); string(f.Data()) != "done" {
		t.Fatalf("got %q", f.Data())
	}
	select {
	case err := <-shut:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Shutdown did not return after the last stream ended")
	}
}

// TestIdleStreamCost: an open streaming request costs two goroutines (the connection's reader and
// the handler), the design's point (ADR 010).
func TestIdleStreamCost(t *testing.T) {
	const conns = 20
	var opened sync.WaitGroup
	opened.Add(conns)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		opened.Done()
		<-r.Context().Done()
	})
	ts := newTestServer(t, &Server{}, h)
	before := runtime.NumGoroutine()
	for range conns {
		rc := ts.raw(t)
		rc.request(1, "/watch", true)
		next[*http2.MetaHeadersFrame](rc)
	}
	opened.Wait()
	// The test's accept goroutines returned into ServeConn: what is left per connection is the
	// server's.
	time.Sleep(100 * time.Millisecond)
	if per := float64(runtime.NumGoroutine()-before) / conns; per > 2.0 {
		t.Fatalf("%.2f goroutines per idle streaming connection, want 2", per)
	}
}

// TestConnectionWindowAccounting: what the server gives back to the connection window is what the
// handlers consumed, no more (more would let a client make the server buffer without bound).
func TestConnectionWindowAccounting(t *testing.T) {
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
	})
	ts := newTestServer(t, &Server{}, h)
	rc := ts.raw(t)
	const requests, size = 12, 10 << 10
	var returned uint32
	for i := range requests {
		id := uint32(2*i + 1)
		rc.request(id, "/upload", false)
		if err := rc.fr.WriteData(id, true, make([]byte, size)); err != nil {
			t.Fatal(err)
		}
		for done := false; !done; {
			f, err := rc.fr.ReadFrame()
			if err != nil {
				t.Fatal(err)
			}
			switch f := f.(type) {
			case *http2.WindowUpdateFrame:
				if f.StreamID == 0 {
					returned += f.Increment
				}
			case *http2.SettingsFrame:
				if !f.IsAck() {
					_ = rc.fr.WriteSettingsAck()
				}
			case *http2.DataFrame:
				done = f.StreamID == id && f.StreamEnded()
			}
		}
	}
	sent := uint32(requests * size)
	if returned > sent || returned < sent-windowUpdateAt {
		t.Fatalf("server returned %d bytes of connection window for %d consumed", returned, sent)
	}
}
