// Package filter enforces the network map's packet filter on the tunnel, deny by default, in both
// directions: packets entering from the tunnel must match an allowing rule (first match wins) unless they
// answer a flow this node opened; packets leaving are new flows (the peer's own filter decides on them)
// or answers to flows the rules still allow. Because answers to inbound flows are re-checked against the
// current rules, a rule change cuts existing connections, not only new ones.
package filter

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/tun"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// IP protocol numbers.
const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// Proto is the protocol a rule matches.
type Proto int

// Protocols a rule can match.
const (
	ProtoAny Proto = iota
	ProtoTCP
	ProtoUDP
	ProtoICMP
)

// PortRange is an inclusive destination port range.
type PortRange struct{ First, Last uint16 }

// Rule is one compiled rule.
type Rule struct {
	Allow bool
	Src   []netip.Prefix
	Dst   []netip.Prefix
	Proto Proto
	Ports []PortRange // empty: every port
}

// Compile turns the map's filter into rules. Malformed prefixes are an error: silently skipping one
// could turn a deny into an allow further down the list.
func Compile(pf *nodev1.PacketFilter) ([]Rule, error) {
	var out []Rule
	for i, r := range pf.GetRules() {
		cr := Rule{Allow: r.GetAction() == nodev1.FilterAction_FILTER_ACTION_ALLOW}
		for _, s := range r.GetSourcePrefixes() {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("filter: rule %d source: %w", i, err)
			}
			cr.Src = append(cr.Src, p)
		}
		for _, s := range r.GetDestinationPrefixes() {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, fmt.Errorf("filter: rule %d destination: %w", i, err)
			}
			cr.Dst = append(cr.Dst, p)
		}
		switch r.GetProtocol() {
		case nodev1.FilterProtocol_FILTER_PROTOCOL_TCP:
			cr.Proto = ProtoTCP
		case nodev1.FilterProtocol_FILTER_PROTOCOL_UDP:
			cr.Proto = ProtoUDP
		case nodev1.FilterProtocol_FILTER_PROTOCOL_ICMP:
			cr.Proto = ProtoICMP
		default:
			cr.Proto = ProtoAny
		}
		for _, pr := range r.GetPorts() {
			if pr.GetFirst() > 65535 || pr.GetLast() > 65535 || pr.GetLast() < pr.GetFirst() {
				return nil, fmt.Errorf("filter: rule %d: bad port range %d-%d", i, pr.GetFirst(), pr.GetLast())
			}
			cr.Ports = append(cr.Ports, PortRange{uint16(pr.GetFirst()), uint16(pr.GetLast())})
		}
		out = append(out, cr)
	}
	return out, nil
}

// parsePrefix accepts a prefix or a bare address (a single-host prefix).
func parsePrefix(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not a prefix or address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// packet is what the filter reads from an IP header.
type packet struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16 // for ICMP echo both are the identifier
	hasPorts     bool
	tcpFlags     uint8
	icmpType     uint8
}

const (
	tcpSYN = 0x02
	tcpACK = 0x10
)

