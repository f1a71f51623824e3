package leanh2

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/cloudvlan/cloudvlan/controller/internal/testcert"
)

// FuzzServeConn feeds arbitrary bytes after the connection preface: whatever a client sends, the
// server must not panic, and the connection and its handlers must end once the client is gone.
func FuzzServeConn(f *testing.F) {
	var seed bytes.Buffer
	fr := http2.NewFramer(&seed, nil)
	var blk bytes.Buffer
	enc := hpack.NewEncoder(&blk)
	for _, hf := range []hpack.HeaderField{{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"}, {Name: ":authority", Value: "x"}, {Name: ":path", Value: "/echo"}, {Name: "content-type", Value: "application/grpc"}} {
		_ = enc.WriteField(hf)
	}
	_ = fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 10})
	_ = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk.Bytes(), EndHeaders: true})
	_ = fr.WriteData(1, true, []byte("hello"))
	_ = fr.WriteWindowUpdate(1, 100)
	_ = fr.WritePing(false, [8]byte{1})
	_ = fr.WriteRSTStream(1, http2.ErrCodeCancel)
	_ = fr.WriteGoAway(1, http2.ErrCodeNo, nil)
	f.Add(seed.Bytes())
	f.Add([]byte{0, 0, 0, 4, 0, 0, 0, 0, 0})

	cert, pool := testcert.SelfSigned(f)
	srvCfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{http2.NextProtoTLS}}
	cliCfg := &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{http2.NextProtoTLS}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set(http.TrailerPrefix+"Grpc-Status", "0")
		_, _ = w.Write(b)
	})
	f.Fuzz(func(t *testing.T, in []byte) {
		sc, cc := net.Pipe()
		srv := &Server{PrefaceTimeout: time.Second, WriteTimeout: time.Second}
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tc := tls.Server(sc, srvCfg)
			if tc.HandshakeContext(context.Background()) != nil {
				_ = sc.Close()
				return
			}
			_ = srv.ServeConn(context.Background(), tc, h)
		}()
		tc := tls.Client(cc, cliCfg)
		if err := tc.Handshake(); err != nil {
			t.Fatalf("handshake: %v", err)
		}
		go func() { _, _ = io.Copy(io.Discard, tc) }()
		_ = tc.SetWriteDeadline(time.Now().Add(time.Second))
		_, _ = tc.Write(append([]byte(clientPreface), in...))
		time.Sleep(time.Millisecond)
		_ = tc.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("connection still served 10 s after the client left")
		}
	})
}
