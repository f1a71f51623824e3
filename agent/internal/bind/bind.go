// Package bind is the agent's conn.Bind under wireguard-go. WireGuard's UAPI endpoint of every peer is
// the peer's identity (its public key in hex), and this Bind decides per packet how to reach it: direct
// UDP to an endpoint confirmed by a probe or by traffic, or the relay when no direct path is confirmed.
// Probes (ping/pong, sent on the same socket) find and keep direct paths, measure latency, and open NAT
// mappings for hole punching; STUN on the same socket learns the public endpoint.
package bind

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/cloudvlan/cloudvlan/relay/stun"
)

// Relay sends packets to a peer through a relay, addressed by the peer's WireGuard public key. Packets
// from the relay come back through Bind.DeliverRelay.
type Relay interface {
	Send(dst [32]byte, pkt []byte) error
}

// Config configures a Bind.
type Config struct {
	// Self is this node's WireGuard public key (carried in probes so the receiver knows who pings).
	Self [32]byte
	// ListenIP is the address to bind the UDP socket to; invalid means all addresses.
	ListenIP netip.Addr
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
	// DirectTimeout is how long to try direct paths before sending only through the relay (default
	// 1.5 s). Until then packets go both ways, so a dead direct path costs no handshake retransmit.
	DirectTimeout time.Duration
	// ProbeInterval is how often a direct path is re-probed (default 2 s); a path with no pong and no
	// traffic for three intervals is given up.
	ProbeInterval time.Duration
	// DropDirect, when set, drops direct UDP to and from the addresses it matches. Tests use it to
	// simulate a firewall between two nodes.
	DropDirect func(netip.AddrPort) bool
	// OnPathChange is called (without locks held) when a peer's path changes.
	OnPathChange func(key [32]byte, p Path)
}

// Path is how a peer is currently reached.
type Path struct {
	// Direct reports whether a direct UDP path is confirmed.
	Direct bool
	// Endpoint is the direct endpoint in use (when Direct).
	Endpoint netip.AddrPort
	// Latency is the last measured round trip on the current path (0 when unknown).
	Latency time.Duration
	// RelayID is the relay used when not direct (the peer's home relay).
	RelayID string
	// Relayed reports whether packets currently go through the relay.
	Relayed bool
}

// PeerInfo is what the Bind knows about a peer from the network map.
type PeerInfo struct {
	Key         [32]byte
	NodeID      string
	Endpoints   []netip.AddrPort
	HomeRelayID string
}

type peerState struct {
	info        PeerInfo
	candidates  []netip.AddrPort // from the map and hole punches
	direct      netip.AddrPort
	directUntil time.Time
	trySince    time.Time // when sending started without a confirmed direct path
	lastPing    time.Time
	latency     time.Duration
	relayRTT    time.Duration
	pings       map[[12]byte]pingInfo
	wasDirect   bool
}

type pingInfo struct {
	addr  netip.AddrPort // invalid for a ping sent through the relay
	sent  time.Time
	relay bool
}

type relayPacket struct {
	src [32]byte
	pkt []byte
}

// Bind implements conn.Bind.
type Bind struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	udp      *net.UDPConn
	closed   chan struct{}
	relayIn  chan relayPacket
	peers    map[[32]byte]*peerState
	byAddr   map[netip.AddrPort][32]byte
	relay    Relay
	stunWait map[stun.TxID]chan netip.AddrPort
	wg       sync.WaitGroup
}

var _ conn.Bind = (*Bind)(nil)

// New returns a Bind; wireguard-go opens it.
func New(cfg Config) *Bind {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DirectTimeout <= 0 {
		cfg.DirectTimeout = 1500 * time.Millisecond
	}
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = 2 * time.Second
	}
	return &Bind{cfg: cfg, log: cfg.Logger, peers: map[[32]byte]*peerState{}, byAddr: map[netip.AddrPort][32]byte{},
		stunWait: map[stun.TxID]chan netip.AddrPort{}}
}

// Endpoint is a peer identity: the UAPI endpoint value is the peer's public key in hex.
type Endpoint struct{ Key [32]byte }

