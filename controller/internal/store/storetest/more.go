package storetest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func testPagination(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "pages", "")
	c := t.Context()
	const n = 25
	var want []string
	must(t, s, f.scope, func(tx store.Tx) error {
		// Insert in an order different from the name order, to prove lists sort by name.
		for i := n - 1; i >= 0; i-- {
			name := fmt.Sprintf("node-%02d", i)
			want = append(want, name)
			if err := tx.CreateNode(c, f.node(name)); err != nil {
				return err
			}
		}
		return nil
	})
	slices.Sort(want)
	var got []string
	token := ""
	pages := 0
	for {
		var p *store.Page[domain.Node]
		must(t, s, f.scope, func(tx store.Tx) (err error) {
			p, err = tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{PageSize: 10, PageToken: token, WithTotal: true})
			return
		})
		pages++
		if p.TotalSize != n {
			t.Fatalf("total = %d, want %d", p.TotalSize, n)
		}
		for _, v := range p.Items {
			got = append(got, v.Name)
		}
		if p.NextPageToken == "" {
			break
		}
		token = p.NextPageToken
		if pages > 5 {
			t.Fatal("pagination does not end")
		}
	}
	if pages != 3 || !slices.Equal(got, want) {
		t.Fatalf("pages = %d, names = %v, want 3 pages of %v", pages, got, want)
	}
	err := s.ReadTx(c, f.scope, func(tx store.Tx) error {
		_, err := tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{PageToken: "!!garbage"})
		return err
	})
	wantErr(t, err, domain.ErrInvalid)
	// Page sizes: 0 means the default; above the maximum is clamped.
	must(t, s, f.scope, func(tx store.Tx) error {
		p, err := tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{PageSize: 5000})
		if err == nil && (len(p.Items) != n || p.NextPageToken != "") {
			err = fmt.Errorf("clamped page: %d items, token %q", len(p.Items), p.NextPageToken)
		}
		return err
	})
	// Audit entries page newest first by id.
	must(t, s, f.scope, func(tx store.Tx) error {
		for i := range 7 {
			if err := tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorSystem, Action: fmt.Sprintf("A%d", i), ResourceType: "node"}); err != nil {
				return err
			}
		}
		return nil
	})
	var actions []string
	token = ""
	for range 4 {
		var p *store.Page[domain.AuditEntry]
		must(t, s, f.scope, func(tx store.Tx) (err error) {
			p, err = tx.ListAudit(c, store.AuditFilter{}, store.ListOptions{PageSize: 3, PageToken: token})
			return
		})
		for _, e := range p.Items {
			actions = append(actions, e.Action)
		}
		if token = p.NextPageToken; token == "" {
			break
		}
	}
	if want := []string{"A6", "A5", "A4", "A3", "A2", "A1", "A0"}; !slices.Equal(actions, want) {
		t.Fatalf("audit pages = %v, want %v", actions, want)
	}
}

func names(p *store.Page[domain.Node]) []string {
	var out []string
	for _, v := range p.Items {
		out = append(out, v.Name)
	}
	return out
}

