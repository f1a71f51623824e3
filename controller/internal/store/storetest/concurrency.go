package storetest

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func consume(t *testing.T, s store.Store, hash string, now time.Time) (*domain.JoinToken, error) {
	var tok *domain.JoinToken
	err := s.Tx(t.Context(), store.AllTenants(), func(tx store.Tx) (err error) {
		tok, err = tx.ConsumeJoinToken(t.Context(), []byte(hash), now)
		return
	})
	return tok, err
}

func testJoinTokenChecks(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "tokens", "")
	c := t.Context()
	now := time.Now()
	revoked := &domain.JoinToken{Hash: []byte("revoked"), ExpireTime: now.Add(time.Hour)}
	must(t, s, f.scope, func(tx store.Tx) error {
		for _, j := range []*domain.JoinToken{
			{Hash: []byte("single"), ExpireTime: now.Add(time.Hour), Tags: []string{"web"}, CvlanID: f.cvlan.ID},
			{Hash: []byte("expired"), ExpireTime: now.Add(-time.Second)},
			{Hash: []byte("reusable"), Reusable: true, MaxUses: 2, ExpireTime: now.Add(time.Hour)},
			{Hash: []byte("unlimited"), Reusable: true, ExpireTime: now.Add(time.Hour)},
			revoked,
		} {
			if err := tx.CreateJoinToken(c, j); err != nil {
				return err
			}
		}
		revoked.Revoked = true
		return tx.UpdateJoinToken(c, revoked)
	})
	tok, err := consume(t, s, "single", now)
	if err != nil || tok.UseCount != 1 || tok.TenantID != f.tenant.ID || tok.Tags[0] != "web" {
		t.Fatalf("consume single: %+v %v", tok, err)
	}
	_, err = consume(t, s, "single", now)
	wantErr(t, err, domain.ErrTokenUsed)
	_, err = consume(t, s, "expired", now)
	wantErr(t, err, domain.ErrTokenExpired)
	_, err = consume(t, s, "revoked", now)
	wantErr(t, err, domain.ErrTokenRevoked)
	_, err = consume(t, s, "missing", now)
	wantErr(t, err, domain.ErrNotFound)
	for i := range 2 {
		if _, err := consume(t, s, "reusable", now); err != nil {
			t.Fatalf("reusable use %d: %v", i+1, err)
		}
	}
	_, err = consume(t, s, "reusable", now)
	wantErr(t, err, domain.ErrTokenUsed)
	for range 5 {
		if _, err := consume(t, s, "unlimited", now); err != nil {
			t.Fatalf("unlimited: %v", err)
		}
	}
	// A failed enrollment (the node insert fails) does not consume a use.
	single2 := &domain.JoinToken{Hash: []byte("single2"), ExpireTime: now.Add(time.Hour), CvlanID: f.cvlan.ID}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateJoinToken(c, single2) })
	err = s.Tx(c, store.AllTenants(), func(tx store.Tx) error {
		tok, err := tx.ConsumeJoinToken(c, []byte("single2"), now)
		if err != nil {
			return err
		}
		return tx.CreateNode(c, &domain.Node{TenantID: tok.TenantID, CvlanID: "no-such-cvlan", Name: "n"})
	})
	wantErr(t, err, domain.ErrNotFound)
	if _, err := consume(t, s, "single2", now); err != nil {
		t.Fatalf("token consumed by a rolled-back enrollment: %v", err)
	}
	// Updates keep the use count (only ConsumeJoinToken changes it).
	must(t, s, f.scope, func(tx store.Tx) error {
		got, err := tx.GetJoinToken(c, single2.ID)
		if err != nil {
			return err
		}
		got.UseCount = 0
		got.Description = "x"
		if err := tx.UpdateJoinToken(c, got); err != nil {
			return err
		}
		got, err = tx.GetJoinToken(c, single2.ID)
		if err == nil && got.UseCount != 1 {
			err = fmt.Errorf("use count after update = %d", got.UseCount)
		}
		return err
	})
	// Revoked tokens are hidden from lists unless asked for.
	must(t, s, f.scope, func(tx store.Tx) error {
		all, err := lenPage(tx.ListJoinTokens(c, store.JoinTokenFilter{IncludeRevoked: true}, store.ListOptions{}))
		if err != nil {
			return err
		}
		active, err := lenPage(tx.ListJoinTokens(c, store.JoinTokenFilter{}, store.ListOptions{}))
		if err == nil && (all != 6 || active != 5) {
			err = fmt.Errorf("tokens: %d with revoked, %d active", all, active)
		}
		return err
	})
}

