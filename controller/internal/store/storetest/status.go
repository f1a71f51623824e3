package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// feedSince returns the change events after id.
func feedSince(t *testing.T, s store.Store, id int64) []domain.ChangeEvent {
	t.Helper()
	evs, err := s.ChangesSince(ctx(t), id, 1000)
	if err != nil {
		t.Fatal(err)
	}
	return evs
}

func latest(t *testing.T, s store.Store) int64 {
	t.Helper()
	id, err := s.LatestChangeID(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// testLatestChangeID: the head of the feed is the id of its newest event, 0 when empty, and stays
// put after pruning (ids are never reused).
func testLatestChangeID(t *testing.T, h Harness) {
	s := h.New(t)
	c := ctx(t)
	if got := latest(t, s); got != 0 {
		t.Fatalf("empty feed: latest = %d, want 0", got)
	}
	steps := []struct {
		name string
		fn   func(f fixture) func(store.Tx) error
		// grows says whether the step appends change events.
		grows bool
	}{
		{"create node", func(f fixture) func(store.Tx) error {
			return func(tx store.Tx) error { return tx.CreateNode(c, f.node("a")) }
		}, true},
		{"create user", func(f fixture) func(store.Tx) error {
			return func(tx store.Tx) error { return tx.CreateUser(c, &domain.User{Name: "u", Email: "u@x"}) }
		}, true},
		{"audit entry (no event)", func(f fixture) func(store.Tx) error {
			return func(tx store.Tx) error {
				return tx.AppendAudit(c, &domain.AuditEntry{TenantID: f.tenant.ID, Action: "test.noop", ResourceType: domain.ResourceTenant, ActorType: domain.ActorSystem})
			}
		}, false},
		{"create two nodes", func(f fixture) func(store.Tx) error {
			return func(tx store.Tx) error { return tx.CreateNodes(c, []*domain.Node{f.node("b"), f.node("c")}) }
		}, true},
	}
	f := newTenant(t, s, "head", "")
	prev := latest(t, s)
	if evs := feedSince(t, s, 0); len(evs) == 0 || evs[len(evs)-1].ID != prev {
		t.Fatalf("latest %d is not the last event of %+v", prev, evs)
	}
	for _, st := range steps {
		must(t, s, f.scope, st.fn(f))
		got := latest(t, s)
		evs := feedSince(t, s, prev)
		switch {
		case st.grows && (len(evs) == 0 || got != evs[len(evs)-1].ID):
			t.Fatalf("%s: latest %d, events after %d: %+v", st.name, got, prev, evs)
		case !st.grows && (got != prev || len(evs) != 0):
			t.Fatalf("%s: latest moved %d -> %d (%d events)", st.name, prev, got, len(evs))
		}
		prev = got
	}
	if _, err := s.PruneChanges(c, time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got := latest(t, s); got != 0 {
		// An empty feed after pruning reads 0; new events still get larger ids.
		t.Fatalf("after pruning everything: latest = %d", got)
	}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, f.node("d")) })
	if got := latest(t, s); got <= prev {
		t.Fatalf("after pruning, a new event has id %d <= %d", got, prev)
	}
}

