// Package convert turns the network-map engine's views and deltas into the cloudvlan.node.v1 messages
// agents receive, merges runs of deltas into one message, and encodes the engine's (epoch, version)
// pairs into the single version number the wire carries.
package convert

import (
	"encoding/base64"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"weak"

	"github.com/cloudvlan/cloudvlan/controller/internal/netmap"
	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// Network is what a view needs besides the engine's output: the ids of the node's tenant and cvlan,
// the cvlan's prefix lengths (self addresses are shown as prefixes of the cvlan) and its DNS settings.
type Network struct {
	TenantID, CvlanID string
	// IPv4Bits and IPv6Bits are the cvlan's prefix lengths (e.g. 10 and 48); 0 shows host prefixes.
	IPv4Bits, IPv6Bits int
	// DNS is sent in snapshots; nil sends none.
	DNS *nodev1.DnsConfig
}

// PeerFunc returns the message of an engine peer.
type PeerFunc func(*netmap.Peer) *nodev1.Peer

// SharedPeers converts each engine peer once for the whole replica: the engine shares one immutable
// *netmap.Peer between every snapshot and delta that lists it, so keying by (weak) pointer lets all
// streams, snapshots included, hold one message per peer instead of one per view. An entry goes
// when the engine drops the peer (a cleanup on the engine's value), so the cache never outgrows
// the engine. Safe for concurrent use.
type SharedPeers struct {
	mu sync.Mutex
	m  map[weak.Pointer[netmap.Peer]]*nodev1.Peer
}

// Get returns the message for p.
func (s *SharedPeers) Get(p *netmap.Peer) *nodev1.Peer {
	wp := weak.Make(p)
	s.mu.Lock()
	if m, ok := s.m[wp]; ok {
		s.mu.Unlock()
		return m
	}
	s.mu.Unlock()
	m := Peer(p)
	s.mu.Lock()
	defer s.mu.Unlock()
	if old, ok := s.m[wp]; ok {
		return old
	}
	if s.m == nil {
		s.m = make(map[weak.Pointer[netmap.Peer]]*nodev1.Peer)
	}
	s.m[wp] = m
	runtime.AddCleanup(p, s.drop, wp)
	return m
}

func (s *SharedPeers) drop(wp weak.Pointer[netmap.Peer]) {
	s.mu.Lock()
	delete(s.m, wp)
	s.mu.Unlock()
}

// Len returns the number of cached peers.
func (s *SharedPeers) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// PeerCache converts each engine peer once: the engine shares one *netmap.Peer between every delta
// and snapshot that lists it, so keying by pointer lets thousands of streams share one message.
type PeerCache map[*netmap.Peer]*nodev1.Peer

// Get returns the message for p, converting it on first use. Get writes the map: a cache shared
// between goroutines must be filled first (Fill) and then only read (Lookup).
func (c PeerCache) Get(p *netmap.Peer) *nodev1.Peer {
	if c == nil {
		return Peer(p)
	}
	if m, ok := c[p]; ok {
		return m
	}
	m := Peer(p)
	c[p] = m
	return m
}

// Fill converts every peer the deltas list.
func (c PeerCache) Fill(ds []*netmap.Delta) {
	for _, d := range ds {
		if d.Change == nil {
			continue
		}
		for _, p := range d.PeersUpserted {
			c.Get(p)
		}
	}
}

// Lookup returns the cached message for p, or a fresh conversion without storing it: safe for
// concurrent use once the cache is no longer written.
func (c PeerCache) Lookup(p *netmap.Peer) *nodev1.Peer {
	if m, ok := c[p]; ok {
		return m
	}
	return Peer(p)
}

// Key decodes a base64 WireGuard key as the engine stores it; an undecodable key gives nil rather
// than an error because the store validated it on the way in.
func Key(s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != 32 {
		return nil
	}
	return b
}

func hostPrefixes(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, netip.PrefixFrom(a, a.BitLen()).String())
	}
	return out
}