func testNodeFilters(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "filters", "")
	c := t.Context()
	other := &domain.Cvlan{Name: "other", IPv4CIDR: netip.MustParsePrefix("10.9.0.0/24")}
	yes := true
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.CreateCvlan(c, other); err != nil {
			return err
		}
		nodes := []*domain.Node{
			{Name: "web-1", CvlanID: f.cvlan.ID, Tags: []string{"web", "prod"}, Status: domain.NodeOnline, UserID: "u1"},
			{Name: "web-2", CvlanID: f.cvlan.ID, Tags: []string{"web"}, Status: domain.NodeOffline, Ephemeral: true},
			{Name: "db-1", CvlanID: f.cvlan.ID, Tags: []string{"prod"}, Kind: domain.NodeKindVRouter,
				Routes: []domain.NodeRoute{{CIDR: netip.MustParsePrefix("10.1.0.0/16"), Advertised: true}}},
			{Name: "gw", CvlanID: other.ID, Kind: domain.NodeKindStaticPeer, WireGuardPublicKey: "pk-gw",
				Sync: domain.NodeSync{State: domain.SyncFailed, Error: "boom"}},
		}
		for _, n := range nodes {
			if err := tx.CreateNode(c, n); err != nil {
				return err
			}
		}
		return nil
	})
	tests := []struct {
		name   string
		filter store.NodeFilter
		want   []string
	}{
		{"all", store.NodeFilter{}, []string{"db-1", "gw", "web-1", "web-2"}},
		{"cvlan", store.NodeFilter{CvlanID: other.ID}, []string{"gw"}},
		{"tag", store.NodeFilter{Tag: "web"}, []string{"web-1", "web-2"}},
		{"tag and status", store.NodeFilter{Tag: "web", Status: domain.NodeOnline}, []string{"web-1"}},
		{"tag prod", store.NodeFilter{Tag: "prod"}, []string{"db-1", "web-1"}},
		{"tag none", store.NodeFilter{Tag: "nope"}, nil},
		{"prefix", store.NodeFilter{NamePrefix: "web"}, []string{"web-1", "web-2"}},
		{"prefix exact", store.NodeFilter{NamePrefix: "web-2"}, []string{"web-2"}},
		{"kind", store.NodeFilter{Kind: domain.NodeKindVRouter}, []string{"db-1"}},
		{"user", store.NodeFilter{UserID: "u1"}, []string{"web-1"}},
		{"pending routes", store.NodeFilter{PendingRouteApproval: true}, []string{"db-1"}},
		{"sync failed", store.NodeFilter{SyncState: domain.SyncFailed}, []string{"gw"}},
		{"key", store.NodeFilter{WireGuardPublicKey: "pk-gw"}, []string{"gw"}},
		{"ephemeral", store.NodeFilter{Ephemeral: &yes}, []string{"web-2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			must(t, s, f.scope, func(tx store.Tx) error {
				p, err := tx.ListNodes(c, tt.filter, store.ListOptions{WithTotal: true})
				if err != nil {
					return err
				}
				if got := names(p); !slices.Equal(got, tt.want) || p.TotalSize != len(tt.want) {
					return fmt.Errorf("got %v (total %d), want %v", got, p.TotalSize, tt.want)
				}
				return nil
			})
		})
	}
	// The pending-route flag follows updates: approving the route clears it.
	must(t, s, f.scope, func(tx store.Tx) error {
		p, err := tx.ListNodes(c, store.NodeFilter{NamePrefix: "db-1"}, store.ListOptions{})
		if err != nil {
			return err
		}
		n := p.Items[0]
		n.Routes[0].Approved = true
		if err := tx.UpdateNode(c, n); err != nil {
			return err
		}
		p, err = tx.ListNodes(c, store.NodeFilter{PendingRouteApproval: true}, store.ListOptions{})
		if err == nil && len(p.Items) != 0 {
			err = fmt.Errorf("still pending: %v", names(p))
		}
		return err
	})
}

