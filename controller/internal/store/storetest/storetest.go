// Package storetest is the conformance suite every store.Store implementation passes: CRUD,
// pagination, filters, optimistic concurrency, audit atomicity, tenant isolation, join-token
// races, IPAM uniqueness and exhaustion, and the change feed.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// Harness tells the suite how to get stores.
type Harness struct {
	// New returns a new store on a fresh, empty database; the harness closes it in t.Cleanup.
	New func(t *testing.T) store.Store
	// Twin opens a second, independent Store on the same database as s (as a second controller
	// process would); the harness closes it in t.Cleanup.
	Twin func(t *testing.T, s store.Store) store.Store
	// CrossProcessWatch says that Watch on a Twin wakes up for commits made through the
	// original (PostgreSQL LISTEN/NOTIFY); SQLite notifies only within one Store.
	CrossProcessWatch bool
}

// Run runs the suite.
func Run(t *testing.T, h Harness) {
	tests := []struct {
		name string
		fn   func(*testing.T, Harness)
	}{
		{"TenantCRUD", testTenantCRUD},
		{"ResourceCRUD", testResourceCRUD},
		{"Pagination", testPagination},
		{"NodeFilters", testNodeFilters},
		{"MembershipFilters", testMembershipFilters},
		{"ListFilters", testListFilters},
		{"StaleVersion", testStaleVersion},
		{"ConcurrentUpdates", testConcurrentUpdates},
		{"AuditAtomic", testAuditAtomic},
		{"AuditList", testAuditList},
		{"TenantIsolation", testTenantIsolation},
		{"ReadOnly", testReadOnly},
		{"Lookups", testLookups},
		{"JoinTokenChecks", testJoinTokenChecks},
		{"JoinTokenRace", testJoinTokenRace},
		{"IPAMStable", testIPAMStable},
		{"IPAMExhaustion", testIPAMExhaustion},
		{"IPAMConcurrent", testIPAMConcurrent},
		{"CreateNodesBulk", testCreateNodesBulk},
		{"Capacity", testCapacity},
		{"DeleteCascade", testDeleteCascade},
		{"SharedResources", testSharedResources},
		{"ChangeFeed", testChangeFeed},
		{"ChangeFeedCredentials", testChangeFeedCredentials},
		{"ChangeFeedConcurrent", testChangeFeedConcurrent},
		{"Watch", testWatch},
		{"LatestChangeID", testLatestChangeID},
		{"NodeStatusWrites", testNodeStatusWrites},
		{"StreamRegistry", testStreamRegistry},
		{"StreamRegistryRace", testStreamRegistryRace},
		{"VRouterStatusWrites", testVRouterStatusWrites},
		{"RelayStatusWrites", testRelayStatusWrites},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, h) })
	}
}

func ctx(t *testing.T) context.Context { return t.Context() }

// must runs fn in a read-write transaction of scope and fails the test on error.
func must(t *testing.T, s store.Store, scope store.Scope, fn func(store.Tx) error) {
	t.Helper()
	if err := s.Tx(ctx(t), scope, fn); err != nil {
		t.Fatalf("tx: %v", err)
	}
}

func wantErr(t *testing.T, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("err = %v, want %v", err, want)
	}
}

// fixture is one tenant with a cvlan.
type fixture struct {
	tenant *domain.Tenant
	cvlan  *domain.Cvlan
	scope  store.Scope
}

func newTenant(t *testing.T, s store.Store, name string, cidr string) fixture {
	t.Helper()
	f := fixture{tenant: &domain.Tenant{Name: name}}
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx(t), f.tenant) })
	f.scope = store.TenantScope(f.tenant.ID)
	f.cvlan = &domain.Cvlan{Name: "net"}
	if cidr != "" {
		f.cvlan.IPv4CIDR = netip.MustParsePrefix(cidr)
	}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateCvlan(ctx(t), f.cvlan) })
	return f
}

