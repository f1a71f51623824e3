package nodeplane

import (
	"context"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// TestStatusWritesStayOutOfTheMapFeed: what agents report is stored and shown, but only changes
// the network maps depend on reach the map loaders as node change events; status-only changes are
// node_status events (WatchEvents), repeats and heartbeats are no events at all.
func TestStatusWritesStayOutOfTheMapFeed(t *testing.T) {
	e := newEnv(t)
	a := e.enroll(t, e.token(t, nil), "alpha")
	ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer cancel()
	var st netmapstate.State
	if !applyAck(t, a, &st, next(t, ch, 5*time.Second).msg) {
		t.Fatal("snapshot acknowledgement not in sync")
	}
	id := a.id.GetNodeId()
	eventually(t, 5*time.Second, "online and in sync", func() bool {
		n := e.getNode(t, id)
		return n.Status == domain.NodeOnline && n.Sync.State == domain.SyncInSync
	})
	ctx := context.Background()
	report := func(version string, endpoints ...string) {
		t.Helper()
		r := &nodev1.ReportStatusRequest{AgentVersion: version, Os: "linux/amd64"}
		for _, ep := range endpoints {
			r.Endpoints = append(r.Endpoints, &nodev1.Endpoint{Address: ep, Type: nodev1.EndpointType_ENDPOINT_TYPE_STUN})
		}
		if _, err := a.ctl.ReportStatus(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name string
		// do runs the agent's calls; the last one must make the node show version.
		do      func()
		version string
		// want are the resource types of the events expected, in order.
		want []string
	}{
		{"status only", func() { report("1.0.0") }, "1.0.0", []string{domain.ResourceNodeStatus}},
		{"repeats and acks of the held version", func() {
			for range 3 {
				report("1.0.0")
				if _, err := a.ctl.AckNetworkMap(ctx, &nodev1.AckNetworkMapRequest{Version: st.Version(), StateHash: st.Hash()}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(150 * time.Millisecond) // beyond a flush
			}
			report("1.0.1")
		}, "1.0.1", []string{domain.ResourceNodeStatus}},
		{"endpoints feed peers' maps", func() { report("1.0.2", "198.51.100.7:41641") }, "1.0.2", []string{domain.ResourceNode}},
		{"same endpoints observed again", func() {
			report("1.0.2", "198.51.100.7:41641")
			time.Sleep(150 * time.Millisecond)
			report("1.0.3", "198.51.100.7:41641")
		}, "1.0.3", []string{domain.ResourceNodeStatus}},
	}
	for _, tt := range tests {
		head, err := e.st.LatestChangeID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tt.do()
		eventually(t, 5*time.Second, tt.name+": stored", func() bool { return e.getNode(t, id).AgentVersion == tt.version })
		n := e.getNode(t, id)
		if n.Status != domain.NodeOnline || n.Sync.State != domain.SyncInSync || n.LastSeenTime.IsZero() {
			t.Fatalf("%s: node shows %s, sync %s, last seen %v", tt.name, n.Status, n.Sync.State, n.LastSeenTime)
		}
		evs, err := e.st.ChangesSince(ctx, head, 100)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, ev := range evs {
			if ev.ResourceID == id {
				got = append(got, ev.ResourceType)
			}
		}
		if len(got) != len(tt.want) {
			t.Fatalf("%s: events %v, want %v", tt.name, got, tt.want)
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Fatalf("%s: events %v, want %v", tt.name, got, tt.want)
			}
		}
	}
}

// TestStreamingNodesAreTouchedWithoutEvents: the last-seen refresh of streaming nodes is a
// batched touch: the API's last-seen time moves, the feed does not.
func TestStreamingNodesAreTouchedWithoutEvents(t *testing.T) {
	e := newEnv(t, func(d *Deps) { d.ReportInterval = 300 * time.Millisecond })
	a := e.enroll(t, e.token(t, nil), "alpha")
	ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer cancel()
	var st netmapstate.State
	applyAck(t, a, &st, next(t, ch, 5*time.Second).msg)
	id := a.id.GetNodeId()
	eventually(t, 5*time.Second, "online and in sync", func() bool {
		n := e.getNode(t, id)
		return n.Status == domain.NodeOnline && n.Sync.State == domain.SyncInSync
	})
	ctx := context.Background()
	head, err := e.st.LatestChangeID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := e.getNode(t, id)
	// OfflineAfter is 3 x 300 ms: the stream's node is touched every 300 ms.
	eventually(t, 10*time.Second, "last seen refreshed", func() bool {
		return e.getNode(t, id).LastSeenTime.After(first.LastSeenTime.Add(500 * time.Millisecond))
	})
	n := e.getNode(t, id)
	if n.Version != first.Version || n.Status != domain.NodeOnline {
		t.Fatalf("touch changed version %d -> %d, status %s", first.Version, n.Version, n.Status)
	}
	if evs, err := e.st.ChangesSince(ctx, head, 100); err != nil || len(evs) != 0 {
		t.Fatalf("touches made events %+v, %v", evs, err)
	}
}

// TestAckHashForms: the controller's incremental hash judges acknowledgements; the pre-incremental
// hash of older agents is accepted too (an upgrade does not resync every agent forever), anything
// else is a failed sync.
func TestAckHashForms(t *testing.T) {
	e := newEnv(t)
	a := e.enroll(t, e.token(t, nil), "alpha")
	e.enroll(t, e.token(t, nil), "bravo")
	ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer cancel()
	var st netmapstate.State
	m := next(t, ch, 5*time.Second).msg
	st.ApplySnapshot(m.GetSnapshot())
	if len(st.Map().GetPeers()) == 0 {
		t.Fatal("snapshot without peers")
	}
	tests := []struct {
		name   string
		hash   string
		inSync bool
	}{
		{"incremental", st.Hash(), true},
		{"legacy", netmapstate.LegacyHash(st.Map()), true},
		{"other", netmapstate.LegacyHash(&nodev1.NetworkMap{}), false},
	}
	for _, tt := range tests {
		resp, err := a.ctl.AckNetworkMap(context.Background(), &nodev1.AckNetworkMapRequest{Version: st.Version(), StateHash: tt.hash})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetInSync() != tt.inSync {
			t.Errorf("%s: in sync %v, want %v", tt.name, resp.GetInSync(), tt.inSync)
		}
	}
}

// TestRepeatedReportsKeepNodeOnline: a node that only reports (no stream) stays online on repeated
// identical reports, which the writer turns into touches, and one that comes back after being
// marked offline is online again with the same report.
func TestRepeatedReportsKeepNodeOnline(t *testing.T) {
	e := newEnv(t, func(d *Deps) { d.ReportInterval = 300 * time.Millisecond }) // offline after 900 ms
	a := e.enroll(t, e.token(t, nil), "alpha")
	id := a.id.GetNodeId()
	ctx := context.Background()
	report := func() {
		t.Helper()
		_, err := a.ctl.ReportStatus(ctx, &nodev1.ReportStatusRequest{AgentVersion: "1.0.0",
			Endpoints: []*nodev1.Endpoint{{Address: "198.51.100.7:41641", Type: nodev1.EndpointType_ENDPOINT_TYPE_STUN}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	report()
	eventually(t, 5*time.Second, "online", func() bool { return e.getNode(t, id).Status == domain.NodeOnline })
	// Reports every 200 ms for 3 x the offline time: never offline.
	for end := time.Now().Add(2700 * time.Millisecond); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		report()
		if n := e.getNode(t, id); n.Status != domain.NodeOnline {
			t.Fatalf("reporting node went %s (last seen %v)", n.Status, n.LastSeenTime)
		}
	}
	eventually(t, 10*time.Second, "offline after silence", func() bool { return e.getNode(t, id).Status == domain.NodeOffline })
	report()
	eventually(t, 5*time.Second, "online again", func() bool { return e.getNode(t, id).Status == domain.NodeOnline })
}