// testJoinTokenRace: 50 concurrent consumers of one single-use token, across two Store
// instances when the harness has Twin: exactly one wins.
func testJoinTokenRace(t *testing.T, h Harness) {
	s := h.New(t)
	stores := []store.Store{s}
	if h.Twin != nil {
		stores = append(stores, h.Twin(t, s))
	}
	f := newTenant(t, s, "tokenrace", "")
	c := t.Context()
	must(t, s, f.scope, func(tx store.Tx) error {
		return tx.CreateJoinToken(c, &domain.JoinToken{Hash: []byte("once"), ExpireTime: time.Now().Add(time.Hour), CvlanID: f.cvlan.ID})
	})
	const consumers = 50
	var wins, used atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range consumers {
		st := stores[i%len(stores)]
		wg.Go(func() {
			<-start
			err := st.Tx(c, store.AllTenants(), func(tx store.Tx) error {
				tok, err := tx.ConsumeJoinToken(c, []byte("once"), time.Now())
				if err != nil {
					return err
				}
				// Enroll: the node is created in the same transaction.
				return tx.CreateNode(c, &domain.Node{TenantID: tok.TenantID, CvlanID: tok.CvlanID, Name: fmt.Sprintf("n%d", i)})
			})
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, domain.ErrTokenUsed):
				used.Add(1)
			default:
				t.Errorf("consumer %d: %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || used.Load() != consumers-1 {
		t.Fatalf("wins = %d, used = %d; want 1 and %d", wins.Load(), used.Load(), consumers-1)
	}
	must(t, s, f.scope, func(tx store.Tx) error {
		n, err := lenPage(tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{}))
		if err == nil && n != 1 {
			err = fmt.Errorf("%d nodes enrolled with a single-use token", n)
		}
		return err
	})
}

func testIPAMStable(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "ipam", "")
	c := t.Context()
	a, b := f.node("a"), f.node("b")
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.CreateNode(c, a); err != nil {
			return err
		}
		return tx.CreateNode(c, b)
	})
	if a.IPv4Address.String() != "100.64.0.1" || b.IPv4Address.String() != "100.64.0.2" {
		t.Fatalf("addresses = %s, %s; want 100.64.0.1, 100.64.0.2", a.IPv4Address, b.IPv4Address)
	}
	if !f.cvlan.IPv6CIDR.Contains(a.IPv6Address) || a.IPv6Address == b.IPv6Address {
		t.Fatalf("ipv6 = %s, %s not distinct in %s", a.IPv6Address, b.IPv6Address, f.cvlan.IPv6CIDR)
	}
	// Updates cannot move a node.
	a.IPv4Address = netip.MustParseAddr("100.64.9.9")
	a.IPv6Address = netip.Addr{}
	a.CvlanID = "elsewhere"
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateNode(c, a) })
	must(t, s, f.scope, func(tx store.Tx) error {
		got, err := tx.GetNode(c, a.ID)
		if err == nil && (got.IPv4Address.String() != "100.64.0.1" || !got.IPv6Address.IsValid() || got.CvlanID != f.cvlan.ID) {
			err = fmt.Errorf("node moved: %s %s %s", got.IPv4Address, got.IPv6Address, got.CvlanID)
		}
		return err
	})
	// An explicit address is reserved when free, refused when taken or outside the pool.
	r := f.node("r")
	r.IPv4Address = netip.MustParseAddr("100.64.1.10")
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, r) })
	dup := f.node("dup")
	dup.IPv4Address = netip.MustParseAddr("100.64.1.10")
	err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, dup) })
	wantErr(t, err, domain.ErrAlreadyExists)
	out := f.node("out")
	out.IPv4Address = netip.MustParseAddr("10.0.0.1")
	err = s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, out) })
	wantErr(t, err, domain.ErrInvalid)
	netaddr := f.node("net")
	netaddr.IPv4Address = netip.MustParseAddr("100.64.0.0")
	err = s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, netaddr) })
	wantErr(t, err, domain.ErrInvalid)
	// Names are unique in the cvlan.
	err = s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, &domain.Node{Name: "a", CvlanID: f.cvlan.ID}) })
	wantErr(t, err, domain.ErrAlreadyExists)
	// A node needs a cvlan (relays excepted) that exists.
	err = s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, &domain.Node{Name: "x"}) })
	wantErr(t, err, domain.ErrInvalid)
	must(t, s, f.scope, func(tx store.Tx) error {
		return tx.CreateNode(c, &domain.Node{Name: "relay-1", Kind: domain.NodeKindRelay})
	})
	must(t, s, f.scope, func(tx store.Tx) error {
		u, err := tx.CvlanUsage(c, f.cvlan.ID)
		if err == nil && (u.Nodes != 3 || u.IPv4Available != 1<<22-2-3) {
			err = fmt.Errorf("usage = %+v", u)
		}
		return err
	})
}