func (f fixture) node(name string) *domain.Node {
	return &domain.Node{Name: name, CvlanID: f.cvlan.ID, WireGuardPublicKey: "key-" + name}
}

func testTenantCRUD(t *testing.T, h Harness) {
	s := h.New(t)
	tn := &domain.Tenant{Name: "acme", Settings: domain.TenantSettings{DNSDomain: "acme.example", EphemeralOfflineTimeout: time.Hour}}
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx(t), tn) })
	if tn.ID == "" || tn.Version != 1 || tn.CreateTime.IsZero() || tn.Status != domain.TenantActive {
		t.Fatalf("created tenant meta not filled: %+v", tn)
	}
	var got *domain.Tenant
	must(t, s, store.TenantScope(tn.ID), func(tx store.Tx) (err error) { got, err = tx.GetTenant(ctx(t), tn.ID); return })
	if got.Name != "acme" || got.Settings.DNSDomain != "acme.example" || got.Settings.EphemeralOfflineTimeout != time.Hour ||
		!got.CreateTime.Equal(tn.CreateTime) || got.Version != 1 {
		t.Fatalf("get = %+v, want %+v", got, tn)
	}
	err := s.Tx(ctx(t), store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx(t), &domain.Tenant{Name: "acme"}) })
	wantErr(t, err, domain.ErrAlreadyExists)
	err = s.Tx(ctx(t), store.TenantScope(tn.ID), func(tx store.Tx) error { return tx.CreateTenant(ctx(t), &domain.Tenant{Name: "other"}) })
	wantErr(t, err, domain.ErrPermissionDenied)

	got.DisplayName = "ACME Corp"
	must(t, s, store.TenantScope(tn.ID), func(tx store.Tx) error { return tx.UpdateTenant(ctx(t), got) })
	if got.Version != 2 || !got.UpdateTime.After(got.CreateTime) && !got.UpdateTime.Equal(got.CreateTime) {
		t.Fatalf("after update: %+v", got)
	}
	err = s.Tx(ctx(t), store.AllTenants(), func(tx store.Tx) error { return tx.DeleteTenant(ctx(t), tn.ID, 1, false) })
	wantErr(t, err, domain.ErrConflict)
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.DeleteTenant(ctx(t), tn.ID, 2, false) })
	err = s.ReadTx(ctx(t), store.AllTenants(), func(tx store.Tx) error { _, err := tx.GetTenant(ctx(t), tn.ID); return err })
	wantErr(t, err, domain.ErrNotFound)
	err = s.Tx(ctx(t), store.Scope{}, func(tx store.Tx) error { return nil })
	wantErr(t, err, domain.ErrInvalid)
}

// crud is one resource type's operations for the generic CRUD test.
type crud struct {
	name string
	// all runs the case in the all-tenants scope (global resources).
	all    bool
	create func(tx store.Tx, f fixture, i int) (id string, err error)
	get    func(tx store.Tx, id string) (version int64, desc string, err error)
	update func(tx store.Tx, id string, version int64, desc string) (newVersion int64, err error)
	del    func(tx store.Tx, id string, version int64) error
	list   func(tx store.Tx) (n int, err error)
}