func testMembershipFilters(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "members", "")
	c := t.Context()
	u1 := &domain.User{Name: "alice", Email: "alice@x.example", Role: domain.RoleOperator}
	u2 := &domain.User{Name: "bob", Email: "bob@x.example", Role: domain.RoleViewer}
	n1 := f.node("n1")
	var g1, g2 *domain.Group
	must(t, s, f.scope, func(tx store.Tx) error {
		for _, u := range []*domain.User{u1, u2} {
			if err := tx.CreateUser(c, u); err != nil {
				return err
			}
		}
		if err := tx.CreateNode(c, n1); err != nil {
			return err
		}
		g1 = &domain.Group{Name: "eng", Members: []domain.GroupMember{{UserID: u1.ID}, {NodeID: n1.ID}}, IdPGroupNames: []string{"idp-eng"}}
		g2 = &domain.Group{Name: "ops", Members: []domain.GroupMember{{UserID: u1.ID}, {UserID: u2.ID}}}
		if err := tx.CreateGroup(c, g1); err != nil {
			return err
		}
		return tx.CreateGroup(c, g2)
	})
	groupNames := func(p *store.Page[domain.Group]) (out []string) {
		for _, g := range p.Items {
			out = append(out, g.Name)
		}
		return out
	}
	must(t, s, f.scope, func(tx store.Tx) error {
		for _, tt := range []struct {
			f    store.GroupFilter
			want []string
		}{
			{store.GroupFilter{UserID: u1.ID}, []string{"eng", "ops"}},
			{store.GroupFilter{UserID: u2.ID}, []string{"ops"}},
			{store.GroupFilter{NodeID: n1.ID}, []string{"eng"}},
			{store.GroupFilter{IdPGroupName: "idp-eng"}, []string{"eng"}},
			{store.GroupFilter{IdPGroupName: "idp-none"}, nil},
		} {
			p, err := tx.ListGroups(c, tt.f, store.ListOptions{})
			if err != nil {
				return err
			}
			if got := groupNames(p); !slices.Equal(got, tt.want) {
				return fmt.Errorf("groups %+v = %v, want %v", tt.f, got, tt.want)
			}
		}
		p, err := tx.ListUsers(c, store.UserFilter{GroupID: g1.ID}, store.ListOptions{})
		if err != nil {
			return err
		}
		if len(p.Items) != 1 || p.Items[0].Name != "alice" {
			return fmt.Errorf("users of eng = %d items", len(p.Items))
		}
		p, err = tx.ListUsers(c, store.UserFilter{GroupID: g2.ID, Role: domain.RoleViewer}, store.ListOptions{})
		if err != nil {
			return err
		}
		if len(p.Items) != 1 || p.Items[0].Name != "bob" {
			return fmt.Errorf("viewers of ops = %d items", len(p.Items))
		}
		p, err = tx.ListUsers(c, store.UserFilter{EmailPrefix: "bo"}, store.ListOptions{})
		if err == nil && len(p.Items) != 1 {
			err = fmt.Errorf("email prefix: %d items", len(p.Items))
		}
		return err
	})
}

func testStaleVersion(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "stale", "")
	c := t.Context()
	n := f.node("a")
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, n) })
	first := *n
	second := *n
	first.Description = "first"
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateNode(c, &first) })
	second.Description = "second"
	err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.UpdateNode(c, &second) })
	wantErr(t, err, domain.ErrConflict)
	must(t, s, f.scope, func(tx store.Tx) error {
		got, err := tx.GetNode(c, n.ID)
		if err == nil && (got.Description != "first" || got.Version != 2) {
			err = fmt.Errorf("got %q v%d, want the first update", got.Description, got.Version)
		}
		return err
	})
	// Version 0 is an unconditional write.
	second.Version = 0
	must(t, s, f.scope, func(tx store.Tx) error { return tx.UpdateNode(c, &second) })
	if second.Version != 3 {
		t.Fatalf("unconditional update version = %d", second.Version)
	}
}

// testConcurrentUpdates: N writers read the same version and update; exactly one wins and the
// others get ErrConflict (no lost update).
func testConcurrentUpdates(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "race", "")
	c := t.Context()
	p := &domain.Policy{Name: "p"}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreatePolicy(c, p) })
	const writers = 10
	var wins, conflicts atomic.Int32
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			v := *p
			v.Description = fmt.Sprint(i)
			err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.UpdatePolicy(c, &v) })
			switch {
			case err == nil:
				wins.Add(1)
			case errors.Is(err, domain.ErrConflict):
				conflicts.Add(1)
			default:
				t.Errorf("update: %v", err)
			}
		})
	}
	wg.Wait()
	if wins.Load() != 1 || conflicts.Load() != writers-1 {
		t.Fatalf("wins = %d, conflicts = %d", wins.Load(), conflicts.Load())
	}
}

