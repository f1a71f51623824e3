package netmapstate

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func peer(id string, addrs ...string) *nodev1.Peer {
	return &nodev1.Peer{NodeId: id, Name: id, Addresses: addrs, WireguardPublicKey: make([]byte, 32)}
}

func TestDeltasReachTheSnapshotHash(t *testing.T) {
	var s State
	s.ApplySnapshot(&nodev1.NetworkMap{
		Version: 3,
		Self:    &nodev1.NodeSelf{NodeId: "self", Name: "self"},
		Peers:   []*nodev1.Peer{peer("b", "100.64.0.2/32"), peer("a", "100.64.0.1/32")},
	})
	steps := []struct {
		name  string
		delta *nodev1.NetworkMapDelta
	}{
		{"add c", &nodev1.NetworkMapDelta{BaseVersion: 3, Version: 4, PeersUpserted: []*nodev1.Peer{peer("c", "100.64.0.3/32")}}},
		{"change a, remove b", &nodev1.NetworkMapDelta{BaseVersion: 4, Version: 6, PeersUpserted: []*nodev1.Peer{peer("a", "100.64.0.9/32")}, PeersRemoved: []string{"b"}}},
		{"filter", &nodev1.NetworkMapDelta{BaseVersion: 6, Version: 7, PacketFilter: &nodev1.PacketFilter{Rules: []*nodev1.FilterRule{{Action: nodev1.FilterAction_FILTER_ACTION_ALLOW}}}}},
	}
	for _, st := range steps {
		if err := s.ApplyDelta(st.delta); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
	}
	want := &nodev1.NetworkMap{
		Version:      7,
		Self:         &nodev1.NodeSelf{NodeId: "self", Name: "self"},
		Peers:        []*nodev1.Peer{peer("c", "100.64.0.3/32"), peer("a", "100.64.0.9/32")},
		PacketFilter: &nodev1.PacketFilter{Rules: []*nodev1.FilterRule{{Action: nodev1.FilterAction_FILTER_ACTION_ALLOW}}},
	}
	if got, w := s.Hash(), Hash(want); got != w {
		t.Fatalf("hash after deltas %s, snapshot hash %s", got, w)
	}
	if s.Version() != 7 {
		t.Fatalf("version %d, want 7", s.Version())
	}
	if _, ok := s.Peer("b"); ok {
		t.Fatal("removed peer b still present")
	}
	// An empty filter is a change too: presence, not emptiness, marks replacement.
	if err := s.ApplyDelta(&nodev1.NetworkMapDelta{BaseVersion: 7, Version: 8, PacketFilter: &nodev1.PacketFilter{}}); err != nil {
		t.Fatal(err)
	}
	if s.Hash() == Hash(want) {
		t.Fatal("clearing the filter did not change the hash")
	}
}

func TestDeltaOnWrongBaseIsRefused(t *testing.T) {
	var s State
	s.ApplySnapshot(&nodev1.NetworkMap{Version: 5, Peers: []*nodev1.Peer{peer("a")}})
	before := s.Hash()
	tests := []struct {
		name  string
		delta *nodev1.NetworkMapDelta
	}{
		{"older base", &nodev1.NetworkMapDelta{BaseVersion: 4, Version: 6}},
		{"newer base", &nodev1.NetworkMapDelta{BaseVersion: 6, Version: 7}},
		{"non-increasing", &nodev1.NetworkMapDelta{BaseVersion: 5, Version: 5}},
	}
	for _, tt := range tests {
		err := s.ApplyDelta(tt.delta)
		if err == nil {
			t.Errorf("%s: applied", tt.name)
		}
		if tt.name != "non-increasing" && !errors.Is(err, ErrVersionMismatch) {
			t.Errorf("%s: err %v, want ErrVersionMismatch", tt.name, err)
		}
		if s.Hash() != before || s.Version() != 5 {
			t.Errorf("%s: state changed by a refused delta", tt.name)
		}
	}
}

