package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/relay/client"
	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/testpki"
	"github.com/cloudvlan/cloudvlan/relay/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const td = "test.cloudvlan"

type env struct {
	t  *testing.T
	ca *testpki.CA
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ca, err := testpki.New(td)
	if err != nil {
		t.Fatal(err)
	}
	return &env{t: t, ca: ca}
}

func testLogger() *slog.Logger {
	if os.Getenv("RELAY_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

type relay struct {
	srv *server.Server
	url string
	ln  net.Listener
}

// startRelay runs a relay on a loopback port; mod adjusts its config.
// The listener is created first so that mesh peers can be listed before start.
func (e *env) listen() net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		e.t.Fatal(err)
	}
	return ln
}

func (e *env) startRelay(id string, ln net.Listener, mod func(*server.Config)) *relay {
	e.t.Helper()
	if ln == nil {
		ln = e.listen()
	}
	cert, err := e.ca.Relay("", id)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := server.Config{
		TrustDomain:    td,
		Certificate:    server.StaticCertificate{Cert: &cert},
		Roots:          e.ca.Roots(),
		RelayID:        id,
		Region:         "test",
		RateLimitBytes: -1,
		MeshMinBackoff: 20 * time.Millisecond,
		MeshMaxBackoff: 200 * time.Millisecond,
		Logger:         testLogger().With("relay", id),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := server.New(cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	e.t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("relay %s: %v", id, err)
		}
	})
	return &relay{srv: srv, url: "https://" + ln.Addr().String() + "/relay", ln: ln}
}

func wgKey(b byte) frame.Key {
	var k frame.Key
	for i := range k {
		k[i] = b ^ byte(i*7)
	}
	return k
}

type peer struct {
	key  frame.Key
	c    *client.Client
	gone chan frame.Key
}

func (e *env) tlsFor(tenant, node string, key frame.Key) *tls.Config {
	cert, err := e.ca.Node(tenant, node, key)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.ca.ClientTLS(cert)
}

func (e *env) connect(r *relay, tenant, node string, key frame.Key) *peer {
	e.t.Helper()
	p := &peer{key: key, gone: make(chan frame.Key, 16)}
	c, err := client.New(client.Config{
		URL:        r.url,
		TLSConfig:  e.tlsFor(tenant, node, key),
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
		OnPeerGone: func(k client.Key, _ client.PeerGoneReason) {
			select {
			case p.gone <- k:
			default:
			}
		},
		Logger: testLogger().With("node", node),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitConnected(ctx); err != nil {
		e.t.Fatalf("%s: %v", node, err)
	}
	if c.SelfKey() != key {
		e.t.Fatalf("%s: relay says our key is %v, want %v", node, c.SelfKey(), key)
	}
	p.c = c
	return p
}

// recvChan delivers a peer's received packets on a channel until the test ends.
func recvChan(t *testing.T, p *peer) <-chan []byte {
	ch := make(chan []byte, 4096)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 70000)
		for {
			src, n, err := p.c.Recv(buf)
			if err != nil {
				close(ch)
				return
			}
			ch <- append(src[:], buf[:n]...)
		}
	}()
	t.Cleanup(func() { _ = p.c.Close(); wg.Wait() })
	return ch
}

// expectFrom waits for a packet from src with payload want, ignoring others.
func expectFrom(t *testing.T, ch <-chan []byte, src frame.Key, want []byte, within time.Duration) {
	t.Helper()
	deadline := time.After(within)
	for {
		select {
		case got, ok := <-ch:
			if !ok {
				t.Fatal("receiver closed")
			}
			if bytes.Equal(got[:32], src[:]) && bytes.Equal(got[32:], want) {
				return
			}
		case <-deadline:
			t.Fatalf("no packet %q from %v within %v", want, src.ShortString(), within)
		}
	}
}

// sendUntil resends pkt until the receiver gets it (mesh presence is eventually consistent).
func sendUntil(t *testing.T, from *peer, to frame.Key, ch <-chan []byte, pkt []byte) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if err := from.c.Send(to, pkt); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-ch:
			if bytes.Equal(got[:32], from.key[:]) && bytes.Equal(got[32:], pkt) {
				return
			}
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("packet %q never arrived", pkt)
}

// noPacket asserts that nothing arrives within d.
func noPacket(t *testing.T, ch <-chan []byte, d time.Duration) {
	t.Helper()
	select {
	case got := <-ch:
		t.Fatalf("unexpected packet %q from %x", got[32:], got[:4])
	case <-time.After(d):
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func pkt(i int) []byte { return []byte(fmt.Sprintf("packet-%06d", i)) }