func auditCount(t *testing.T, s store.Store, scope store.Scope, f store.AuditFilter) int {
	t.Helper()
	var n int
	if err := s.ReadTx(t.Context(), scope, func(tx store.Tx) error {
		p, err := tx.ListAudit(t.Context(), f, store.ListOptions{WithTotal: true, PageSize: 1})
		if err == nil {
			n = p.TotalSize
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

func testAuditAtomic(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "audit", "")
	c := t.Context()
	tag := &domain.Tag{Name: "web"}
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.CreateTag(c, tag); err != nil {
			return err
		}
		return tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorUser, ActorID: "u1", Action: "CreateTag",
			ResourceType: domain.ResourceTag, ResourceID: tag.ID, After: []byte(`{"name":"web"}`)})
	})
	if n := auditCount(t, s, f.scope, store.AuditFilter{ResourceID: tag.ID}); n != 1 {
		t.Fatalf("audit rows after commit = %d", n)
	}
	// A mutation that fails after its audit row was written leaves neither.
	boom := errors.New("boom")
	var failedID string
	err := s.Tx(c, f.scope, func(tx store.Tx) error {
		g := &domain.Tag{Name: "db"}
		if err := tx.CreateTag(c, g); err != nil {
			return err
		}
		failedID = g.ID
		if err := tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorUser, Action: "CreateTag",
			ResourceType: domain.ResourceTag, ResourceID: g.ID}); err != nil {
			return err
		}
		return boom
	})
	wantErr(t, err, boom)
	if n := auditCount(t, s, f.scope, store.AuditFilter{ResourceID: failedID}); n != 0 {
		t.Fatalf("audit rows of a rolled-back mutation = %d", n)
	}
	err = s.ReadTx(c, f.scope, func(tx store.Tx) error { _, err := tx.GetTag(c, failedID); return err })
	wantErr(t, err, domain.ErrNotFound)
	// A failing store call (duplicate) inside the transaction also rolls the audit row back.
	err = s.Tx(c, f.scope, func(tx store.Tx) error {
		if err := tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorUser, Action: "CreateTag",
			ResourceType: domain.ResourceTag, ResourceID: "dup"}); err != nil {
			return err
		}
		return tx.CreateTag(c, &domain.Tag{Name: "web"})
	})
	wantErr(t, err, domain.ErrAlreadyExists)
	if n := auditCount(t, s, f.scope, store.AuditFilter{ResourceID: "dup"}); n != 0 {
		t.Fatalf("audit rows of a failed mutation = %d", n)
	}
	// A panic rolls back too.
	func() {
		defer func() { _ = recover() }()
		_ = s.Tx(c, f.scope, func(tx store.Tx) error {
			_ = tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorUser, Action: "X", ResourceType: "tag", ResourceID: "panic"})
			panic("handler bug")
		})
	}()
	if n := auditCount(t, s, f.scope, store.AuditFilter{ResourceID: "panic"}); n != 0 {
		t.Fatalf("audit rows after panic = %d", n)
	}
}

