package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/upgrade"
	"github.com/cloudvlan/cloudvlan/relay/server"
)

func TestTwoClientsExchange(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, nil)
	a := e.connect(r, "t1", "a", wgKey(1))
	b := e.connect(r, "t1", "b", wgKey(2))
	aIn, bIn := recvChan(t, a), recvChan(t, b)
	big := bytes.Repeat([]byte{0x5a}, 1400)
	for i := 0; i < 100; i++ {
		if err := a.c.Send(b.key, pkt(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 100; i++ {
		expectFrom(t, bIn, a.key, pkt(i), 5*time.Second)
	}
	if err := b.c.Send(a.key, big); err != nil {
		t.Fatal(err)
	}
	expectFrom(t, aIn, b.key, big, 5*time.Second)
	rtt, err := a.c.Ping(context.Background())
	if err != nil || rtt <= 0 {
		t.Fatalf("ping: %v %v", rtt, err)
	}
	// The counters move after the packet is handed on: the last one may lag its delivery.
	waitFor(t, "stats count both clients and 101 packets", func() bool {
		st := r.srv.Stats()
		return st.Clients == 2 && st.PacketsForwarded >= 101 && st.BytesForwarded >= 1400
	})
}

func TestCrossTenantLooksUnknown(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, nil)
	a := e.connect(r, "t1", "a", wgKey(1))
	b := e.connect(r, "t1", "b", wgKey(2))
	evil := e.connect(r, "t2", "evil", wgKey(3))
	aIn, evilIn := recvChan(t, a), recvChan(t, evil)
	for i := 0; i < 20; i++ {
		if err := evil.c.Send(a.key, pkt(i)); err != nil {
			t.Fatal(err)
		}
		if err := evil.c.Send(wgKey(99), pkt(i)); err != nil { // unknown key
			t.Fatal(err)
		}
	}
	// b's packet is sent after evil's: when it has arrived, evil's would have too.
	sendUntil(t, b, a.key, aIn, []byte("from b"))
	for {
		select {
		case got := <-aIn:
			if bytes.Equal(got[:32], evil.key[:]) {
				t.Fatalf("cross-tenant packet delivered: %q", got[32:])
			}
			continue
		default:
		}
		break
	}
	waitFor(t, "cross-tenant drop counted", func() bool {
		st := r.srv.Stats()
		return st.Drops["cross_tenant"] == 20 && st.Drops["unknown_dest"] == 20
	})
	// The sender sees the same thing for both: no reply, no notice.
	select {
	case k := <-evil.gone:
		t.Fatalf("sender got a peer-gone for %v", k.ShortString())
	case got := <-evilIn:
		t.Fatalf("sender got a packet %q", got)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestPeerGoneReachesSender(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, nil)
	a := e.connect(r, "t1", "a", wgKey(1))
	b := e.connect(r, "t1", "b", wgKey(2))
	bIn := recvChan(t, b)
	sendUntil(t, a, b.key, bIn, []byte("hi"))
	_ = b.c.Close()
	select {
	case k := <-a.gone:
		if k != b.key {
			t.Fatalf("peer gone for %v, want %v", k, b.key)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no peer-gone notice")
	}
	waitFor(t, "client count", func() bool { return r.srv.Stats().Clients == 1 })
}

func TestNewerConnectionReplacesOlder(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, nil)
	a := e.connect(r, "t1", "a", wgKey(1))
	bKey := wgKey(2)
	// The older connection is raw so that it does not redial when dropped.
	old, br, err := upgrade.Dial(context.Background(), r.url, e.tlsFor("t1", "b", bKey))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if _, _, err := frame.NewReader(br).ReadFrame(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "old connection registered", func() bool { return r.srv.Stats().Clients == 2 })
	if err := a.c.Send(bKey, []byte("to old")); err != nil {
		t.Fatal(err)
	}
	b2 := e.connect(r, "t1", "b", bKey)
	b2In := recvChan(t, b2)
	_ = old.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("older connection not closed: %v", err)
	}
	sendUntil(t, a, bKey, b2In, []byte("to new"))
	select {
	case k := <-a.gone:
		t.Fatalf("replacement produced peer-gone for %v", k.ShortString())
	default:
	}
}

func TestAdmissionLimit(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, func(c *server.Config) { c.MaxClients = 2 })
	e.connect(r, "t1", "a", wgKey(1))
	e.connect(r, "t1", "b", wgKey(2))
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, _, err := upgrade.Dial(ctx, r.url, e.tlsFor("t1", "c", wgKey(3)))
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("503")) {
		t.Fatalf("third client admitted: %v", err)
	}
	if got := r.srv.Stats().Rejects["admission_limit"]; got != 1 {
		t.Fatalf("admission rejects = %d", got)
	}
}

