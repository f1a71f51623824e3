// Package netmapstate applies network-map snapshots and deltas (cloudvlan.node.v1) to a node's state and
// hashes that state in one canonical form. The agent acknowledges each applied version with this hash and
// the controller computes the same hash for the version it sent, so both sides agree on what "in sync"
// means. It is shared by cvlan-agent, cvlan-vrouter and the controller.
//
// The hash is kept up to date per delta: O(changed peers), not O(peers), because a node with thousands
// of peers acknowledges every change. It combines a SHA-256 of the map without peers with the sum
// (mod 2^64 per 64-bit lane) of one SHA-256 per peer, an order-independent multiset hash: applying a
// delta subtracts the replaced or removed peers' hashes and adds the new ones (see Hash).
package netmapstate

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"

	"google.golang.org/protobuf/proto"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// ErrVersionMismatch means a delta does not apply to the state's version: ask for a snapshot.
var ErrVersionMismatch = errors.New("netmapstate: delta base version does not match the held version")

// State is one node's view of the mesh. The zero value holds no map (version 0).
type State struct {
	version  uint64
	self     *nodev1.NodeSelf
	peers    map[string]*nodev1.Peer
	filter   *nodev1.PacketFilter
	dns      *nodev1.DnsConfig
	relayMap *nodev1.RelayMap

	peerSum peerSum  // sum of the peers' hashes
	rest    [32]byte // hash of everything but the peers, valid when restOK
	restOK  bool
	hash    string // cached result of Hash, valid when hashOK
	hashOK  bool
}

// peerSum is the lane-wise sum of per-peer SHA-256 hashes.
type peerSum [4]uint64

func (s *peerSum) add(p *nodev1.Peer, sign uint64) {
	h := peerHash(p)
	for i := range s {
		// sign is 1 to add, ^0 (-1) to subtract: two's complement keeps it exact mod 2^64.
		s[i] += sign * binary.LittleEndian.Uint64(h[8*i:])
	}
}

const (
	plus  = uint64(1)
	minus = ^uint64(0)
)

// Version returns the version of the held map (0 for none).
func (s *State) Version() uint64 { return s.version }

// ApplySnapshot replaces the state with a whole map.
func (s *State) ApplySnapshot(m *nodev1.NetworkMap) {
	s.version = m.GetVersion()
	s.self = m.GetSelf()
	s.peers = make(map[string]*nodev1.Peer, len(m.GetPeers()))
	for _, p := range m.GetPeers() {
		s.peers[p.GetNodeId()] = p
	}
	s.filter = m.GetPacketFilter()
	s.dns = m.GetDns()
	s.relayMap = m.GetRelayMap()
	s.peerSum = peerSum{}
	for _, p := range s.peers {
		s.peerSum.add(p, plus)
	}
	s.restOK, s.hashOK = false, false
}

// ApplyDelta applies d on top of the held version. It returns ErrVersionMismatch, leaving the state
// unchanged, when d.BaseVersion is not the held version.
func (s *State) ApplyDelta(d *nodev1.NetworkMapDelta) error {
	if d.GetBaseVersion() != s.version {
		return fmt.Errorf("%w: holding %d, delta %d -> %d", ErrVersionMismatch, s.version, d.GetBaseVersion(), d.GetVersion())
	}
	if d.GetVersion() <= d.GetBaseVersion() {
		return fmt.Errorf("netmapstate: delta version %d does not follow base %d", d.GetVersion(), d.GetBaseVersion())
	}
	if s.peers == nil {
		s.peers = make(map[string]*nodev1.Peer)
	}
	for _, id := range d.GetPeersRemoved() {
		if old, ok := s.peers[id]; ok {
			s.peerSum.add(old, minus)
			delete(s.peers, id)
		}
	}
	for _, p := range d.GetPeersUpserted() {
		if old, ok := s.peers[p.GetNodeId()]; ok {
			s.peerSum.add(old, minus)
		}
		s.peers[p.GetNodeId()] = p
		s.peerSum.add(p, plus)
	}
	if d.Self != nil {
		s.self = d.GetSelf()
		s.restOK = false
	}
	if d.PacketFilter != nil {
		s.filter = d.GetPacketFilter()
		s.restOK = false
	}
	if d.Dns != nil {
		s.dns = d.GetDns()
		s.restOK = false
	}
	if d.RelayMap != nil {
		s.relayMap = d.GetRelayMap()
		s.restOK = false
	}
	s.version = d.GetVersion()
	s.hashOK = false
	return nil
}