// ClearSrc implements conn.Endpoint.
func (e *Endpoint) ClearSrc() {}

// SrcToString implements conn.Endpoint.
func (e *Endpoint) SrcToString() string { return "" }

// DstToString implements conn.Endpoint: the identity, so UAPI reads back what was set.
func (e *Endpoint) DstToString() string { return hex.EncodeToString(e.Key[:]) }

// DstToBytes implements conn.Endpoint (used for cookie MACs: any stable per-peer bytes do).
func (e *Endpoint) DstToBytes() []byte { return e.Key[:] }

// DstIP implements conn.Endpoint.
func (e *Endpoint) DstIP() netip.Addr { return netip.Addr{} }

// SrcIP implements conn.Endpoint.
func (e *Endpoint) SrcIP() netip.Addr { return netip.Addr{} }

// addrEndpoint is a plain UDP address, for packets from addresses no peer is known at.
type addrEndpoint struct{ ap netip.AddrPort }

func (e *addrEndpoint) ClearSrc()           {}
func (e *addrEndpoint) SrcToString() string { return "" }
func (e *addrEndpoint) DstToString() string { return e.ap.String() }
func (e *addrEndpoint) DstToBytes() []byte  { b, _ := e.ap.MarshalBinary(); return b }
func (e *addrEndpoint) DstIP() netip.Addr   { return e.ap.Addr() }
func (e *addrEndpoint) SrcIP() netip.Addr   { return netip.Addr{} }

// ParseEndpoint implements conn.Bind: 64 hex characters name a peer, anything else must be ip:port.
func (b *Bind) ParseEndpoint(s string) (conn.Endpoint, error) {
	if len(s) == 64 {
		var k [32]byte
		if _, err := hex.Decode(k[:], []byte(s)); err == nil {
			return &Endpoint{Key: k}, nil
		}
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, fmt.Errorf("bind: endpoint %q is neither a peer key nor ip:port: %w", s, err)
	}
	return &addrEndpoint{ap: ap}, nil
}

// BatchSize implements conn.Bind.
func (b *Bind) BatchSize() int { return 1 }

// SetMark implements conn.Bind.
func (b *Bind) SetMark(uint32) error { return nil }

// Open implements conn.Bind: one UDP socket, plus a receive function for packets from the relay.
func (b *Bind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.udp != nil {
		return nil, 0, conn.ErrBindAlreadyOpen
	}
	laddr := &net.UDPAddr{Port: int(port)}
	network := "udp"
	if b.cfg.ListenIP.IsValid() {
		laddr.IP = b.cfg.ListenIP.AsSlice()
		if b.cfg.ListenIP.Is4() {
			network = "udp4"
		}
	}
	u, err := net.ListenUDP(network, laddr)
	if err != nil {
		return nil, 0, fmt.Errorf("bind: listen %s: %w", laddr, err)
	}
	_ = u.SetReadBuffer(4 << 20)
	_ = u.SetWriteBuffer(4 << 20)
	b.udp = u
	b.closed = make(chan struct{})
	b.relayIn = make(chan relayPacket, 1024)
	closed, relayIn := b.closed, b.relayIn
	b.wg.Add(1)
	go func() { defer b.wg.Done(); b.probeLoop(closed) }()
	return []conn.ReceiveFunc{b.receiveUDP(u), b.receiveRelay(closed, relayIn)}, uint16(u.LocalAddr().(*net.UDPAddr).Port), nil
}

// Close implements conn.Bind.
func (b *Bind) Close() error {
	b.mu.Lock()
	u := b.udp
	if u == nil {
		b.mu.Unlock()
		return nil
	}
	b.udp = nil
	close(b.closed)
	b.mu.Unlock()
	err := u.Close()
	b.wg.Wait()
	return err
}

// LocalAddr returns the UDP socket's address (invalid when closed).
func (b *Bind) LocalAddr() netip.AddrPort {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.udp == nil {
		return netip.AddrPort{}
	}
	return b.udp.LocalAddr().(*net.UDPAddr).AddrPort()
}