func testResourceCRUD(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "crud", "")
	c := t.Context()
	cases := []crud{
		{
			name: "cvlan",
			create: func(tx store.Tx, f fixture, i int) (string, error) {
				v := &domain.Cvlan{Name: fmt.Sprintf("c%d", i), IPv4CIDR: netip.MustParsePrefix("10.20.0.0/16"), DNSDomain: "c.example"}
				err := tx.CreateCvlan(c, v)
				if err == nil && (!v.IPv6CIDR.IsValid() || v.IPv6CIDR.Bits() != 48) {
					return "", fmt.Errorf("no ULA generated: %v", v.IPv6CIDR)
				}
				return v.ID, err
			},
			get: func(tx store.Tx, id string) (int64, string, error) {
				v, err := tx.GetCvlan(c, id)
				if err != nil {
					return 0, "", err
				}
				if v.IPv4CIDR.String() != "10.20.0.0/16" {
					return 0, "", fmt.Errorf("ipv4 cidr = %s", v.IPv4CIDR)
				}
				return v.Version, v.Description, nil
			},
			update: func(tx store.Tx, id string, ver int64, d string) (int64, error) {
				v := &domain.Cvlan{Meta: domain.Meta{ID: id, Version: ver}, Name: "c0", Description: d,
					IPv4CIDR: netip.MustParsePrefix("192.168.0.0/24")} // immutable: ignored
				err := tx.UpdateCvlan(c, v)
				if err == nil && v.IPv4CIDR.String() != "10.20.0.0/16" {
					return 0, fmt.Errorf("cidr changed on update: %s", v.IPv4CIDR)
				}
				return v.Version, err
			},
			del: func(tx store.Tx, id string, ver int64) error { return tx.DeleteCvlan(c, id, ver, false) },
			list: func(tx store.Tx) (int, error) {
				p, err := tx.ListCvlans(c, store.CvlanFilter{NamePrefix: "c"}, store.ListOptions{})
				return lenPage(p, err)
			},
		},
		simple("user",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.User{Name: fmt.Sprintf("u%d", i), Email: fmt.Sprintf("u%d@x.example", i), Role: domain.RoleViewer}
				err := tx.CreateUser(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.User, error) { return tx.GetUser(c, id) },
			func(v *domain.User) *string { return &v.Description },
			func(tx store.Tx, v *domain.User) error { return tx.UpdateUser(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteUser(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListUsers(c, store.UserFilter{}, store.ListOptions{}))
			}),
		simple("group",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.Group{Name: fmt.Sprintf("g%d", i), IdPGroupNames: []string{"eng"}}
				err := tx.CreateGroup(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.Group, error) { return tx.GetGroup(c, id) },
			func(v *domain.Group) *string { return &v.Description },
			func(tx store.Tx, v *domain.Group) error { return tx.UpdateGroup(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteGroup(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListGroups(c, store.GroupFilter{}, store.ListOptions{}))
			}),
		simple("tag",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.Tag{Name: fmt.Sprintf("t%d", i)}
				err := tx.CreateTag(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.Tag, error) { return tx.GetTag(c, id) },
			func(v *domain.Tag) *string { return &v.Description },
			func(tx store.Tx, v *domain.Tag) error { return tx.UpdateTag(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteTag(c, id, ver) },
			func(tx store.Tx) (int, error) { return lenPage(tx.ListTags(c, store.TagFilter{}, store.ListOptions{})) }),
		simple("policy",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.Policy{Name: fmt.Sprintf("p%d", i), Enabled: true, Rules: []domain.PolicyRule{{
					Action: domain.ActionAllow, Sources: []domain.PolicyTarget{{Tag: "web"}},
					Destinations: []domain.PolicyTarget{{CIDR: netip.MustParsePrefix("10.0.0.0/8")}},
					Protocol:     domain.ProtocolTCP, Ports: []domain.PortRange{{First: 443}}}}}
				err := tx.CreatePolicy(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.Policy, error) {
				v, err := tx.GetPolicy(c, id)
				if err == nil && (len(v.Rules) != 1 || v.Rules[0].Destinations[0].CIDR.String() != "10.0.0.0/8") {
					return nil, fmt.Errorf("rules did not round-trip: %+v", v.Rules)
				}
				return v, err
			},
			func(v *domain.Policy) *string { return &v.Description },
			func(tx store.Tx, v *domain.Policy) error { return tx.UpdatePolicy(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeletePolicy(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListPolicies(c, store.PolicyFilter{}, store.ListOptions{}))
			}),
		simple("region",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.Region{Name: fmt.Sprintf("r%d", i), Code: fmt.Sprintf("code-%d", i)}
				err := tx.CreateRegion(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.Region, error) { return tx.GetRegion(c, id) },
			func(v *domain.Region) *string { return &v.Description },
			func(tx store.Tx, v *domain.Region) error { return tx.UpdateRegion(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteRegion(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListRegions(c, store.RegionFilter{}, store.ListOptions{}))
			}),
		simple("relay",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.Relay{Name: fmt.Sprintf("rl%d", i), Addresses: []string{"127.0.0.1:443"}, Stats: domain.RelayStats{BytesForwarded: 7}}
				err := tx.CreateRelay(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.Relay, error) { return tx.GetRelay(c, id) },
			func(v *domain.Relay) *string { return &v.Description },
			func(tx store.Tx, v *domain.Relay) error { return tx.UpdateRelay(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteRelay(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListRelays(c, store.RelayFilter{}, store.ListOptions{}))
			}),
		simple("vrouter",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.VRouter{Name: fmt.Sprintf("v%d", i), CvlanID: f.cvlan.ID,
					Connections: []domain.VRouterConnection{{Name: "branch", RemoteAddress: "192.0.2.1"}}}
				err := tx.CreateVRouter(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.VRouter, error) { return tx.GetVRouter(c, id) },
			func(v *domain.VRouter) *string { return &v.Description },
			func(tx store.Tx, v *domain.VRouter) error { return tx.UpdateVRouter(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteVRouter(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListVRouters(c, store.VRouterFilter{CvlanID: f.cvlan.ID}, store.ListOptions{}))
			}),
		simple("discovery_server",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.DiscoveryServer{Name: fmt.Sprintf("d%d", i), Type: "stun", Address: "127.0.0.1:3478", Enabled: true}
				err := tx.CreateDiscoveryServer(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.DiscoveryServer, error) { return tx.GetDiscoveryServer(c, id) },
			func(v *domain.DiscoveryServer) *string { return &v.Description },
			func(tx store.Tx, v *domain.DiscoveryServer) error { return tx.UpdateDiscoveryServer(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteDiscoveryServer(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListDiscoveryServers(c, store.DiscoveryServerFilter{Type: "stun"}, store.ListOptions{}))
			}),
		simple("api_key",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.APIKey{Name: fmt.Sprintf("k%d", i), Prefix: "cvk_abcd", Hash: []byte(fmt.Sprintf("hash-%d", i)), Role: domain.RoleOperator}
				err := tx.CreateAPIKey(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.APIKey, error) { return tx.GetAPIKey(c, id) },
			func(v *domain.APIKey) *string { return &v.Description },
			func(tx store.Tx, v *domain.APIKey) error { return tx.UpdateAPIKey(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteAPIKey(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListAPIKeys(c, store.APIKeyFilter{}, store.ListOptions{}))
			}),
		simple("join_token",
			func(tx store.Tx, i int) (string, error) {
				v := &domain.JoinToken{Prefix: "cvj_x", Hash: []byte(fmt.Sprintf("jt-%d", i)), CvlanID: f.cvlan.ID, ExpireTime: time.Now().Add(time.Hour)}
				err := tx.CreateJoinToken(c, v)
				return v.ID, err
			},
			func(tx store.Tx, id string) (*domain.JoinToken, error) { return tx.GetJoinToken(c, id) },
			func(v *domain.JoinToken) *string { return &v.Description },
			func(tx store.Tx, v *domain.JoinToken) error { return tx.UpdateJoinToken(c, v) },
			func(tx store.Tx, id string, ver int64) error { return tx.DeleteJoinToken(c, id, ver) },
			func(tx store.Tx) (int, error) {
				return lenPage(tx.ListJoinTokens(c, store.JoinTokenFilter{CvlanID: f.cvlan.ID}, store.ListOptions{}))
			}),
	}
	cases[5].all = true // regions are global
	for _, cs := range cases {
		t.Run(cs.name, func(t *testing.T) {
			f := f
			if cs.all {
				f.scope = store.AllTenants()
			}
			var ids []string
			must(t, s, f.scope, func(tx store.Tx) error {
				for i := range 3 {
					id, err := cs.create(tx, f, i)
					if err != nil {
						return err
					}
					ids = append(ids, id)
				}
				return nil
			})
			err := s.Tx(c, f.scope, func(tx store.Tx) error { _, err := cs.create(tx, f, 0); return err })
			wantErr(t, err, domain.ErrAlreadyExists) // name (or, for tokens, hash) taken
			must(t, s, f.scope, func(tx store.Tx) error {
				n, err := cs.list(tx)
				if err == nil && n != 3 {
					err = fmt.Errorf("list returned %d, want 3", n)
				}
				return err
			})
			var ver int64
			must(t, s, f.scope, func(tx store.Tx) (err error) { ver, _, err = cs.get(tx, ids[0]); return })
			if ver != 1 {
				t.Fatalf("version = %d", ver)
			}
			must(t, s, f.scope, func(tx store.Tx) (err error) { ver, err = cs.update(tx, ids[0], 1, "changed"); return })
			if ver != 2 {
				t.Fatalf("version after update = %d", ver)
			}
			must(t, s, f.scope, func(tx store.Tx) error {
				v, d, err := cs.get(tx, ids[0])
				if err == nil && (v != 2 || d != "changed") {
					err = fmt.Errorf("after update: version %d, description %q", v, d)
				}
				return err
			})
			err = s.Tx(c, f.scope, func(tx store.Tx) error { _, err := cs.update(tx, ids[0], 1, "lost"); return err })
			wantErr(t, err, domain.ErrConflict)
			err = s.Tx(c, f.scope, func(tx store.Tx) error {
				_, err := cs.update(tx, "00000000-0000-0000-0000-000000000000", 0, "x")
				return err
			})
			wantErr(t, err, domain.ErrNotFound)
			err = s.Tx(c, f.scope, func(tx store.Tx) error { return cs.del(tx, ids[0], 1) })
			wantErr(t, err, domain.ErrConflict)
			must(t, s, f.scope, func(tx store.Tx) error { return cs.del(tx, ids[0], 2) })
			must(t, s, f.scope, func(tx store.Tx) error { return cs.del(tx, ids[1], 0) })
			err = s.Tx(c, f.scope, func(tx store.Tx) error { _, _, err := cs.get(tx, ids[0]); return err })
			wantErr(t, err, domain.ErrNotFound)
			err = s.Tx(c, f.scope, func(tx store.Tx) error { return cs.del(tx, ids[0], 0) })
			wantErr(t, err, domain.ErrNotFound)
			must(t, s, f.scope, func(tx store.Tx) error {
				n, err := cs.list(tx)
				if err == nil && n != 1 {
					err = fmt.Errorf("list after deletes returned %d, want 1", n)
				}
				return err
			})
		})
	}
}

func lenPage[T any](p *store.Page[T], err error) (int, error) {
	if err != nil {
		return 0, err
	}
	return len(p.Items), nil
}

type metaer interface{ GetMeta() *domain.Meta }

// simple builds a crud case for resources whose mutable text field is given by desc.
func simple[P metaer](name string,
	create func(store.Tx, int) (string, error),
	get func(store.Tx, string) (P, error),
	desc func(P) *string,
	update func(store.Tx, P) error,
	del func(store.Tx, string, int64) error,
	list func(store.Tx) (int, error),
) crud {
	return crud{
		name:   name,
		create: func(tx store.Tx, _ fixture, i int) (string, error) { return create(tx, i) },
		get: func(tx store.Tx, id string) (int64, string, error) {
			v, err := get(tx, id)
			if err != nil {
				return 0, "", err
			}
			return v.GetMeta().Version, *desc(v), nil
		},
		update: func(tx store.Tx, id string, ver int64, d string) (int64, error) {
			v, err := get(tx, id)
			if err != nil {
				return 0, err
			}
			v.GetMeta().Version = ver
			*desc(v) = d
			err = update(tx, v)
			return v.GetMeta().Version, err
		},
		del:  del,
		list: list,
	}
}