func testIPAMExhaustion(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "small", "10.1.2.0/29") // 6 usable addresses: .1 to .6
	c := t.Context()
	var nodes []*domain.Node
	seen := map[netip.Addr]bool{}
	for i := range 6 {
		n := f.node(fmt.Sprintf("n%d", i))
		must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, n) })
		if seen[n.IPv4Address] || n.IPv4Address == netip.MustParseAddr("10.1.2.0") || n.IPv4Address == netip.MustParseAddr("10.1.2.7") {
			t.Fatalf("bad address %s", n.IPv4Address)
		}
		seen[n.IPv4Address] = true
		nodes = append(nodes, n)
	}
	err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, f.node("full")) })
	wantErr(t, err, domain.ErrExhausted)
	// Deleting a node releases its address, which the next node gets (after wrapping around).
	freed := nodes[2].IPv4Address
	must(t, s, f.scope, func(tx store.Tx) error { return tx.DeleteNode(c, nodes[2].ID, 0) })
	again := f.node("again")
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, again) })
	if again.IPv4Address != freed {
		t.Fatalf("reused address = %s, want %s", again.IPv4Address, freed)
	}
	err = s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, f.node("full2")) })
	wantErr(t, err, domain.ErrExhausted)
}

// testIPAMConcurrent: concurrent creators in one cvlan, through two Store instances when the
// harness has Twin (two controller processes), never share an address.
func testIPAMConcurrent(t *testing.T, h Harness) {
	s := h.New(t)
	stores := []store.Store{s}
	if h.Twin != nil {
		stores = append(stores, h.Twin(t, s))
	}
	f := newTenant(t, s, "ipamrace", "10.7.0.0/24")
	c := t.Context()
	const workers, perWorker = 8, 8
	var mu sync.Mutex
	got := map[netip.Addr]string{}
	var wg sync.WaitGroup
	for w := range workers {
		st := stores[w%len(stores)]
		wg.Go(func() {
			for i := range perWorker {
				n := f.node(fmt.Sprintf("w%d-%d", w, i))
				if err := st.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, n) }); err != nil {
					t.Errorf("create: %v", err)
					return
				}
				mu.Lock()
				if other, dup := got[n.IPv4Address]; dup {
					t.Errorf("%s given to %s and %s", n.IPv4Address, other, n.Name)
				}
				got[n.IPv4Address] = n.Name
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(got) != workers*perWorker {
		t.Fatalf("%d distinct addresses, want %d", len(got), workers*perWorker)
	}
	// The pool is dense: with no deletions every address from .1 up is used.
	for i := 1; i <= workers*perWorker; i++ {
		a := netip.AddrFrom4([4]byte{10, 7, 0, byte(i)})
		if _, ok := got[a]; !ok {
			t.Fatalf("address %s skipped", a)
		}
	}
}

func testCapacity(t *testing.T, h Harness) {
	s := h.New(t)
	c := t.Context()
	tn := &domain.Tenant{Name: "capped", MaxNodes: 2, Settings: domain.TenantSettings{MaxCvlans: 1}}
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(c, tn) })
	sc := store.TenantScope(tn.ID)
	cv := &domain.Cvlan{Name: "one"}
	must(t, s, sc, func(tx store.Tx) error { return tx.CreateCvlan(c, cv) })
	err := s.Tx(c, sc, func(tx store.Tx) error { return tx.CreateCvlan(c, &domain.Cvlan{Name: "two"}) })
	wantErr(t, err, domain.ErrExhausted)
	for i := range 2 {
		must(t, s, sc, func(tx store.Tx) error {
			return tx.CreateNode(c, &domain.Node{Name: fmt.Sprint("n", i), CvlanID: cv.ID})
		})
	}
	err = s.Tx(c, sc, func(tx store.Tx) error { return tx.CreateNode(c, &domain.Node{Name: "n3", CvlanID: cv.ID}) })
	wantErr(t, err, domain.ErrExhausted)
}