// TestBadClientsDoNotHurtOthers: unauthenticated, foreign-CA, malformed,
// oversize and privilege-escalating clients are dropped while a pair keeps talking.
func TestBadClientsDoNotHurtOthers(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, nil)
	a := e.connect(r, "t1", "a", wgKey(1))
	b := e.connect(r, "t1", "b", wgKey(2))
	bIn := recvChan(t, b)
	ctx := context.Background()

	t.Run("no certificate", func(t *testing.T) {
		cfg := &tls.Config{RootCAs: e.ca.Roots()}
		_, _, err := upgrade.Dial(ctx, r.url, cfg)
		if err == nil || !bytes.Contains([]byte(err.Error()), []byte("401")) {
			t.Fatalf("want 401, got %v", err)
		}
	})
	t.Run("foreign CA", func(t *testing.T) {
		other := newEnv(t)
		cfg := other.tlsFor("t1", "x", wgKey(5))
		cfg.RootCAs = e.ca.Roots()
		if _, _, err := upgrade.Dial(ctx, r.url, cfg); err == nil {
			t.Fatal("client with a certificate of another CA was accepted")
		}
	})
	raw := func(t *testing.T, node string, key frame.Key, payload []byte) {
		t.Helper()
		nc, br, err := upgrade.Dial(ctx, r.url, e.tlsFor("t1", node, key))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if _, _, err := frame.NewReader(br).ReadFrame(make([]byte, 64)); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.Write(payload); err != nil {
			t.Fatal(err)
		}
		_ = nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.Copy(io.Discard, br); err != nil {
			t.Fatalf("relay did not close the connection: %v", err)
		}
	}
	t.Run("short SendPacket", func(t *testing.T) {
		raw(t, "m1", wgKey(6), []byte{byte(frame.TypeSendPacket), 0, 0, 0, 3, 1, 2, 3})
	})
	t.Run("oversize frame", func(t *testing.T) {
		raw(t, "m2", wgKey(7), []byte{byte(frame.TypeSendPacket), 0, 1, 0, 1})
	})
	t.Run("client posing as mesh peer", func(t *testing.T) {
		raw(t, "m3", wgKey(8), []byte{byte(frame.TypeWatchConns), 0, 0, 0, 0})
	})
	t.Run("plain HTTP without upgrade", func(t *testing.T) {
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.ca.Roots()}}}
		defer hc.CloseIdleConnections()
		resp, err := hc.Get("https://" + r.ln.Addr().String() + "/relay")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUpgradeRequired {
			t.Fatalf("status %d", resp.StatusCode)
		}
		resp, err = hc.Get("https://" + r.ln.Addr().String() + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("healthz status %d", resp.StatusCode)
		}
	})
	sendUntil(t, a, b.key, bIn, []byte("still fine"))
	st := r.srv.Stats()
	if st.Rejects["unauthenticated"] < 1 || st.Rejects["protocol_error"] < 3 {
		t.Fatalf("rejects: %+v", st.Rejects)
	}
	waitFor(t, "bad clients gone", func() bool { return r.srv.Stats().Clients == 2 })
}