// SetRelay sets the relay used for fallback (nil when none is connected).
func (b *Bind) SetRelay(r Relay) {
	b.mu.Lock()
	b.relay = r
	b.mu.Unlock()
}

// SetPeers replaces the peer set. Paths of peers that stay are kept.
func (b *Bind) SetPeers(peers []PeerInfo) {
	b.mu.Lock()
	defer b.mu.Unlock()
	next := make(map[[32]byte]*peerState, len(peers))
	for _, p := range peers {
		ps := b.peers[p.Key]
		if ps == nil {
			ps = &peerState{pings: map[[12]byte]pingInfo{}}
		}
		ps.info = p
		ps.candidates = append([]netip.AddrPort(nil), p.Endpoints...)
		next[p.Key] = ps
	}
	b.peers = next
	b.byAddr = map[netip.AddrPort][32]byte{}
	for k, ps := range next {
		for _, a := range ps.candidates {
			b.byAddr[unmap(a)] = k
		}
		if ps.direct.IsValid() {
			b.byAddr[ps.direct] = k
		}
	}
}

// HolePunch adds endpoints for a peer and pings them now, opening our NAT mapping towards it.
func (b *Bind) HolePunch(key [32]byte, endpoints []netip.AddrPort) {
	b.mu.Lock()
	ps := b.peers[key]
	if ps == nil {
		b.mu.Unlock()
		return
	}
	for _, e := range endpoints {
		e = unmap(e)
		if _, ok := b.byAddr[e]; !ok {
			ps.candidates = append(ps.candidates, e)
			b.byAddr[e] = key
		}
	}
	b.mu.Unlock()
	b.sendPings(key, true)
}

// Paths returns the current path of every peer.
func (b *Bind) Paths() map[[32]byte]Path {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := time.Now()
	out := make(map[[32]byte]Path, len(b.peers))
	for k, ps := range b.peers {
		out[k] = b.pathLocked(ps, now)
	}
	return out
}

func (b *Bind) pathLocked(ps *peerState, now time.Time) Path {
	if now.Before(ps.directUntil) {
		return Path{Direct: true, Endpoint: ps.direct, Latency: ps.latency}
	}
	return Path{Relayed: b.relay != nil, RelayID: ps.info.HomeRelayID, Latency: ps.relayRTT}
}

func unmap(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

func (b *Bind) dropped(a netip.AddrPort) bool {
	return b.cfg.DropDirect != nil && b.cfg.DropDirect(a)
}

// Send implements conn.Bind.
func (b *Bind) Send(bufs [][]byte, ep conn.Endpoint) error {
	var key [32]byte
	switch e := ep.(type) {
	case *Endpoint:
		key = e.Key
	case *addrEndpoint:
		b.mu.Lock()
		k, ok := b.byAddr[e.ap]
		u := b.udp
		b.mu.Unlock()
		if !ok {
			if u == nil {
				return net.ErrClosed
			}
			if b.dropped(e.ap) {
				return nil
			}
			for _, buf := range bufs {
				if _, err := u.WriteToUDPAddrPort(buf, e.ap); err != nil {
					return fmt.Errorf("bind: send to %s: %w", e.ap, err)
				}
			}
			return nil
		}
		key = k
	default:
		return conn.ErrWrongEndpointType
	}

	now := time.Now()
	b.mu.Lock()
	u, relay := b.udp, b.relay
	ps := b.peers[key]
	if u == nil {
		b.mu.Unlock()
		return net.ErrClosed
	}
	if ps == nil {
		b.mu.Unlock()
		return nil // the peer left the map; WireGuard will stop trying
	}
	var direct []netip.AddrPort
	viaRelay := false
	if now.Before(ps.directUntil) {
		direct = []netip.AddrPort{ps.direct}
	} else {
		if ps.trySince.IsZero() || now.Sub(ps.trySince) > 30*time.Second {
			// A fresh attempt (or one after a long quiet time): try direct again beside the relay.
			ps.trySince = now
		}
		if relay == nil || now.Sub(ps.trySince) < b.cfg.DirectTimeout {
			direct = ps.candidates
		}
		viaRelay = relay != nil
	}
	b.mu.Unlock()

	var firstErr error
	for _, a := range direct {
		if b.dropped(a) {
			continue
		}
		for _, buf := range bufs {
			if _, err := u.WriteToUDPAddrPort(buf, a); err != nil && firstErr == nil && !viaRelay {
				firstErr = fmt.Errorf("bind: send to %s: %w", a, err)
			}
		}
	}
	if viaRelay {
		for _, buf := range bufs {
			if err := relay.Send(key, buf); err != nil && firstErr == nil {
				firstErr = fmt.Errorf("bind: send through relay: %w", err)
			}
		}
	}
	return firstErr
}

// DeliverRelay hands a packet received from the relay to WireGuard (or to the prober). It copies pkt.
func (b *Bind) DeliverRelay(src [32]byte, pkt []byte) {
	if isProbe(pkt) {
		b.handleProbe(pkt, netip.AddrPort{}, true)
		return
	}
	b.mu.Lock()
	ch, closed := b.relayIn, b.closed
	b.mu.Unlock()
	if ch == nil {
		return
	}
	select {
	case ch <- relayPacket{src: src, pkt: append([]byte(nil), pkt...)}:
	case <-closed:
	default: // full: drop, as a congested link would
	}
}

func (b *Bind) receiveRelay(closed chan struct{}, in chan relayPacket) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		select {
		case <-closed:
			return 0, net.ErrClosed
		case rp := <-in:
			sizes[0] = copy(packets[0], rp.pkt)
			eps[0] = &Endpoint{Key: rp.src}
			return 1, nil
		}
	}
}