// testNodeStatusWrites: status writes keep the node's network-map event out of the feed (with
// notify, a node_status event instead) while readers see the new status; touches are batched and
// only move last-seen forward.
func testNodeStatusWrites(t *testing.T, h Harness) {
	s := h.New(t)
	c := ctx(t)
	f := newTenant(t, s, "status", "")
	n := f.node("n")
	other := f.node("other")
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNodes(c, []*domain.Node{n, other}) })
	seen := time.Now().UTC().Truncate(time.Microsecond)
	tests := []struct {
		name   string
		change func(*domain.Node)
		notify bool
		want   func(*domain.Node) error
	}{
		{"online", func(n *domain.Node) { n.Status, n.LastSeenTime = domain.NodeOnline, seen }, false, func(g *domain.Node) error {
			if g.Status != domain.NodeOnline || !g.LastSeenTime.Equal(seen) {
				return fmt.Errorf("status %s, last seen %v", g.Status, g.LastSeenTime)
			}
			return nil
		}},
		{"sync state, notified", func(n *domain.Node) {
			n.Sync = domain.NodeSync{State: domain.SyncInSync, DesiredVersion: 7, AppliedVersion: 7, AppliedHash: "h"}
		}, true, func(g *domain.Node) error {
			if g.Sync.State != domain.SyncInSync || g.Sync.AppliedVersion != 7 || g.Sync.AppliedHash != "h" {
				return fmt.Errorf("sync %+v", g.Sync)
			}
			return nil
		}},
		{"conflict", func(n *domain.Node) {
			n.Conflict = &domain.NodeConflict{DetectTime: seen, Addresses: []string{"192.0.2.1:1", "192.0.2.2:2"}, Active: true}
		}, true, func(g *domain.Node) error {
			if g.Conflict == nil || !g.Conflict.Active || len(g.Conflict.Addresses) != 2 || !g.Conflict.DetectTime.Equal(seen) {
				return fmt.Errorf("conflict %+v", g.Conflict)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		head := latest(t, s)
		var before int64
		must(t, s, f.scope, func(tx store.Tx) error {
			cur, err := tx.GetNode(c, n.ID)
			if err != nil {
				return err
			}
			before = cur.Version
			tt.change(cur)
			return tx.UpdateNodeStatus(c, cur, tt.notify)
		})
		evs := feedSince(t, s, head)
		switch {
		case !tt.notify && len(evs) != 0:
			t.Fatalf("%s: quiet status write made events %+v", tt.name, evs)
		case tt.notify && (len(evs) != 1 || evs[0].ResourceType != domain.ResourceNodeStatus || evs[0].ResourceID != n.ID || evs[0].TenantID != f.tenant.ID):
			t.Fatalf("%s: events %+v, want one node_status event", tt.name, evs)
		}
		must(t, s, f.scope, func(tx store.Tx) error {
			g, err := tx.GetNode(c, n.ID)
			if err != nil {
				return err
			}
			if g.Version != before+1 {
				return fmt.Errorf("%s: version %d, want %d (status writes keep optimistic concurrency)", tt.name, g.Version, before+1)
			}
			if err := tt.want(g); err != nil {
				return fmt.Errorf("%s: %w", tt.name, err)
			}
			// A stale copy conflicts as with UpdateNode.
			g.Version = before
			if err := tx.UpdateNodeStatus(c, g, false); err == nil {
				return fmt.Errorf("%s: stale status write succeeded", tt.name)
			}
			return nil
		})
	}
	// A node's status is visible through the filters.
	must(t, s, f.scope, func(tx store.Tx) error {
		p, err := tx.ListNodes(c, store.NodeFilter{SyncState: domain.SyncInSync}, store.ListOptions{})
		if err == nil && (len(p.Items) != 1 || p.Items[0].ID != n.ID) {
			err = fmt.Errorf("sync-state filter: %v", names(p))
		}
		return err
	})

	// Touches: no event, no version, forward only, unknown ids ignored.
	head := latest(t, s)
	later := seen.Add(time.Minute)
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		return tx.TouchNodes(c, []string{n.ID, other.ID, "no-such-node"}, later)
	})
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.TouchNodes(c, []string{n.ID}, seen) })
	if evs := feedSince(t, s, head); len(evs) != 0 {
		t.Fatalf("touches made events %+v", evs)
	}
	must(t, s, f.scope, func(tx store.Tx) error {
		for _, id := range []string{n.ID, other.ID} {
			g, err := tx.GetNode(c, id)
			if err != nil {
				return err
			}
			if !g.LastSeenTime.Equal(later) {
				return fmt.Errorf("node %s last seen %v, want %v", g.Name, g.LastSeenTime, later)
			}
			if g.Name == "other" && g.Version != 1 {
				return fmt.Errorf("touch changed the version to %d", g.Version)
			}
		}
		p, err := tx.ListNodes(c, store.NodeFilter{LastSeenBefore: later}, store.ListOptions{})
		if err == nil && len(p.Items) != 0 {
			err = fmt.Errorf("last-seen filter after touch: %v", names(p))
		}
		return err
	})
	// Another tenant's scope touches nothing of this tenant.
	g := newTenant(t, s, "other-tenant", "")
	must(t, s, g.scope, func(tx store.Tx) error { return tx.TouchNodes(c, []string{n.ID}, later.Add(time.Hour)) })
	must(t, s, f.scope, func(tx store.Tx) error {
		got, err := tx.GetNode(c, n.ID)
		if err == nil && !got.LastSeenTime.Equal(later) {
			err = fmt.Errorf("another tenant touched the node: %v", got.LastSeenTime)
		}
		return err
	})
	// Read-only transactions refuse.
	if err := s.ReadTx(c, store.AllTenants(), func(tx store.Tx) error { return tx.TouchNodes(c, []string{n.ID}, later) }); err == nil {
		t.Fatal("TouchNodes in a read-only transaction succeeded")
	}
}