func testDeleteCascade(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "cascade", "")
	c := t.Context()
	n := f.node("n")
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, n) })
	err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.DeleteCvlan(c, f.cvlan.ID, 0, false) })
	wantErr(t, err, domain.ErrFailedPrecondition)
	err = s.Tx(c, store.AllTenants(), func(tx store.Tx) error { return tx.DeleteTenant(c, f.tenant.ID, 0, false) })
	wantErr(t, err, domain.ErrFailedPrecondition)
	must(t, s, f.scope, func(tx store.Tx) error { return tx.DeleteCvlan(c, f.cvlan.ID, 0, true) })
	err = s.ReadTx(c, f.scope, func(tx store.Tx) error { _, err := tx.GetNode(c, n.ID); return err })
	wantErr(t, err, domain.ErrNotFound)
	// Force-deleting a tenant removes all of its rows but keeps its audit trail.
	f2 := newTenant(t, s, "cascade2", "")
	must(t, s, f2.scope, func(tx store.Tx) error {
		if err := tx.CreateNode(c, f2.node("x")); err != nil {
			return err
		}
		if err := tx.CreateUser(c, &domain.User{Name: "u", Email: "u@x"}); err != nil {
			return err
		}
		return tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorSystem, Action: "x", ResourceType: "node"})
	})
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.DeleteTenant(c, f2.tenant.ID, 0, true) })
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		n, err := lenPage(tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{}))
		if err == nil && n != 0 {
			err = fmt.Errorf("%d nodes left", n)
		}
		return err
	})
	if n := auditCount(t, s, store.AllTenants(), store.AuditFilter{}); n != 1 {
		t.Fatalf("audit entries after tenant deletion = %d, want 1", n)
	}
}

