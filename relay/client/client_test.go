package client_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/relay/client"
	"github.com/cloudvlan/cloudvlan/relay/internal/testpki"
	"github.com/cloudvlan/cloudvlan/relay/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startRelay serves on addr ("127.0.0.1:0" for any port) and returns the
// bound address and a stop function.
func startRelay(t *testing.T, ca *testpki.CA, addr string) (string, func()) {
	t.Helper()
	cert, err := ca.Relay("", "r")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{
		TrustDomain: ca.TrustDomain, Certificate: server.StaticCertificate{Cert: &cert}, Roots: ca.Roots(),
		RestartReconnectIn: 50 * time.Millisecond, RestartTryFor: 5 * time.Second,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for i := 0; ; i++ { // the port of a just-stopped relay may linger briefly
		ln, err = net.Listen("tcp", addr)
		if err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = srv.Run(ctx, ln); close(done) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func newClient(t *testing.T, ca *testpki.CA, addr string, key client.Key, onState func(bool, error)) *client.Client {
	t.Helper()
	cert, err := ca.Node("t1", key.ShortString(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := client.New(client.Config{
		URL: "https://" + addr + "/relay", TLSConfig: ca.ClientTLS(cert),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
		OnConnState: onState,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestReconnectsAfterRelayRestart(t *testing.T) {
	ca, err := testpki.New("td")
	if err != nil {
		t.Fatal(err)
	}
	addr, stop := startRelay(t, ca, "127.0.0.1:0")
	ka, kb := client.Key{1}, client.Key{2}
	states := make(chan bool, 16)
	a := newClient(t, ca, addr, ka, func(up bool, _ error) { states <- up })
	b := newClient(t, ca, addr, kb, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, c := range []*client.Client{a, b} {
		if err := c.WaitConnected(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// One receiver for the whole test, so that no stale Recv steals packets.
	inbox := make(chan string, 64)
	go func() {
		buf := make([]byte, 100)
		for {
			src, n, err := b.Recv(buf)
			if err != nil {
				return
			}
			if src == ka {
				inbox <- string(buf[:n])
			}
		}
	}()
	exchange := func(msg string) {
		t.Helper()
		for ctx.Err() == nil {
			_ = a.Send(kb, []byte(msg))
			select {
			case s := <-inbox:
				if s == msg {
					return
				}
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
			}
		}
		t.Fatalf("%q not exchanged", msg)
	}
	exchange("before")
	stop()
	waitState(t, states, false)
	startRelay(t, ca, addr)
	waitState(t, states, true)
	if err := b.WaitConnected(ctx); err != nil {
		t.Fatal(err)
	}
	exchange("after")
	if st := a.Stats(); st.Connects < 2 {
		t.Fatalf("connects = %d", st.Connects)
	}
	rtt, err := a.Ping(ctx)
	if err != nil || rtt <= 0 {
		t.Fatalf("ping %v %v", rtt, err)
	}
}

func waitState(t *testing.T, ch <-chan bool, want bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-ch:
			if got == want {
				return
			}
		case <-timeout:
			t.Fatalf("state %v never reached", want)
		}
	}
}

func TestClosedClient(t *testing.T) {
	ca, err := testpki.New("td")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := startRelay(t, ca, "127.0.0.1:0")
	c := newClient(t, ca, addr, client.Key{3}, nil)
	recvErr := make(chan error, 1)
	go func() {
		_, _, err := c.Recv(make([]byte, 10))
		recvErr <- err
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-recvErr; !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Recv after Close: %v", err)
	}
	if err := c.Send(client.Key{4}, []byte("x")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
	if err := c.Send(client.Key{4}, make([]byte, client.MaxPacket+1)); err == nil {
		t.Fatal("oversize packet accepted")
	}
}

func TestSendDropsOldestWhenDisconnected(t *testing.T) {
	ca, err := testpki.New("td")
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.Node("t1", "n", client.Key{5})
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens here: the client keeps redialling while packets queue.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c, err := client.New(client.Config{URL: "https://" + addr, TLSConfig: ca.ClientTLS(cert), SendQueueLen: 8,
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := 0; i < 20; i++ {
		if err := c.Send(client.Key{6}, []byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if st := c.Stats(); st.SendDrops != 12 || c.Pending() != 8 {
		t.Fatalf("drops %d pending %d", st.SendDrops, c.Pending())
	}
	wctx, wcancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer wcancel()
	if err := c.SendWait(wctx, client.Key{6}, []byte{99}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("SendWait on a full queue: %v", err)
	}
	if st := c.Stats(); st.SendDrops != 12 {
		t.Fatalf("SendWait dropped: %d", st.SendDrops)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := c.WaitConnected(ctx); err == nil || c.Stats().ConnectFailures == 0 {
		t.Fatalf("connected to nothing: %v", err)
	}
}