func (b *Bind) receiveUDP(u *net.UDPConn) conn.ReceiveFunc {
	return func(packets [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		for {
			n, ap, err := u.ReadFromUDPAddrPort(packets[0])
			if err != nil {
				return 0, err
			}
			ap = unmap(ap)
			if b.dropped(ap) {
				continue
			}
			pkt := packets[0][:n]
			if isProbe(pkt) {
				b.handleProbe(pkt, ap, false)
				continue
			}
			if stun.IsMessage(pkt) {
				b.handleSTUN(pkt)
				continue
			}
			now := time.Now()
			b.mu.Lock()
			key, known := b.byAddr[ap]
			var changed bool
			var path Path
			if known {
				if ps := b.peers[key]; ps != nil {
					// Traffic from the peer's address proves the path works in this direction, and a
					// NAT mapping that lets it in lets our replies out: use it.
					changed = !now.Before(ps.directUntil) || ps.direct != ap
					ps.direct = ap
					ps.directUntil = now.Add(3 * b.cfg.ProbeInterval)
					path = b.pathLocked(ps, now)
				}
			}
			b.mu.Unlock()
			if changed {
				b.notify(key, path)
			}
			sizes[0] = n
			if known {
				eps[0] = &Endpoint{Key: key}
			} else {
				eps[0] = &addrEndpoint{ap: ap}
			}
			return 1, nil
		}
	}
}

func (b *Bind) notify(key [32]byte, p Path) {
	if b.cfg.OnPathChange != nil {
		b.cfg.OnPathChange(key, p)
	}
	b.log.Debug("peer path", "peer", hex.EncodeToString(key[:4]), "direct", p.Direct, "endpoint", p.Endpoint, "relayed", p.Relayed)
}

// probeLoop pings candidates of peers without a confirmed path, and re-pings confirmed paths.
func (b *Bind) probeLoop(closed chan struct{}) {
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-closed:
			return
		case <-t.C:
		}
		now := time.Now()
		var due [][32]byte
		var lost []struct {
			k [32]byte
			p Path
		}
		b.mu.Lock()
		for k, ps := range b.peers {
			isDirect := now.Before(ps.directUntil)
			if ps.wasDirect && !isDirect {
				lost = append(lost, struct {
					k [32]byte
					p Path
				}{k, b.pathLocked(ps, now)})
			}
			ps.wasDirect = isDirect
			// Probe quickly while searching (so an opening path is found within a second), at the probe
			// interval once confirmed.
			every := b.cfg.ProbeInterval
			if !isDirect {
				every = time.Second
			}
			if now.Sub(ps.lastPing) >= every {
				due = append(due, k)
			}
			for id, pi := range ps.pings {
				if now.Sub(pi.sent) > 10*time.Second {
					delete(ps.pings, id)
				}
			}
		}
		b.mu.Unlock()
		for _, l := range lost {
			b.notify(l.k, l.p)
		}
		for _, k := range due {
			b.sendPings(k, false)
		}
	}
}