func parse(b []byte) (packet, bool) {
	var p packet
	if len(b) < 1 {
		return p, false
	}
	var l4 []byte
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return p, false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return p, false
		}
		p.src = netip.AddrFrom4([4]byte(b[12:16]))
		p.dst = netip.AddrFrom4([4]byte(b[16:20]))
		p.proto = b[9]
		fragOff := binary.BigEndian.Uint16(b[6:]) & 0x1fff
		if fragOff == 0 {
			l4 = b[ihl:]
		}
	case 6:
		if len(b) < 40 {
			return p, false
		}
		p.src = netip.AddrFrom16([16]byte(b[8:24]))
		p.dst = netip.AddrFrom16([16]byte(b[24:40]))
		next, off := b[6], 40
		// Walk the common extension headers to find the transport header.
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(b) < off+8 {
					return p, false
				}
				next, off = b[off], off+8+int(b[off+1])*8
				continue
			case 44: // fragment
				if len(b) < off+8 {
					return p, false
				}
				fragOff := binary.BigEndian.Uint16(b[off+2:]) >> 3
				next, off = b[off], off+8
				if fragOff != 0 {
					p.proto = next
					return p, true
				}
				continue
			}
			break
		}
		p.proto = next
		if off <= len(b) {
			l4 = b[off:]
		}
	default:
		return p, false
	}
	switch p.proto {
	case protoTCP, protoUDP:
		if len(l4) >= 4 {
			p.sport, p.dport, p.hasPorts = binary.BigEndian.Uint16(l4[0:]), binary.BigEndian.Uint16(l4[2:]), true
		}
		if p.proto == protoTCP && len(l4) >= 14 {
			p.tcpFlags = l4[13]
		}
	case protoICMP, protoICMPv6:
		if len(l4) >= 1 {
			p.icmpType = l4[0]
		}
		if len(l4) >= 8 && isEcho(p.proto, l4[0]) {
			id := binary.BigEndian.Uint16(l4[4:])
			p.sport, p.dport = id, id
		}
	}
	return p, true
}

func isEcho(proto, typ uint8) bool {
	if proto == protoICMP {
		return typ == 8 || typ == 0
	}
	return typ == 128 || typ == 129
}

func (r *Rule) matches(p packet) bool {
	switch r.Proto {
	case ProtoTCP:
		if p.proto != protoTCP {
			return false
		}
	case ProtoUDP:
		if p.proto != protoUDP {
			return false
		}
	case ProtoICMP:
		if p.proto != protoICMP && p.proto != protoICMPv6 {
			return false
		}
	}
	if !containsAny(r.Src, p.src) || !containsAny(r.Dst, p.dst) {
		return false
	}
	if len(r.Ports) > 0 && (p.proto == protoTCP || p.proto == protoUDP) {
		if !p.hasPorts {
			return false
		}
		for _, pr := range r.Ports {
			if p.dport >= pr.First && p.dport <= pr.Last {
				return true
			}
		}
		return false
	}
	return true
}

func containsAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

type flowKey struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
}

func (k flowKey) reverse() flowKey {
	return flowKey{src: k.dst, dst: k.src, proto: k.proto, sport: k.dport, dport: k.sport}
}

// Limits of the flow table: idle flows expire, and a full table is flushed rather than grown, so a flood
// of new flows costs bounded memory (flushing only makes replies re-checked, never more permissive).
const (
	flowIdle   = 3 * time.Minute
	maxFlows   = 65536
	sweepEvery = 30 * time.Second
)

// Filter holds the rules and the table of flows this node opened.
type Filter struct {
	rules atomic.Pointer[[]Rule]

	mu        sync.Mutex
	outFlows  map[flowKey]time.Time
	lastSweep time.Time

	droppedIn, droppedOut atomic.Uint64
}

// New returns a filter that drops everything until rules are set.
func New() *Filter {
	f := &Filter{outFlows: map[flowKey]time.Time{}}
	f.rules.Store(&[]Rule{})
	return f
}

// SetRules replaces the rules.
func (f *Filter) SetRules(r []Rule) { f.rules.Store(&r) }

// Dropped returns how many packets were dropped entering and leaving the tunnel.
func (f *Filter) Dropped() (in, out uint64) { return f.droppedIn.Load(), f.droppedOut.Load() }

func (f *Filter) allowedByRules(p packet) bool {
	for _, r := range *f.rules.Load() {
		if r.matches(p) {
			return r.Allow
		}
	}
	return false
}

