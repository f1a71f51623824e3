// Package netmapstate applies network-map snapshots and deltas (cloudvlan.node.v1) to a node's state and
// hashes that state in one canonical form. The agent acknowledges each applied version with this hash and
// the controller computes the same hash for the version it sent, so both sides agree on what "in sync"
// means. It is shared by cvlan-agent, cvlan-vrouter and the controller.
package netmapstate

import (
	"crypto/sha256"
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
}

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
		delete(s.peers, id)
	}
	for _, p := range d.GetPeersUpserted() {
		s.peers[p.GetNodeId()] = p
	}
	if d.Self != nil {
		s.self = d.GetSelf()
	}
	if d.PacketFilter != nil {
		s.filter = d.GetPacketFilter()
	}
	if d.Dns != nil {
		s.dns = d.GetDns()
	}
	if d.RelayMap != nil {
		s.relayMap = d.GetRelayMap()
	}
	s.version = d.GetVersion()
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

// Hash returns the hex SHA-256 of the canonical form of the state (see Hash).
func (s *State) Hash() string { return Hash(s.Map()) }

// Hash returns the hex SHA-256 of m's deterministic protobuf encoding, with peers sorted by node id and
// the version cleared (the hash describes content, the version is acknowledged beside it). Callers that
// build m themselves must sort peers the same way, as State.Map does.
func Hash(m *nodev1.NetworkMap) string {
	c := proto.Clone(m).(*nodev1.NetworkMap)
	c.Version = 0
	sort.Slice(c.Peers, func(i, j int) bool { return c.Peers[i].GetNodeId() < c.Peers[j].GetNodeId() })
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(c)
	if err != nil {
		// Marshalling a well-formed generated message cannot fail; keep the hash distinct anyway.
		return "marshal-error:" + err.Error()
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