func testChangeFeed(t *testing.T, h Harness) {
	s := h.New(t)
	c := t.Context()
	before, err := s.ChangesSince(c, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	if len(before) > 0 {
		last = before[len(before)-1].ID
	}
	f := newTenant(t, s, "feed", "") // tenant create + cvlan create
	n := f.node("n")
	pol := &domain.Policy{Name: "p"}
	u := &domain.User{Name: "u", Email: "u@x"}
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.CreateNode(c, n); err != nil {
			return err
		}
		// Users are in the feed too (the API's WatchEvents reports them).
		if err := tx.CreateUser(c, u); err != nil {
			return err
		}
		return tx.CreatePolicy(c, pol)
	})
	n.Tags = []string{"web"}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateNode(c, n) })
	_ = s.Tx(c, f.scope, func(tx store.Tx) error {
		_ = tx.CreateTag(c, &domain.Tag{Name: "rolled-back"})
		return errors.New("abort")
	})
	must(t, s, f.scope, func(tx store.Tx) error { return tx.DeleteNode(c, n.ID, 0) })
	got, err := s.ChangesSince(c, last, 100)
	if err != nil {
		t.Fatal(err)
	}
	type ev struct {
		kind, id string
		op       domain.ChangeOp
	}
	want := []ev{
		{domain.ResourceTenant, f.tenant.ID, domain.OpCreate},
		{domain.ResourceCvlan, f.cvlan.ID, domain.OpCreate},
		{domain.ResourceNode, n.ID, domain.OpCreate},
		{domain.ResourceUser, u.ID, domain.OpCreate},
		{domain.ResourcePolicy, pol.ID, domain.OpCreate},
		{domain.ResourceNode, n.ID, domain.OpUpdate},
		{domain.ResourceNode, n.ID, domain.OpDelete},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events %+v, want %d", len(got), got, len(want))
	}
	for i, g := range got {
		if (ev{g.ResourceType, g.ResourceID, g.Op}) != want[i] || g.TenantID != f.tenant.ID || g.ID <= last {
			t.Fatalf("event %d = %+v, want %+v after id %d", i, g, want[i], last)
		}
		last = g.ID
	}
	if got[5].Version != 2 {
		t.Fatalf("update event version = %d", got[5].Version)
	}
	// Paging through the feed with a limit.
	page, err := s.ChangesSince(c, got[0].ID, 2)
	if err != nil || len(page) != 2 || page[0].ID != got[1].ID {
		t.Fatalf("limited read = %+v, %v", page, err)
	}
	// Heartbeats (TouchNode) change neither the version nor the feed.
	hb := f.node("hb")
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, hb) })
	seen := time.Now().Add(-time.Hour)
	must(t, s, f.scope, func(tx store.Tx) error { return tx.TouchNode(c, hb.ID, seen) })
	after, err := s.ChangesSince(c, last, 100)
	if err != nil || len(after) != 1 || after[0].Op != domain.OpCreate {
		t.Fatalf("events after create+touch = %+v, %v", after, err)
	}
	must(t, s, f.scope, func(tx store.Tx) error {
		got, err := tx.GetNode(c, hb.ID)
		if err != nil {
			return err
		}
		if got.Version != 1 || !got.LastSeenTime.Equal(seen.UTC().Truncate(time.Microsecond)) {
			return fmt.Errorf("touched node: version %d, last seen %v", got.Version, got.LastSeenTime)
		}
		// An update from a copy read before the heartbeat keeps the later last-seen time.
		hb.Description = "edited"
		if err := tx.UpdateNode(c, hb); err != nil {
			return err
		}
		if !hb.LastSeenTime.Equal(got.LastSeenTime) {
			return fmt.Errorf("update lost the heartbeat: %v", hb.LastSeenTime)
		}
		p, err := tx.ListNodes(c, store.NodeFilter{LastSeenBefore: time.Now().Add(-time.Minute)}, store.ListOptions{})
		if err == nil && (len(p.Items) != 1 || p.Items[0].ID != hb.ID) {
			err = fmt.Errorf("last-seen filter: %v", names(p))
		}
		return err
	})
	// Pruning removes old events only.
	pruned, err := s.PruneChanges(c, time.Now().Add(time.Hour))
	if err != nil || pruned < int64(len(want)) {
		t.Fatalf("pruned %d, %v", pruned, err)
	}
	if rest, err := s.ChangesSince(c, 0, 0); err != nil || len(rest) != 0 {
		t.Fatalf("after pruning: %d events, %v", len(rest), err)
	}
	if n, err := s.PruneChanges(c, time.Now().Add(-time.Hour)); err != nil || n != 0 {
		t.Fatalf("pruned %d recent events, %v", n, err)
	}
}

func testWatch(t *testing.T, h Harness) {
	s := h.New(t)
	watchers := []store.Store{s}
	if h.Twin != nil && h.CrossProcessWatch {
		watchers = append(watchers, h.Twin(t, s))
	}
	f := newTenant(t, s, "watch", "")
	for i, w := range watchers {
		wctx, cancel := contextWithCancel(t)
		ch, err := w.Watch(wctx)
		if err != nil {
			t.Fatal(err)
		}
		drain(ch)
		must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateTag(t.Context(), &domain.Tag{Name: fmt.Sprint("t", i)}) })
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("watcher %d not woken by a commit", i)
		}
		cancel()
		// The channel is closed once the watch context ends.
		deadline := time.After(10 * time.Second)
		for open := true; open; {
			select {
			case _, open = <-ch:
			case <-deadline:
				t.Fatalf("watch channel %d not closed after cancel", i)
			}
		}
	}
}

func drain(ch <-chan struct{}) {
	// Give an asynchronous watcher time to settle, then drop stale wake-ups.
	time.Sleep(100 * time.Millisecond)
	for {
		select {
		case <-ch:
		default:
			return
		}
	}
}