// Peer returns the peer with the given node id.
func (s *State) Peer(nodeID string) (*nodev1.Peer, bool) {
	p, ok := s.peers[nodeID]
	return p, ok
}

// Map returns the held state as a NetworkMap with peers sorted by node id: the canonical form.
func (s *State) Map() *nodev1.NetworkMap {
	ids := make([]string, 0, len(s.peers))
	for id := range s.peers {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	peers := make([]*nodev1.Peer, len(ids))
	for i, id := range ids {
		peers[i] = s.peers[id]
	}
	return &nodev1.NetworkMap{
		Version:      s.version,
		Self:         s.self,
		Peers:        peers,
		PacketFilter: s.filter,
		Dns:          s.dns,
		RelayMap:     s.relayMap,
	}
}

// Hash returns the state's hash (see Hash), in O(1) after a delta that changed no field but peers.
func (s *State) Hash() string {
	if s.hashOK {
		return s.hash
	}
	if !s.restOK {
		s.rest = restHash(s.self, s.filter, s.dns, s.relayMap)
		s.restOK = true
	}
	s.hash, s.hashOK = combine(s.rest, s.peerSum, len(s.peers)), true
	return s.hash
}

// Hash returns the hash of m's content, the version excluded (it is acknowledged beside it): the hex
// SHA-256 of a domain tag, the SHA-256 of the deterministic protobuf encoding of m without version and
// peers, the sum of the peers' hashes (each the SHA-256 of the peer's deterministic encoding, read as
// four little-endian 64-bit lanes added mod 2^64) and the number of peers. Peers count once per node id
// (the last one wins, as in State), in any order. It is what State.Hash returns after ApplySnapshot(m),
// computed from scratch.
func Hash(m *nodev1.NetworkMap) string {
	byID := make(map[string]*nodev1.Peer, len(m.GetPeers()))
	for _, p := range m.GetPeers() {
		byID[p.GetNodeId()] = p
	}
	var sum peerSum
	for _, p := range byID {
		sum.add(p, plus)
	}
	return combine(restHash(m.GetSelf(), m.GetPacketFilter(), m.GetDns(), m.GetRelayMap()), sum, len(byID))
}

var marshal = proto.MarshalOptions{Deterministic: true}

func digest(m proto.Message) [32]byte {
	b, err := marshal.Marshal(m)
	if err != nil {
		// Marshalling a well-formed generated message cannot fail; keep the hash distinct anyway.
		return sha256.Sum256([]byte("marshal-error:" + err.Error()))
	}
	return sha256.Sum256(b)
}

func peerHash(p *nodev1.Peer) [32]byte { return digest(p) }

func restHash(self *nodev1.NodeSelf, filter *nodev1.PacketFilter, dns *nodev1.DnsConfig, rm *nodev1.RelayMap) [32]byte {
	return digest(&nodev1.NetworkMap{Self: self, PacketFilter: filter, Dns: dns, RelayMap: rm})
}

const hashTag = "cloudvlan.netmapstate.v2\x00"

func combine(rest [32]byte, sum peerSum, n int) string {
	var buf [len(hashTag) + 32 + 32 + 8]byte
	b := append(buf[:0], hashTag...)
	b = append(b, rest[:]...)
	for _, v := range sum {
		b = binary.LittleEndian.AppendUint64(b, v)
	}
	b = binary.LittleEndian.AppendUint64(b, uint64(n))
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// LegacyHash is the hash agents before the incremental one acknowledged with: the hex SHA-256 of m's
// deterministic encoding, peers sorted by node id, version cleared. O(peers); the controller uses it
// only for an acknowledgement that does not match Hash, so that older agents stay in sync during an
// upgrade.
func LegacyHash(m *nodev1.NetworkMap) string {
	c := proto.Clone(m).(*nodev1.NetworkMap)
	c.Version = 0
	sort.Slice(c.Peers, func(i, j int) bool { return c.Peers[i].GetNodeId() < c.Peers[j].GetNodeId() })
	b, err := marshal.Marshal(c)
	if err != nil {
		return "marshal-error:" + err.Error()
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