func testAuditList(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "auditlist", "")
	c := t.Context()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	must(t, s, f.scope, func(tx store.Tx) error {
		for i, e := range []domain.AuditEntry{
			{ActorType: domain.ActorUser, ActorID: "alice", Action: "CreateNode", ResourceType: "node", ResourceID: "n1"},
			{ActorType: domain.ActorAPIKey, ActorID: "key1", Action: "UpdateNode", ResourceType: "node", ResourceID: "n1"},
			{ActorType: domain.ActorUser, ActorID: "alice", Action: "CreateTag", ResourceType: "tag", ResourceID: "t1",
				Before: []byte(`null`), After: []byte(`{"a":1}`), RequestID: "r1", PeerAddress: "127.0.0.1:5"},
		} {
			e.Time = t0.Add(time.Duration(i) * time.Hour)
			if err := tx.AppendAudit(c, &e); err != nil {
				return err
			}
		}
		return nil
	})
	for _, tt := range []struct {
		f    store.AuditFilter
		want int
	}{
		{store.AuditFilter{}, 3},
		{store.AuditFilter{ActorID: "alice"}, 2},
		{store.AuditFilter{ActorType: domain.ActorAPIKey}, 1},
		{store.AuditFilter{ResourceType: "node", ResourceID: "n1"}, 2},
		{store.AuditFilter{Action: "CreateTag"}, 1},
		{store.AuditFilter{Since: t0.Add(time.Hour)}, 2},
		{store.AuditFilter{Until: t0.Add(time.Hour)}, 1},
		{store.AuditFilter{Since: t0.Add(time.Hour), Until: t0.Add(2 * time.Hour)}, 1},
	} {
		if n := auditCount(t, s, f.scope, tt.f); n != tt.want {
			t.Errorf("filter %+v: %d entries, want %d", tt.f, n, tt.want)
		}
	}
	must(t, s, f.scope, func(tx store.Tx) error {
		p, err := tx.ListAudit(c, store.AuditFilter{OldestFirst: true}, store.ListOptions{})
		if err != nil {
			return err
		}
		e := p.Items[2]
		// PostgreSQL's jsonb normalises whitespace: compare compacted.
		var after bytes.Buffer
		if err := json.Compact(&after, e.After); err != nil {
			return err
		}
		if p.Items[0].Action != "CreateNode" || e.RequestID != "r1" || after.String() != `{"a":1}` ||
			!e.Time.Equal(t0.Add(2*time.Hour)) || e.TenantID != f.tenant.ID {
			return fmt.Errorf("entries did not round-trip: %+v", e)
		}
		return nil
	})
}