// Inbound reports whether a packet from the tunnel may be delivered to this node.
func (f *Filter) Inbound(b []byte) bool {
	p, ok := parse(b)
	if !ok {
		f.droppedIn.Add(1)
		return false
	}
	k := flowKey{p.src, p.dst, p.proto, p.sport, p.dport}
	now := time.Now()
	f.mu.Lock()
	seen, isReply := f.outFlows[k.reverse()]
	if isReply && now.Sub(seen) < flowIdle {
		f.mu.Unlock()
		return true
	}
	f.mu.Unlock()
	if f.allowedByRules(p) {
		return true
	}
	f.droppedIn.Add(1)
	return false
}

// Outbound reports whether a packet from this node may enter the tunnel. A packet that opens a flow (TCP
// SYN, ICMP echo request, UDP) is recorded so its answers may come back; an answer to a flow that arrived
// from the tunnel is allowed only while the rules still allow that flow.
func (f *Filter) Outbound(b []byte) bool {
	p, ok := parse(b)
	if !ok {
		f.droppedOut.Add(1)
		return false
	}
	k := flowKey{p.src, p.dst, p.proto, p.sport, p.dport}
	rev := packet{src: p.dst, dst: p.src, proto: p.proto, sport: p.dport, dport: p.sport, hasPorts: p.hasPorts}
	opens := false
	switch p.proto {
	case protoTCP:
		opens = p.tcpFlags&tcpSYN != 0 && p.tcpFlags&tcpACK == 0
	case protoICMP:
		opens = p.icmpType == 8
	case protoICMPv6:
		opens = p.icmpType == 128
	case protoUDP:
		// UDP has no handshake: it opens a flow unless it answers one the rules let in.
		opens = !f.allowedByRules(rev)
	}
	now := time.Now()
	f.mu.Lock()
	if !opens {
		if seen, ok := f.outFlows[k]; ok && now.Sub(seen) < flowIdle {
			f.outFlows[k] = now
			f.mu.Unlock()
			return true
		}
		f.mu.Unlock()
		if f.allowedByRules(rev) {
			return true
		}
		f.droppedOut.Add(1)
		return false
	}
	if len(f.outFlows) >= maxFlows || now.Sub(f.lastSweep) > sweepEvery {
		f.sweepLocked(now)
	}
	f.outFlows[k] = now
	f.mu.Unlock()
	return true
}

func (f *Filter) sweepLocked(now time.Time) {
	f.lastSweep = now
	if len(f.outFlows) >= maxFlows {
		f.outFlows = map[flowKey]time.Time{}
		return
	}
	for k, t := range f.outFlows {
		if now.Sub(t) >= flowIdle {
			delete(f.outFlows, k)
		}
	}
}

// Wrap returns dev with the filter applied: Read (packets leaving through the tunnel) and Write
// (packets arriving from it).
func Wrap(dev tun.Device, f *Filter) tun.Device { return &device{Device: dev, f: f} }

type device struct {
	tun.Device
	f *Filter
}

// Read reads packets from the OS side and keeps those allowed to leave.
func (d *device) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	for {
		n, err := d.Device.Read(bufs, sizes, offset)
		kept := 0
		for i := 0; i < n; i++ {
			if !d.f.Outbound(bufs[i][offset : offset+sizes[i]]) {
				continue
			}
			if kept != i {
				// Swap rather than copy: wireguard-go owns these buffers and expects them back.
				bufs[kept], bufs[i] = bufs[i], bufs[kept]
				sizes[kept] = sizes[i]
			}
			kept++
		}
		if kept > 0 || err != nil || n == 0 {
			return kept, err
		}
	}
}

// Write delivers the packets allowed in and reports every packet as consumed.
func (d *device) Write(bufs [][]byte, offset int) (int, error) {
	kept := bufs[:0:0]
	for _, b := range bufs {
		if d.f.Inbound(b[offset:]) {
			kept = append(kept, b)
		}
	}
	if len(kept) == 0 {
		return len(bufs), nil
	}
	if _, err := d.Device.Write(kept, offset); err != nil {
		return 0, err
	}
	return len(bufs), nil
}