// testVRouterStatusWrites: a vrouter status write keeps the version and update time (etags stay
// valid), changes only the status fields, records a vrouter_status event only with notify, and
// still refuses a status computed from an older version, another tenant's scope and read-only
// transactions.
func testVRouterStatusWrites(t *testing.T, h Harness) {
	s := h.New(t)
	c := ctx(t)
	f := newTenant(t, s, "vrstatus", "")
	v := &domain.VRouter{Name: "gw", CvlanID: f.cvlan.ID, Status: domain.VRouterPending, Connections: []domain.VRouterConnection{
		{Name: "a", RemoteAddress: "192.0.2.1"}, {Name: "b", RemoteAddress: "192.0.2.2"},
	}}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateVRouter(c, v) })
	get := func() *domain.VRouter {
		t.Helper()
		var g *domain.VRouter
		must(t, s, f.scope, func(tx store.Tx) (err error) { g, err = tx.GetVRouter(c, v.ID); return err })
		return g
	}
	created := get()
	seen := time.Now().UTC().Truncate(time.Microsecond)
	tests := []struct {
		name   string
		change func(*domain.VRouter)
		notify bool
		want   func(*domain.VRouter) error
	}{
		{"report, quiet", func(r *domain.VRouter) {
			r.Status, r.LastSeenTime = domain.VRouterDegraded, seen
			r.Connections[0].Status, r.Connections[0].LastChangeTime = "up", seen
			r.Stats = domain.VRouterStats{ConnectionsTotal: 2, ConnectionsUp: 1, UpdateTime: seen}
			// Configuration changes in a status write are ignored.
			r.Name, r.Connections[1].RemoteAddress = "renamed", "198.51.100.9"
		}, false, func(g *domain.VRouter) error {
			switch {
			case g.Status != domain.VRouterDegraded || !g.LastSeenTime.Equal(seen) || g.Stats.ConnectionsUp != 1:
				return fmt.Errorf("status %s, last seen %v, stats %+v", g.Status, g.LastSeenTime, g.Stats)
			case g.Connections[0].Status != "up" || !g.Connections[0].LastChangeTime.Equal(seen) || g.Connections[1].Status != "":
				return fmt.Errorf("connections %+v", g.Connections)
			case g.Name != "gw" || g.Connections[1].RemoteAddress != "192.0.2.2":
				return fmt.Errorf("status write changed the configuration: %s %+v", g.Name, g.Connections)
			}
			return nil
		}},
		{"all up, notified", func(r *domain.VRouter) {
			r.Status, r.Connections[1].Status, r.Connections[1].Error = domain.VRouterOnline, "up", "none"
		}, true, func(g *domain.VRouter) error {
			if g.Status != domain.VRouterOnline || g.Connections[1].Status != "up" || g.Connections[1].Error != "none" {
				return fmt.Errorf("status %s, connections %+v", g.Status, g.Connections)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		head := latest(t, s)
		must(t, s, f.scope, func(tx store.Tx) error {
			cur, err := tx.GetVRouter(c, v.ID)
			if err != nil {
				return err
			}
			tt.change(cur)
			return tx.UpdateVRouterStatus(c, cur, tt.notify)
		})
		evs := feedSince(t, s, head)
		switch {
		case !tt.notify && len(evs) != 0:
			t.Fatalf("%s: quiet status write made events %+v", tt.name, evs)
		case tt.notify && (len(evs) != 1 || evs[0].ResourceType != domain.ResourceVRouterStatus || evs[0].ResourceID != v.ID ||
			evs[0].TenantID != f.tenant.ID || evs[0].Version != created.Version || evs[0].Op != domain.OpUpdate):
			t.Fatalf("%s: events %+v, want one vrouter_status update at version %d", tt.name, evs, created.Version)
		}
		g := get()
		if g.Version != created.Version || !g.UpdateTime.Equal(created.UpdateTime) {
			t.Fatalf("%s: version %d, update time %v; want %d, %v (kept)", tt.name, g.Version, g.UpdateTime, created.Version, created.UpdateTime)
		}
		if err := tt.want(g); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
	}
	// The status filter sees the status.
	must(t, s, f.scope, func(tx store.Tx) error {
		p, err := tx.ListVRouters(c, store.VRouterFilter{Status: domain.VRouterOnline}, store.ListOptions{})
		if err == nil && (len(p.Items) != 1 || p.Items[0].ID != v.ID) {
			err = fmt.Errorf("status filter: %d items", len(p.Items))
		}
		return err
	})
	// The etag an API client read before the reports is still good for a configuration update.
	created.Description = "edited"
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateVRouter(c, created) }) // created.Version is now 2
	// A status computed from the older configuration conflicts; an unconditional one does not.
	stale := get()
	stale.Version--
	stale.Status = domain.VRouterOffline
	if err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.UpdateVRouterStatus(c, stale, false) }); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("stale status write: %v, want conflict", err)
	}
	stale.Version = 0
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateVRouterStatus(c, stale, false) })
	if g := get(); g.Status != domain.VRouterOffline || g.Version != 2 || g.Description != "edited" {
		t.Fatalf("after unconditional status write: status %s, version %d, description %q", g.Status, g.Version, g.Description)
	}
	// Another tenant cannot, nor can a read-only transaction.
	o := newTenant(t, s, "vrstatus-other", "")
	if err := s.Tx(c, o.scope, func(tx store.Tx) error { return tx.UpdateVRouterStatus(c, stale, false) }); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("other tenant's status write: %v, want not found", err)
	}
	if err := s.ReadTx(c, store.AllTenants(), func(tx store.Tx) error { return tx.UpdateVRouterStatus(c, stale, false) }); err == nil {
		t.Fatal("UpdateVRouterStatus in a read-only transaction succeeded")
	}
}