// testTenantIsolation: no Get/List/Update/Delete of one tenant reaches the other's rows.
func testTenantIsolation(t *testing.T, h Harness) {
	s := h.New(t)
	a := newTenant(t, s, "tenant-a", "")
	b := newTenant(t, s, "tenant-b", "")
	c := t.Context()
	type ids struct{ node, user, group, tag, policy, key, token string }
	seed := func(f fixture) ids {
		var out ids
		must(t, s, f.scope, func(tx store.Tx) error {
			n := f.node("shared-name")
			u := &domain.User{Name: "u", Email: "u@x.example", Role: domain.RoleViewer}
			g := &domain.Group{Name: "g"}
			tg := &domain.Tag{Name: "t"}
			p := &domain.Policy{Name: "p"}
			k := &domain.APIKey{Name: "k", Hash: []byte("h-" + f.tenant.Name)}
			j := &domain.JoinToken{Hash: []byte("j-" + f.tenant.Name), ExpireTime: time.Now().Add(time.Hour), CvlanID: f.cvlan.ID}
			for _, fn := range []func() error{
				func() error { return tx.CreateNode(c, n) }, func() error { return tx.CreateUser(c, u) },
				func() error { return tx.CreateGroup(c, g) }, func() error { return tx.CreateTag(c, tg) },
				func() error { return tx.CreatePolicy(c, p) }, func() error { return tx.CreateAPIKey(c, k) },
				func() error { return tx.CreateJoinToken(c, j) },
				func() error {
					return tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorSystem, Action: "Seed", ResourceType: "node", ResourceID: n.ID})
				},
			} {
				if err := fn(); err != nil {
					return err
				}
			}
			out = ids{n.ID, u.ID, g.ID, tg.ID, p.ID, k.ID, j.ID}
			return nil
		})
		return out
	}
	ia, ib := seed(a), seed(b)
	// Same names in both tenants are fine (unique per tenant / cvlan).
	must(t, s, a.scope, func(tx store.Tx) error {
		checks := []struct {
			what string
			n    func() (int, error)
		}{
			{"tenants", func() (int, error) { return lenPage(tx.ListTenants(c, store.TenantFilter{}, store.ListOptions{})) }},
			{"cvlans", func() (int, error) { return lenPage(tx.ListCvlans(c, store.CvlanFilter{}, store.ListOptions{})) }},
			{"nodes", func() (int, error) { return lenPage(tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{})) }},
			{"users", func() (int, error) { return lenPage(tx.ListUsers(c, store.UserFilter{}, store.ListOptions{})) }},
			{"groups", func() (int, error) { return lenPage(tx.ListGroups(c, store.GroupFilter{}, store.ListOptions{})) }},
			{"tags", func() (int, error) { return lenPage(tx.ListTags(c, store.TagFilter{}, store.ListOptions{})) }},
			{"policies", func() (int, error) { return lenPage(tx.ListPolicies(c, store.PolicyFilter{}, store.ListOptions{})) }},
			{"api keys", func() (int, error) { return lenPage(tx.ListAPIKeys(c, store.APIKeyFilter{}, store.ListOptions{})) }},
			{"join tokens", func() (int, error) {
				return lenPage(tx.ListJoinTokens(c, store.JoinTokenFilter{}, store.ListOptions{}))
			}},
			{"audit", func() (int, error) { return lenPage(tx.ListAudit(c, store.AuditFilter{}, store.ListOptions{})) }},
		}
		for _, ch := range checks {
			n, err := ch.n()
			if err != nil {
				return fmt.Errorf("%s: %w", ch.what, err)
			}
			if n != 1 {
				return fmt.Errorf("tenant a lists %d %s, want only its own 1", n, ch.what)
			}
		}
		gets := []func() error{
			func() error { _, err := tx.GetTenant(c, b.tenant.ID); return err },
			func() error { _, err := tx.GetCvlan(c, b.cvlan.ID); return err },
			func() error { _, err := tx.GetNode(c, ib.node); return err },
			func() error { _, err := tx.GetUser(c, ib.user); return err },
			func() error { _, err := tx.GetGroup(c, ib.group); return err },
			func() error { _, err := tx.GetTag(c, ib.tag); return err },
			func() error { _, err := tx.GetPolicy(c, ib.policy); return err },
			func() error { _, err := tx.GetAPIKey(c, ib.key); return err },
			func() error { _, err := tx.GetJoinToken(c, ib.token); return err },
			func() error { _, err := tx.GetAPIKeyByHash(c, []byte("h-tenant-b")); return err },
			func() error { _, err := tx.ConsumeJoinToken(c, []byte("j-tenant-b"), time.Now()); return err },
			func() error { _, err := tx.CvlanUsage(c, b.cvlan.ID); return err },
			func() error { return tx.UpdateTag(c, &domain.Tag{Meta: domain.Meta{ID: ib.tag}, Name: "t"}) },
			func() error { return tx.DeleteNode(c, ib.node, 0) },
			func() error { return tx.DeletePolicy(c, ib.policy, 0) },
			func() error { return tx.DeleteCvlan(c, b.cvlan.ID, 0, true) },
			func() error { return tx.DeleteTenant(c, b.tenant.ID, 0, true) },
			func() error { return tx.CreateTag(c, &domain.Tag{TenantID: b.tenant.ID, Name: "sneaky"}) },
			func() error { return tx.CreateNode(c, &domain.Node{Name: "sneaky", CvlanID: b.cvlan.ID}) },
		}
		for i, g := range gets {
			if err := g(); !errors.Is(err, domain.ErrNotFound) {
				return fmt.Errorf("cross-tenant operation %d: err = %v, want ErrNotFound", i, err)
			}
		}
		return nil
	})
	// Tenant b's rows are intact, and the all-tenants scope sees both.
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		if _, err := tx.GetNode(c, ib.node); err != nil {
			return err
		}
		if _, err := tx.GetNode(c, ia.node); err != nil {
			return err
		}
		n, err := lenPage(tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{}))
		if err == nil && n != 2 {
			err = fmt.Errorf("all scope lists %d nodes, want 2", n)
		}
		return err
	})
}

