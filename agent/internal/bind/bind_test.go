package bind

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/cloudvlan/cloudvlan/relay/stun"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// memRelay forwards between binds in memory; the end-to-end tests use the real relay, this one keeps
// the Bind's path decisions testable on their own.
type memRelay struct {
	mu    sync.Mutex
	binds map[[32]byte]*Bind
	from  [32]byte
	sent  int
}

func (r *memRelay) Send(dst [32]byte, pkt []byte) error {
	r.mu.Lock()
	b := r.binds[dst]
	r.sent++
	r.mu.Unlock()
	if b != nil {
		b.DeliverRelay(r.from, pkt)
	}
	return nil
}

type side struct {
	b    *Bind
	key  [32]byte
	recv chan []byte
	ep   chan conn.Endpoint
}

func open(t *testing.T, key byte, drop func(netip.AddrPort) bool) *side {
	s := &side{recv: make(chan []byte, 16), ep: make(chan conn.Endpoint, 16)}
	s.key[0] = key
	s.b = New(Config{Self: s.key, ListenIP: netip.MustParseAddr("127.0.0.1"), DropDirect: drop, ProbeInterval: 300 * time.Millisecond})
	fns, _, err := s.b.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, fn := range fns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs := [][]byte{make([]byte, 2000)}
			sizes := []int{0}
			eps := []conn.Endpoint{nil}
			for {
				n, err := fn(bufs, sizes, eps)
				if err != nil {
					return
				}
				if n == 1 {
					s.recv <- append([]byte(nil), bufs[0][:sizes[0]]...)
					s.ep <- eps[0]
				}
			}
		}()
	}
	t.Cleanup(func() { s.b.Close(); wg.Wait() })
	return s
}

func link(a, b *side) {
	a.b.SetPeers([]PeerInfo{{Key: b.key, NodeID: "b", Endpoints: []netip.AddrPort{b.b.LocalAddr()}, HomeRelayID: "r1"}})
	b.b.SetPeers([]PeerInfo{{Key: a.key, NodeID: "a", Endpoints: []netip.AddrPort{a.b.LocalAddr()}, HomeRelayID: "r1"}})
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func expect(t *testing.T, s *side, want string, from [32]byte) {
	t.Helper()
	select {
	case p := <-s.recv:
		ep := <-s.ep
		if string(p) != want {
			t.Fatalf("received %q, want %q", p, want)
		}
		if e, ok := ep.(*Endpoint); !ok || e.Key != from {
			t.Fatalf("packet attributed to %v, want the peer's identity", ep)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("no packet %q", want)
	}
}

func TestDirectPathProbedAndUsed(t *testing.T) {
	a, b := open(t, 1, nil), open(t, 2, nil)
	link(a, b)
	waitFor(t, "direct path with latency", func() bool { p := a.b.Paths()[b.key]; return p.Direct && p.Latency > 0 })
	if p := a.b.Paths()[b.key]; p.Endpoint != b.b.LocalAddr() {
		t.Fatalf("direct endpoint %v, want %v", p.Endpoint, b.b.LocalAddr())
	}
	ep, err := a.b.ParseEndpoint(b.b.Paths()[a.key].Endpoint.String())
	if err != nil {
		t.Fatal(err)
	}
	_ = ep
	id, err := a.b.ParseEndpoint(hexKey(b.key))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.b.Send([][]byte{[]byte("\x04\x00\x00\x00direct")}, id); err != nil {
		t.Fatal(err)
	}
	expect(t, b, "\x04\x00\x00\x00direct", a.key)
}

func TestRelayFallbackAndUpgrade(t *testing.T) {
	var mu sync.Mutex
	blocked := true
	drop := func(netip.AddrPort) bool { mu.Lock(); defer mu.Unlock(); return blocked }
	a, b := open(t, 1, drop), open(t, 2, nil)
	ra := &memRelay{binds: map[[32]byte]*Bind{b.key: b.b}, from: a.key}
	rb := &memRelay{binds: map[[32]byte]*Bind{a.key: a.b}, from: b.key}
	a.b.SetRelay(ra)
	b.b.SetRelay(rb)
	link(a, b)
	id, _ := a.b.ParseEndpoint(hexKey(b.key))
	if err := a.b.Send([][]byte{[]byte("\x01\x00\x00\x00first")}, id); err != nil {
		t.Fatal(err)
	}
	// The first packet already goes through the relay (beside the direct attempt).
	expect(t, b, "\x01\x00\x00\x00first", a.key)
	time.Sleep(2 * time.Second) // past DirectTimeout: relay only
	if p := a.b.Paths()[b.key]; p.Direct || !p.Relayed {
		t.Fatalf("path %+v, want relayed", p)
	}
	if err := a.b.Send([][]byte{[]byte("\x04\x00\x00\x00relayed")}, id); err != nil {
		t.Fatal(err)
	}
	expect(t, b, "\x04\x00\x00\x00relayed", a.key)

	mu.Lock()
	blocked = false
	mu.Unlock()
	waitFor(t, "upgrade to direct", func() bool { return a.b.Paths()[b.key].Direct })
	ra.mu.Lock()
	before := ra.sent
	ra.mu.Unlock()
	if err := a.b.Send([][]byte{[]byte("\x04\x00\x00\x00direct")}, id); err != nil {
		t.Fatal(err)
	}
	expect(t, b, "\x04\x00\x00\x00direct", a.key)
	ra.mu.Lock()
	after := ra.sent
	ra.mu.Unlock()
	// Only probes (not the data packet) may have used the relay since.
	if after-before > 3 {
		t.Fatalf("relay carried %d packets after the upgrade", after-before)
	}
}

func TestSTUNOnTheWireGuardSocket(t *testing.T) {
	a := open(t, 1, nil)
	pc, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = stun.Serve(ctx, pc, nil) }()
	t.Cleanup(func() { cancel(); <-done; pc.Close() })
	qctx, qcancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer qcancel()
	got, err := a.b.STUN(qctx, []string{"127.0.0.1:1", pc.LocalAddr().String()})
	if err != nil {
		t.Fatal(err)
	}
	if got != a.b.LocalAddr() {
		t.Fatalf("STUN says %v, want the socket's address %v", got, a.b.LocalAddr())
	}
}

func TestProbesNeverLookLikeWireGuard(t *testing.T) {
	for typ := byte(1); typ <= 4; typ++ {
		msg := append([]byte{typ, 0, 0, 0}, make([]byte, probeLen-4)...)
		if isProbe(msg) {
			t.Fatalf("WireGuard message type %d taken for a probe", typ)
		}
	}
	var k [32]byte
	k[5] = 9
	typ, sender, _, ok := decodeProbe(encodeProbe(probePong, k, [12]byte{1}))
	if !ok || typ != probePong || sender != k {
		t.Fatal("probe round trip failed")
	}
}

func hexKey(k [32]byte) string {
	const h = "0123456789abcdef"
	out := make([]byte, 64)
	for i, b := range k {
		out[2*i], out[2*i+1] = h[b>>4], h[b&15]
	}
	return string(out)
}