func prefixes(ps []netip.Prefix) []string {
	out := make([]string, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

func addrPorts(as []netip.AddrPort) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// Peer converts one peer.
func Peer(p *netmap.Peer) *nodev1.Peer {
	return &nodev1.Peer{
		NodeId:             p.NodeID,
		WireguardPublicKey: Key(p.Key),
		Name:               p.Name,
		Fqdn:               p.FQDN,
		Addresses:          hostPrefixes(p.Addresses),
		AllowedIps:         prefixes(p.AllowedIPs),
		Endpoints:          addrPorts(p.Endpoints),
		HomeRelayId:        p.HomeRelay,
		Tags:               slices.Clone(p.Tags),
		Online:             p.Online,
	}
}

// Self converts the node's own part.
func Self(s *netmap.Self, nw Network) *nodev1.NodeSelf {
	addrs := make([]string, 0, len(s.Addresses))
	for _, a := range s.Addresses {
		bits := a.BitLen()
		switch {
		case a.Is4() && nw.IPv4Bits > 0:
			bits = nw.IPv4Bits
		case a.Is6() && nw.IPv6Bits > 0:
			bits = nw.IPv6Bits
		}
		addrs = append(addrs, netip.PrefixFrom(a, bits).String())
	}
	return &nodev1.NodeSelf{
		NodeId:         s.NodeID,
		TenantId:       nw.TenantID,
		CvlanId:        nw.CvlanID,
		Name:           s.Name,
		Fqdn:           s.FQDN,
		Addresses:      addrs,
		Tags:           slices.Clone(s.Tags),
		ApprovedRoutes: prefixes(s.Routes),
	}
}

var (
	actions = map[policy.Action]nodev1.FilterAction{
		policy.ActionAllow: nodev1.FilterAction_FILTER_ACTION_ALLOW,
		policy.ActionDeny:  nodev1.FilterAction_FILTER_ACTION_DENY,
	}
	protocols = map[policy.Protocol]nodev1.FilterProtocol{
		policy.ProtoAny:  nodev1.FilterProtocol_FILTER_PROTOCOL_ANY,
		policy.ProtoTCP:  nodev1.FilterProtocol_FILTER_PROTOCOL_TCP,
		policy.ProtoUDP:  nodev1.FilterProtocol_FILTER_PROTOCOL_UDP,
		policy.ProtoICMP: nodev1.FilterProtocol_FILTER_PROTOCOL_ICMP,
	}
)

// Filter converts a packet filter; an empty filter is an empty message (deny everything), never nil.
func Filter(rules []policy.FilterRule) *nodev1.PacketFilter {
	out := &nodev1.PacketFilter{Rules: make([]*nodev1.FilterRule, 0, len(rules))}
	for _, r := range rules {
		fr := &nodev1.FilterRule{
			Action:              actions[r.Action],
			SourcePrefixes:      prefixes(r.Sources),
			DestinationPrefixes: prefixes(r.Destinations),
			Protocol:            protocols[r.Protocol],
		}
		for _, p := range r.Ports {
			fr.Ports = append(fr.Ports, &nodev1.FilterPortRange{First: uint32(p.First), Last: uint32(p.Last)})
		}
		out.Rules = append(out.Rules, fr)
	}
	return out
}

// RelayMap converts the relay map; nil gives an empty map.
func RelayMap(rm *netmap.RelayMap) *nodev1.RelayMap {
	out := &nodev1.RelayMap{}
	if rm == nil {
		return out
	}
	for _, r := range rm.Regions {
		reg := &nodev1.RelayRegion{RegionId: r.ID, Code: r.Code, Name: r.Name}
		for _, n := range r.Relays {
			reg.Relays = append(reg.Relays, &nodev1.RelayNode{RelayId: n.ID, Hostname: n.Hostname, Url: n.URL, StunAddress: n.STUNAddress})
		}
		out.Regions = append(out.Regions, reg)
	}
	return out
}

// Snapshot converts a whole view at a wire version; peer converts (or shares) the peers.
func Snapshot(s *netmap.Snapshot, nw Network, peer PeerFunc) *nodev1.NetworkMap {
	m := &nodev1.NetworkMap{
		Version:      WireVersion(s.Epoch, s.Version),
		Self:         Self(&s.View.Self, nw),
		Peers:        make([]*nodev1.Peer, 0, len(s.View.Peers)),
		PacketFilter: Filter(s.View.PacketFilter),
		Dns:          nw.DNS,
		RelayMap:     RelayMap(s.View.RelayMap),
	}
	for _, p := range s.View.Peers {
		m.Peers = append(m.Peers, peer(p))
	}
	return m
}

// Merge turns a run of consecutive deltas of one node (same epoch, each based on the previous) into one message
// taking the agent from v to w. The result applies exactly like the deltas one by one: a peer removed
// and re-added is upserted, a peer added and removed is removed, later values of self, filter and relay
// map win. ok is false when the deltas are not one consecutive run (the caller sends a snapshot).
func Merge(ds []*netmap.Delta, nw Network, peer PeerFunc) (_ *nodev1.NetworkMapDelta, ok bool) {
	if len(ds) == 0 {
		return nil, false
	}
	first := ds[0]
	upserted := make(map[string]*nodev1.Peer)
	removed := make(map[string]bool)
	var (
		self     *netmap.Self
		filter   []policy.FilterRule
		filterOn bool
		relay    *netmap.RelayMap
	)
	for i, d := range ds {
		if d.Resync || d.Change == nil || d.Epoch != first.Epoch || d.NodeID != first.NodeID ||
			(i > 0 && d.BaseVersion != ds[i-1].Version) || d.Version <= d.BaseVersion {
			return nil, false
		}
		for _, r := range d.PeersRemoved {
			delete(upserted, r.NodeID)
			removed[r.NodeID] = true
		}
		for _, p := range d.PeersUpserted {
			upserted[p.NodeID] = peer(p)
			delete(removed, p.NodeID)
		}
		if d.Self != nil {
			self = d.Self
		}
		if d.PacketFilterChanged {
			filter, filterOn = d.PacketFilter, true
		}
		if d.RelayMap != nil {
			relay = d.RelayMap
		}
	}
	last := ds[len(ds)-1]
	out := &nodev1.NetworkMapDelta{
		Version:     WireVersion(last.Epoch, last.Version),
		BaseVersion: WireVersion(first.Epoch, first.BaseVersion),
	}
	for _, p := range upserted {
		out.PeersUpserted = append(out.PeersUpserted, p)
	}
	slices.SortFunc(out.PeersUpserted, func(a, b *nodev1.Peer) int { return strings.Compare(a.GetNodeId(), b.GetNodeId()) })
	for id := range removed {
		out.PeersRemoved = append(out.PeersRemoved, id)
	}
	slices.Sort(out.PeersRemoved)
	if self != nil {
		out.Self = Self(self, nw)
	}
	if filterOn {
		out.PacketFilter = Filter(filter)
	}
	if relay != nil {
		out.RelayMap = RelayMap(relay)
	}
	return out, true
}

// The wire carries one uint64 version per node, the engine an (epoch, version) pair where the epoch
// changes with every engine instance (controller restart, another replica) and node incarnation. The
// wire version is tag<<32 | version, tag a 31-bit nonzero digest of the epoch: within an epoch versions
// grow by one per delta, and a version from another epoch decodes to a different tag, so the
// controller answers it with a snapshot instead of deltas that do not apply. (A tag collision between
// two epochs is caught by the acknowledged state hash, which forces a snapshot.)
const versionBits = 32

// EpochTag returns the tag of an epoch.
func EpochTag(epoch uint64) uint32 {
	// A fixed mixing function (not maphash, whose seed differs per process) so that every replica
	// and restart computes the same tag for the same epoch.
	z := epoch + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	z ^= z >> 31
	return uint32(z>>33) | 1
}

// WireVersion encodes an engine (epoch, version) pair.
func WireVersion(epoch, version uint64) uint64 {
	return uint64(EpochTag(epoch))<<versionBits | version&(1<<versionBits-1)
}

// SplitWireVersion returns the epoch tag and the engine version of a wire version.
func SplitWireVersion(v uint64) (tag uint32, version uint64) {
	return uint32(v >> versionBits), v & (1<<versionBits - 1)
}
