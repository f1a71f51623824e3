package netmapstate

import (
	"errors"
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