// sendPings pings a peer: its confirmed endpoint, or every candidate, and the relay path.
func (b *Bind) sendPings(key [32]byte, all bool) {
	now := time.Now()
	b.mu.Lock()
	ps, u, relay := b.peers[key], b.udp, b.relay
	if ps == nil || u == nil {
		b.mu.Unlock()
		return
	}
	ps.lastPing = now
	targets := ps.candidates
	if !all && now.Before(ps.directUntil) {
		targets = []netip.AddrPort{ps.direct}
	}
	type out struct {
		to  netip.AddrPort
		msg []byte
	}
	var msgs []out
	for _, a := range targets {
		id := newTxID()
		ps.pings[id] = pingInfo{addr: a, sent: now}
		msgs = append(msgs, out{to: a, msg: encodeProbe(probePing, b.cfg.Self, id)})
	}
	var relayPing []byte
	if relay != nil {
		id := newTxID()
		ps.pings[id] = pingInfo{sent: now, relay: true}
		relayPing = encodeProbe(probePing, b.cfg.Self, id)
	}
	b.mu.Unlock()
	for _, m := range msgs {
		if !b.dropped(m.to) {
			_, _ = u.WriteToUDPAddrPort(m.msg, m.to)
		}
	}
	if relayPing != nil {
		_ = relay.Send(key, relayPing)
	}
}

func (b *Bind) handleProbe(pkt []byte, from netip.AddrPort, viaRelay bool) {
	typ, sender, id, ok := decodeProbe(pkt)
	if !ok {
		return
	}
	now := time.Now()
	switch typ {
	case probePing:
		b.mu.Lock()
		u, relay := b.udp, b.relay
		if ps := b.peers[sender]; ps != nil && !viaRelay {
			// Remember where the peer pings from: its packets from there are attributed to it.
			if _, ok := b.byAddr[from]; !ok {
				b.byAddr[from] = sender
				ps.candidates = append(ps.candidates, from)
			}
		}
		b.mu.Unlock()
		pong := encodeProbe(probePong, b.cfg.Self, id)
		if viaRelay {
			if relay != nil {
				_ = relay.Send(sender, pong)
			}
		} else if u != nil && !b.dropped(from) {
			_, _ = u.WriteToUDPAddrPort(pong, from)
		}
	case probePong:
		b.mu.Lock()
		ps := b.peers[sender]
		if ps == nil {
			b.mu.Unlock()
			return
		}
		pi, ok := ps.pings[id]
		if !ok {
			b.mu.Unlock()
			return
		}
		delete(ps.pings, id)
		rtt := now.Sub(pi.sent)
		if pi.relay {
			ps.relayRTT = rtt
			b.mu.Unlock()
			return
		}
		// Only an answer from the address we pinged (with our unguessable id) confirms a path.
		if from != pi.addr {
			b.mu.Unlock()
			return
		}
		changed := !now.Before(ps.directUntil) || ps.direct != from
		if changed && now.Before(ps.directUntil) && ps.latency > 0 && rtt > ps.latency*2 {
			changed = false // keep the faster path we already have
		}
		if changed || ps.direct == from {
			ps.direct = from
			ps.latency = rtt
			ps.directUntil = now.Add(3 * b.cfg.ProbeInterval)
			b.byAddr[from] = sender
		}
		path := b.pathLocked(ps, now)
		b.mu.Unlock()
		if changed {
			b.notify(sender, path)
		}
	}
}

func newTxID() [12]byte {
	var id [12]byte
	_, _ = rand.Read(id[:])
	return id
}

// ErrNoSTUN means no STUN server answered.
var ErrNoSTUN = errors.New("bind: no STUN answer")