// TestIncrementalHashEqualsFullRecomputation is a property test: over random delta sequences the
// running hash equals Hash computed from scratch over an independently kept model of the map (peers
// in random order), and two states hash equal exactly when their canonical encodings (LegacyHash)
// are equal.
func TestIncrementalHashEqualsFullRecomputation(t *testing.T) {
	for seed := range int64(40) {
		rng := rand.New(rand.NewPCG(uint64(seed), 7))
		var s State
		model := map[string]*nodev1.Peer{}
		var self *nodev1.NodeSelf
		var filter *nodev1.PacketFilter
		var dns *nodev1.DnsConfig
		var relays *nodev1.RelayMap
		randPeer := func() *nodev1.Peer {
			id := fmt.Sprintf("p%d", rng.IntN(12))
			p := peer(id, fmt.Sprintf("100.64.0.%d/32", rng.IntN(4)))
			if rng.IntN(2) == 0 {
				p.Endpoints = []string{fmt.Sprintf("198.51.100.%d:41641", rng.IntN(3))}
			}
			return p
		}
		snapshot := func(version uint64) *nodev1.NetworkMap {
			m := &nodev1.NetworkMap{Version: version, Self: self, PacketFilter: filter, Dns: dns, RelayMap: relays}
			for _, p := range model {
				m.Peers = append(m.Peers, p)
			}
			rng.Shuffle(len(m.Peers), func(i, j int) { m.Peers[i], m.Peers[j] = m.Peers[j], m.Peers[i] })
			return m
		}
		s.ApplySnapshot(snapshot(1))
		byLegacy, byHash := map[string]string{}, map[string]string{}
		for step := range 60 {
			d := &nodev1.NetworkMapDelta{BaseVersion: s.Version(), Version: s.Version() + 1 + uint64(rng.IntN(3))}
			for range rng.IntN(4) {
				p := randPeer()
				d.PeersUpserted = append(d.PeersUpserted, p)
			}
			for range rng.IntN(3) {
				d.PeersRemoved = append(d.PeersRemoved, fmt.Sprintf("p%d", rng.IntN(14)))
			}
			switch rng.IntN(8) {
			case 0:
				d.Self = &nodev1.NodeSelf{NodeId: "self", Name: fmt.Sprintf("self-%d", rng.IntN(2))}
			case 1:
				d.PacketFilter = &nodev1.PacketFilter{}
				if rng.IntN(2) == 0 {
					d.PacketFilter.Rules = []*nodev1.FilterRule{{Action: nodev1.FilterAction_FILTER_ACTION_ALLOW}}
				}
			case 2:
				d.Dns = &nodev1.DnsConfig{Domain: fmt.Sprintf("d%d.test", rng.IntN(2))}
			case 3:
				d.RelayMap = &nodev1.RelayMap{}
			}
			// The model applies the delta its own way: removals, then upserts, then the rest.
			for _, id := range d.PeersRemoved {
				delete(model, id)
			}
			for _, p := range d.PeersUpserted {
				model[p.GetNodeId()] = p
			}
			if d.Self != nil {
				self = d.Self
			}
			if d.PacketFilter != nil {
				filter = d.PacketFilter
			}
			if d.Dns != nil {
				dns = d.Dns
			}
			if d.RelayMap != nil {
				relays = d.RelayMap
			}
			if err := s.ApplyDelta(d); err != nil {
				t.Fatalf("seed %d step %d: %v", seed, step, err)
			}
			full := snapshot(s.Version())
			got, want := s.Hash(), Hash(full)
			if got != want {
				t.Fatalf("seed %d step %d: incremental hash %s, full recomputation %s", seed, step, got, want)
			}
			if again := s.Hash(); again != got {
				t.Fatalf("seed %d step %d: cached hash changed", seed, step)
			}
			legacy := LegacyHash(full)
			if h, ok := byLegacy[legacy]; ok && h != got {
				t.Fatalf("seed %d step %d: equal states, different hashes", seed, step)
			}
			if l, ok := byHash[got]; ok && l != legacy {
				t.Fatalf("seed %d step %d: different states, equal hashes", seed, step)
			}
			byLegacy[legacy], byHash[got] = got, legacy
		}
		if len(byHash) < 10 {
			t.Fatalf("seed %d: only %d distinct states: the sequence explores too little", seed, len(byHash))
		}
	}
}

func TestHashIsOrderAndDuplicateInsensitive(t *testing.T) {
	a, b, b2 := peer("a", "100.64.0.1/32"), peer("b", "100.64.0.2/32"), peer("b", "100.64.0.9/32")
	tests := []struct {
		name  string
		x, y  []*nodev1.Peer
		equal bool
	}{
		{"order", []*nodev1.Peer{a, b}, []*nodev1.Peer{b, a}, true},
		{"last duplicate wins, as in State", []*nodev1.Peer{a, b2, b}, []*nodev1.Peer{a, b}, true},
		{"other content", []*nodev1.Peer{a, b}, []*nodev1.Peer{a, b2}, false},
		{"a peer fewer", []*nodev1.Peer{a, b}, []*nodev1.Peer{a}, false},
		{"none", nil, []*nodev1.Peer{a}, false},
	}
	for _, tt := range tests {
		hx, hy := Hash(&nodev1.NetworkMap{Version: 1, Peers: tt.x}), Hash(&nodev1.NetworkMap{Version: 2, Peers: tt.y})
		if (hx == hy) != tt.equal {
			t.Errorf("%s: equal = %v, want %v", tt.name, hx == hy, tt.equal)
		}
		var s State
		s.ApplySnapshot(&nodev1.NetworkMap{Peers: tt.x})
		if s.Hash() != hx {
			t.Errorf("%s: State.Hash after snapshot %s, Hash %s", tt.name, s.Hash(), hx)
		}
	}
}