// testRelayStatusWrites: a relay status write keeps the version and update time (etags stay
// valid), changes only status, last seen, stats and software version (never the addresses relay
// maps are built from), records a relay_status event only with notify, and refuses a status
// computed from an older version, a tenant's write of a shared relay, another tenant's relay and
// read-only transactions.
func testRelayStatusWrites(t *testing.T, h Harness) {
	s := h.New(t)
	c := ctx(t)
	f := newTenant(t, s, "rlstatus", "")
	region := &domain.Region{Name: "frankfurt", Code: "eu-central"}
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.CreateRegion(c, region) })
	own := &domain.Relay{RegionID: region.ID, Name: "relay-own", Addresses: []string{"192.0.2.1:443"}, STUNAddress: "192.0.2.1:3478"}
	shared := &domain.Relay{RegionID: region.ID, Name: "relay-shared", Addresses: []string{"192.0.2.2:443"}}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateRelay(c, own) })
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.CreateRelay(c, shared) })
	get := func(id string) *domain.Relay {
		t.Helper()
		var g *domain.Relay
		must(t, s, store.AllTenants(), func(tx store.Tx) (err error) { g, err = tx.GetRelay(c, id); return err })
		return g
	}
	seen := time.Now().UTC().Truncate(time.Microsecond)
	tests := []struct {
		name   string
		relay  *domain.Relay
		scope  store.Scope
		change func(*domain.Relay)
		notify bool
		want   func(*domain.Relay) error
	}{
		{"own relay online, notified", own, f.scope, func(r *domain.Relay) {
			r.Status, r.LastSeenTime, r.SoftwareVersion = domain.RelayOnline, seen, "1.2.3"
			r.Stats = domain.RelayStats{ConnectedClients: 3, MeshPeers: 1, BytesForwarded: 1000, Drops: map[string]uint64{"queue_full": 2}, UpdateTime: seen}
			// Configuration changes in a status write are ignored.
			r.Name, r.Addresses, r.STUNAddress = "renamed", []string{"198.51.100.9:443"}, "198.51.100.9:3478"
		}, true, func(g *domain.Relay) error {
			switch {
			case g.Status != domain.RelayOnline || !g.LastSeenTime.Equal(seen) || g.SoftwareVersion != "1.2.3":
				return fmt.Errorf("status %s, last seen %v, version %q", g.Status, g.LastSeenTime, g.SoftwareVersion)
			case g.Stats.ConnectedClients != 3 || g.Stats.MeshPeers != 1 || g.Stats.BytesForwarded != 1000 || g.Stats.Drops["queue_full"] != 2 || !g.Stats.UpdateTime.Equal(seen):
				return fmt.Errorf("stats %+v", g.Stats)
			case g.Name != "relay-own" || len(g.Addresses) != 1 || g.Addresses[0] != "192.0.2.1:443" || g.STUNAddress != "192.0.2.1:3478":
				return fmt.Errorf("status write changed the configuration: %s %v %s", g.Name, g.Addresses, g.STUNAddress)
			}
			return nil
		}},
		{"own relay report, quiet", own, store.AllTenants(), func(r *domain.Relay) {
			r.Stats.BytesForwarded, r.LastSeenTime = 5000, seen.Add(time.Second)
		}, false, func(g *domain.Relay) error {
			if g.Stats.BytesForwarded != 5000 || !g.LastSeenTime.Equal(seen.Add(time.Second)) || g.Stats.ConnectedClients != 3 {
				return fmt.Errorf("stats %+v, last seen %v", g.Stats, g.LastSeenTime)
			}
			return nil
		}},
		{"shared relay offline, notified", shared, store.AllTenants(), func(r *domain.Relay) {
			r.Status = domain.RelayOffline
		}, true, func(g *domain.Relay) error {
			if g.Status != domain.RelayOffline || g.Addresses[0] != "192.0.2.2:443" {
				return fmt.Errorf("status %s, addresses %v", g.Status, g.Addresses)
			}
			return nil
		}},
	}
	for _, tt := range tests {
		created := get(tt.relay.ID)
		head := latest(t, s)
		must(t, s, tt.scope, func(tx store.Tx) error {
			cur, err := tx.GetRelay(c, tt.relay.ID)
			if err != nil {
				return err
			}
			tt.change(cur)
			return tx.UpdateRelayStatus(c, cur, tt.notify)
		})
		evs := feedSince(t, s, head)
		switch {
		case !tt.notify && len(evs) != 0:
			t.Fatalf("%s: quiet status write made events %+v", tt.name, evs)
		case tt.notify && (len(evs) != 1 || evs[0].ResourceType != domain.ResourceRelayStatus || evs[0].ResourceID != tt.relay.ID ||
			evs[0].TenantID != tt.relay.TenantID || evs[0].Version != created.Version || evs[0].Op != domain.OpUpdate):
			t.Fatalf("%s: events %+v, want one relay_status update at version %d of tenant %q", tt.name, evs, created.Version, tt.relay.TenantID)
		}
		g := get(tt.relay.ID)
		if g.Version != created.Version || !g.UpdateTime.Equal(created.UpdateTime) {
			t.Fatalf("%s: version %d, update time %v; want %d, %v (kept)", tt.name, g.Version, g.UpdateTime, created.Version, created.UpdateTime)
		}
		if err := tt.want(g); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
	}
	// The status filter sees the status.
	must(t, s, f.scope, func(tx store.Tx) error {
		p, err := tx.ListRelays(c, store.RelayFilter{Status: domain.RelayOnline}, store.ListOptions{})
		if err == nil && (len(p.Items) != 1 || p.Items[0].ID != own.ID) {
			err = fmt.Errorf("status filter: %d items", len(p.Items))
		}
		return err
	})
	// The etag an API client read before the reports is still good for a configuration update.
	before := get(own.ID)
	before.Description = "edited"
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateRelay(c, before) })
	// A status computed from the older configuration conflicts; an unconditional one does not.
	stale := get(own.ID)
	stale.Version--
	stale.Status = domain.RelayOffline
	if err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.UpdateRelayStatus(c, stale, false) }); !errors.Is(err, domain.ErrConflict) {
		t.Fatalf("stale status write: %v, want conflict", err)
	}
	stale.Version = 0
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateRelayStatus(c, stale, false) })
	if g := get(own.ID); g.Status != domain.RelayOffline || g.Version != before.Version || g.Description != "edited" {
		t.Fatalf("after unconditional status write: status %s, version %d (want %d), description %q", g.Status, g.Version, before.Version, g.Description)
	}
	// A tenant reads the shared relay but may not write its status; another tenant cannot see
	// the tenant's relay; a read-only transaction cannot write.
	sharedStatus := get(shared.ID)
	sharedStatus.Status = domain.RelayOnline
	// (PostgreSQL's row-level security hides the shared row from the locked read: not found.)
	if err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.UpdateRelayStatus(c, sharedStatus, false) }); !errors.Is(err, domain.ErrPermissionDenied) && !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("tenant's status write of a shared relay: %v, want permission denied or not found", err)
	}
	o := newTenant(t, s, "rlstatus-other", "")
	if err := s.Tx(c, o.scope, func(tx store.Tx) error { return tx.UpdateRelayStatus(c, stale, false) }); !errors.Is(err, domain.ErrNotFound) {
		t.Fatalf("other tenant's status write: %v, want not found", err)
	}
	if err := s.ReadTx(c, store.AllTenants(), func(tx store.Tx) error { return tx.UpdateRelayStatus(c, stale, false) }); err == nil {
		t.Fatal("UpdateRelayStatus in a read-only transaction succeeded")
	}
	if g := get(shared.ID); g.Status != domain.RelayOffline {
		t.Fatalf("shared relay status %s after refused writes", g.Status)
	}
}
