package server

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/cloudvlan/cloudvlan/controller/internal/testcert"
)

// TestDirectHTTP2 serves a listener the way the node port is served (HTTP2 set): HTTP/2 clients
// are served on the HTTP/2 server directly, HTTP/1.1 clients still get an answer, a stream that
// never ends is cut at shutdown and Serve returns nil.
func TestDirectHTTP2(t *testing.T) {
	cert, pool := testcert.SelfSigned(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	streaming := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/proto", func(w http.ResponseWriter, r *http.Request) {
		tlsOK := "no-tls"
		if r.TLS != nil && r.TLS.HandshakeComplete {
			tlsOK = "tls"
		}
		_, _ = io.WriteString(w, r.Proto+" "+tlsOK)
	})
	mux.HandleFunc("/stream", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "open")
		w.(http.Flusher).Flush()
		close(streaming)
		<-r.Context().Done()
	})
	addrs := make(chan map[string]net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, slog.New(slog.DiscardHandler), []Listener{{
			Name: "node", Addr: "127.0.0.1:0", Handler: mux, HTTP2: NodeHTTP2(),
			TLS: &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}},
		}}, func(m map[string]net.Addr) { addrs <- m })
	}()
	_, port, err := net.SplitHostPort((<-addrs)["node"].String())
	if err != nil {
		t.Fatal(err)
	}
	base := "https://localhost:" + port

	tests := []struct {
		name string
		tr   http.RoundTripper
		want string
	}{
		{"http2", &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}, "HTTP/2.0 tls"},
		{"http1", &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialContext: dialLocal}, "HTTP/1.1 tls"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tr, ok := tc.tr.(*http2.Transport); ok {
				tr.DialTLSContext = func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
					c, err := dialLocal(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					tc := tls.Client(c, cfg)
					return tc, tc.HandshakeContext(ctx)
				}
			}
			resp, err := (&http.Client{Transport: tc.tr, Timeout: 30 * time.Second}).Get(base + "/proto")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			if string(b) != tc.want {
				t.Fatalf("got %q, want %q", b, tc.want)
			}
		})
	}

	// A plain TCP client that never completes the handshake must not keep Serve from returning.
	idle, err := dialLocal(ctx, "tcp", "localhost:"+port)
	if err == nil {
		defer idle.Close()
	}

	tr := &http2.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DialTLSContext: func(ctx context.Context, network, addr string, cfg *tls.Config) (net.Conn, error) {
		c, err := dialLocal(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		tc := tls.Client(c, cfg)
		return tc, tc.HandshakeContext(ctx)
	}}
	resp, err := (&http.Client{Transport: tr}).Get(base + "/stream")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	<-streaming
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("Serve did not return after shutdown")
	}
	// The stream ends (its request context is done): reading the body returns.
	if b, _ := io.ReadAll(resp.Body); string(b) != "open" {
		t.Fatalf("stream body %q, want %q", b, "open")
	}
}

func dialLocal(ctx context.Context, network, addr string) (net.Conn, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	return (&net.Dialer{}).DialContext(ctx, network, net.JoinHostPort("127.0.0.1", port))
}

// TestStart: Start returns the bound addresses once the ports listen, Stop and Wait end Serve, and a
// port that cannot be bound is Start's error.
func TestStart(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	r, err := Start(context.Background(), log, []Listener{{Name: "metrics", Addr: "127.0.0.1:0", Handler: http.NotFoundHandler()}})
	if err != nil {
		t.Fatal(err)
	}
	addr := r.Addrs["metrics"].String()
	if _, err := Start(context.Background(), log, []Listener{{Name: "metrics", Addr: addr, Handler: http.NotFoundHandler()}}); err == nil {
		t.Fatalf("second Start on %s succeeded", addr)
	}
	r.Stop()
	if err := r.Wait(); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("port still open after Stop and Wait")
	}
}