// TestSlowReaderDoesNotSlowOthers: a client that never reads gets its
// queue trimmed (drops counted) while another pair still exchanges promptly.
func TestSlowReaderDoesNotSlowOthers(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, func(c *server.Config) { c.SendQueueLen = 64; c.WriteTimeout = 2 * time.Second })
	a := e.connect(r, "t1", "a", wgKey(1))
	b := e.connect(r, "t1", "b", wgKey(2))
	bIn := recvChan(t, b)
	// The slow client: upgraded, then never reads.
	slowKey := wgKey(9)
	nc, _, err := upgrade.Dial(context.Background(), r.url, e.tlsFor("t1", "slow", slowKey))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if tc, ok := nc.NetConn().(*net.TCPConn); ok {
		_ = tc.SetReadBuffer(4096)
	}
	flood := bytes.Repeat([]byte{1}, 1400)
	for i := 0; i < 20000; i++ { // 28 MB: far more than socket buffers hold
		_ = a.c.Send(slowKey, flood)
		if i%1000 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	start := time.Now()
	for i := 0; i < 50; i++ {
		sendUntil(t, a, b.key, bIn, pkt(i))
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("50 round trips took %v behind a slow reader", d)
	}
	waitFor(t, "queue drops counted", func() bool { return r.srv.Stats().Drops["queue_full"] > 0 })
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t)
	const rate, burst = 200_000, 50_000
	r := e.startRelay("r1", nil, func(c *server.Config) { c.RateLimitBytes = rate; c.RateBurstBytes = burst })
	// The bucket may start filling when a connects: measure from before that.
	start := time.Now()
	a := e.connect(r, "t1", "a", wgKey(1))
	b := e.connect(r, "t1", "b", wgKey(2))
	bIn := recvChan(t, b)
	p := bytes.Repeat([]byte{2}, 968) // 1000 bytes with the key
	const n = 400                     // 400 kB offered at once
	for i := 0; i < n; i++ {
		if err := a.c.Send(b.key, p); err != nil {
			t.Fatal(err)
		}
		if i%100 == 99 {
			time.Sleep(5 * time.Millisecond) // stay under the client's own queue bound
		}
	}
	waitFor(t, "every packet forwarded or dropped, and the forwarded ones delivered", func() bool {
		st := r.srv.Stats()
		return st.PacketsForwarded+st.Drops["rate_limited"] == n && uint64(len(bIn)) == st.PacketsForwarded
	})
	elapsed := time.Since(start)
	got := len(bIn)
	limit := (burst + rate*elapsed.Seconds()) / 1000
	if float64(got) > limit+1 || got == 0 {
		t.Fatalf("received %d packets of 1000 bytes in %v; token bucket allows %.0f", got, elapsed, limit)
	}
	st := r.srv.Stats()
	if st.Drops["rate_limited"]+uint64(got) != n {
		t.Fatalf("forwarded %d + dropped %d != %d sent", got, st.Drops["rate_limited"], n)
	}
}

func TestIdleClientIsDropped(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, func(c *server.Config) { c.IdleTimeout = 300 * time.Millisecond })
	nc, br, err := upgrade.Dial(context.Background(), r.url, e.tlsFor("t1", "quiet", wgKey(1)))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("silent client not dropped: %v", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond {
		t.Fatalf("dropped after %v, before the idle timeout", d)
	}
	waitFor(t, "idle reject counted", func() bool { return r.srv.Stats().Rejects["idle_timeout"] == 1 })
}

func TestAdmissionAllowsReplacement(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, func(c *server.Config) { c.MaxClients = 1 })
	key := wgKey(1)
	old, br, err := upgrade.Dial(context.Background(), r.url, e.tlsFor("t1", "a", key))
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if _, _, err := frame.NewReader(br).ReadFrame(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	// Full, but the same key may reconnect (and replaces the old connection).
	e.connect(r, "t1", "a", key)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := upgrade.Dial(ctx, r.url, e.tlsFor("t1", "b", wgKey(2))); err == nil {
		t.Fatal("a different key was admitted past the limit")
	}
}

// TestSteadySlowReaderDoesNotHoldBackSendersOtherTraffic: a receiver that
// keeps reading, but slowly, is "busy", not stalled. A sender that floods
// it while also talking to b must not have its traffic to b held back for
// long: waiting for the slow queue is budgeted per second.
func TestSteadySlowReaderDoesNotHoldBackSendersOtherTraffic(t *testing.T) {
	e := newEnv(t)
	r := e.startRelay("r1", nil, func(c *server.Config) { c.SendQueueLen = 32 })
	a := e.connect(r, "t1", "a", wgKey(1))
	b := e.connect(r, "t1", "b", wgKey(2))
	bIn := recvChan(t, b)
	slowKey := wgKey(9)
	nc, br, err := upgrade.Dial(context.Background(), r.url, e.tlsFor("t1", "slow", slowKey))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	stop := make(chan struct{})
	done := make(chan struct{}, 2)
	go func() { // reads about one packet per millisecond, forever
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 1500)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := io.ReadFull(br, buf); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	flood := bytes.Repeat([]byte{1}, 1400)
	go func() {
		defer func() { done <- struct{}{} }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = a.c.SendWait(context.Background(), slowKey, flood)
		}
	}()
	t.Cleanup(func() { close(stop); nc.Close(); <-done; <-done })
	time.Sleep(200 * time.Millisecond) // let the slow queue fill
	var worst time.Duration
	for i := 0; i < 20; i++ {
		start := time.Now()
		if err := a.c.Send(b.key, pkt(i)); err != nil {
			t.Fatal(err)
		}
		expectFrom(t, bIn, a.key, pkt(i), 10*time.Second)
		worst = max(worst, time.Since(start))
	}
	t.Logf("worst latency a->b behind the slow receiver: %v", worst)
	if worst > 3*time.Second {
		t.Fatalf("a packet to b took %v behind a slow receiver", worst)
	}
}