func testReadOnly(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "ro", "")
	err := s.ReadTx(t.Context(), f.scope, func(tx store.Tx) error { return tx.CreateTag(t.Context(), &domain.Tag{Name: "x"}) })
	wantErr(t, err, domain.ErrInvalid)
	err = s.ReadTx(t.Context(), f.scope, func(tx store.Tx) error {
		return tx.AppendAudit(t.Context(), &domain.AuditEntry{ActorType: domain.ActorSystem, Action: "x", ResourceType: "x"})
	})
	wantErr(t, err, domain.ErrInvalid)
}

func testLookups(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "lookups", "")
	c := t.Context()
	u := &domain.User{Name: "alice", Email: "a@x.example", Role: domain.RoleTenantAdmin, OIDCIssuer: "https://idp", OIDCSubject: "sub-1"}
	k := &domain.APIKey{Name: "ci", Prefix: "cvk_1234", Hash: []byte{1, 2, 3, 0, 255}, Role: domain.RoleOperator,
		Scopes: []string{"nodes.read"}, ExpireTime: time.Now().Add(time.Hour).UTC().Truncate(time.Microsecond)}
	var sess *domain.Session
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.CreateUser(c, u); err != nil {
			return err
		}
		if err := tx.CreateAPIKey(c, k); err != nil {
			return err
		}
		sess = &domain.Session{UserID: u.ID, Hash: []byte("sess"), ExpireTime: time.Now().Add(time.Hour)}
		if err := tx.CreateSession(c, sess); err != nil {
			return err
		}
		return tx.CreateSession(c, &domain.Session{UserID: u.ID, Hash: []byte("old"), ExpireTime: time.Now().Add(-time.Hour)})
	})
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		got, err := tx.GetAPIKeyByHash(c, []byte{1, 2, 3, 0, 255})
		if err != nil {
			return err
		}
		if got.ID != k.ID || got.TenantID != f.tenant.ID || !got.ExpireTime.Equal(k.ExpireTime) || got.Scopes[0] != "nodes.read" {
			return fmt.Errorf("key = %+v", got)
		}
		if _, err := tx.GetAPIKeyByHash(c, []byte{1, 2, 3}); !errors.Is(err, domain.ErrNotFound) {
			return fmt.Errorf("unknown hash: %v", err)
		}
		su, err := tx.GetUserByOIDC(c, "https://idp", "sub-1")
		if err != nil || su.ID != u.ID {
			return fmt.Errorf("user by oidc: %v %v", su, err)
		}
		if _, err := tx.GetUserByOIDC(c, "https://other", "sub-1"); !errors.Is(err, domain.ErrNotFound) {
			return fmt.Errorf("other issuer: %v", err)
		}
		gs, err := tx.GetSessionByHash(c, []byte("sess"))
		if err != nil || gs.ID != sess.ID || gs.UserID != u.ID {
			return fmt.Errorf("session: %v %v", gs, err)
		}
		if err := tx.TouchAPIKey(c, k.ID, time.Now()); err != nil {
			return err
		}
		got, err = tx.GetAPIKey(c, k.ID)
		if err == nil && (got.LastUsedTime.IsZero() || got.Version != 1) {
			err = fmt.Errorf("touch: last used %v, version %d", got.LastUsedTime, got.Version)
		}
		return err
	})
	must(t, s, f.scope, func(tx store.Tx) error {
		n, err := tx.DeleteExpiredSessions(c, time.Now())
		if err == nil && n != 1 {
			err = fmt.Errorf("deleted %d expired sessions, want 1", n)
		}
		return err
	})
	// Deleting the user deletes its sessions.
	must(t, s, f.scope, func(tx store.Tx) error { return tx.DeleteUser(c, u.ID, 0) })
	err := s.ReadTx(c, store.AllTenants(), func(tx store.Tx) error { _, err := tx.GetSessionByHash(c, []byte("sess")); return err })
	wantErr(t, err, domain.ErrNotFound)
}
