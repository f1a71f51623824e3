package controlclient

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/grpc"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// TestAckHashesFollowRandomDeltas: over a snapshot and a random delta sequence, every
// acknowledgement carries the hash the controller computes from scratch over the whole map it
// holds for that version (the agent keeps its hash incrementally).
func TestAckHashesFollowRandomDeltas(t *testing.T) {
	f, addr := startController(t, time.Hour)
	e, err := Enroll(t.Context(), EnrollOptions{Target: addr, Token: "cvj_0123456789abcdefghij", RootCAs: f.ca.Pool(), Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	h := &recHandler{maps: make(chan *nodev1.NetworkMap, 64), holes: make(chan *nodev1.HolePunch, 1)}
	c, err := New(Config{Target: addr, Enrollment: e, Handler: h, Store: &memStore{}, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	rng := rand.New(rand.NewPCG(1, 2))
	model := map[string]*nodev1.Peer{}
	self := &nodev1.NodeSelf{NodeId: "n1"}
	var filter *nodev1.PacketFilter
	full := func(v uint64) *nodev1.NetworkMap {
		m := &nodev1.NetworkMap{Version: v, Self: self, PacketFilter: filter}
		for _, p := range model {
			m.Peers = append(m.Peers, p)
		}
		return m
	}
	for i := range 5 {
		id := fmt.Sprintf("p%d", i)
		model[id] = &nodev1.Peer{NodeId: id, Name: id}
	}
	const steps = 40
	msgs := []*nodev1.WatchNetworkMapResponse{{Message: &nodev1.WatchNetworkMapResponse_Snapshot{Snapshot: full(1)}}}
	f.record(full(1))
	for v := uint64(2); v < 2+steps; v++ {
		d := &nodev1.NetworkMapDelta{BaseVersion: v - 1, Version: v}
		for range rng.IntN(3) {
			id := fmt.Sprintf("p%d", rng.IntN(9))
			p := &nodev1.Peer{NodeId: id, Name: id, Endpoints: []string{fmt.Sprintf("192.0.2.%d:1", rng.IntN(3))}}
			d.PeersUpserted = append(d.PeersUpserted, p)
		}
		for range rng.IntN(2) {
			d.PeersRemoved = append(d.PeersRemoved, fmt.Sprintf("p%d", rng.IntN(9)))
		}
		if rng.IntN(5) == 0 {
			d.PacketFilter = &nodev1.PacketFilter{Rules: []*nodev1.FilterRule{{Action: nodev1.FilterAction_FILTER_ACTION_ALLOW, Ports: []*nodev1.FilterPortRange{{First: uint32(rng.IntN(100))}}}}}
			filter = d.PacketFilter
		}
		for _, id := range d.PeersRemoved {
			delete(model, id)
		}
		for _, p := range d.PeersUpserted {
			model[p.GetNodeId()] = p
		}
		f.record(full(v))
		msgs = append(msgs, &nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Delta{Delta: d}})
	}
	f.streams <- func(_ *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error {
		for _, m := range msgs {
			if err := s.Send(m); err != nil {
				return err
			}
		}
		<-s.Context().Done()
		return s.Context().Err()
	}
	go func() {
		for range msgs {
			<-h.maps
		}
	}()
	for v := uint64(1); v < 2+steps; v++ {
		a := recv(t, f.acks, fmt.Sprintf("ack %d", v))
		f.mu.Lock()
		want := f.hashes[a.GetVersion()]
		f.mu.Unlock()
		if a.GetVersion() != v || a.GetError() != "" || a.GetStateHash() != want {
			t.Fatalf("ack %d: version %d hash %s error %q, want hash %s", v, a.GetVersion(), a.GetStateHash(), a.GetError(), want)
		}
	}
}
