package storetest

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// filterPageSize is small so that a filter applied after paging (not in the query) shows as a
// short page or a wrong total.
const filterPageSize = 2

// pagedNames lists every page of a filtered List with filterPageSize and checks that each page
// but the last is full, that the last is not empty (unless nothing matches) and that TotalSize
// counts the matches. It returns the names of the items in list order.
func pagedNames[T any](t *testing.T, s store.Store, scope store.Scope, what string,
	list func(store.Tx, store.ListOptions) (*store.Page[T], error), name func(*T) string,
) []string {
	t.Helper()
	var (
		names []string
		sizes []int
		total = -1
	)
	tok := ""
	for range 100 {
		var p *store.Page[T]
		if err := s.ReadTx(ctx(t), scope, func(tx store.Tx) (err error) {
			p, err = list(tx, store.ListOptions{PageSize: filterPageSize, PageToken: tok, WithTotal: true})
			return err
		}); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if total >= 0 && p.TotalSize != total {
			t.Fatalf("%s: total_size changed between pages: %d then %d", what, total, p.TotalSize)
		}
		total = p.TotalSize
		sizes = append(sizes, len(p.Items))
		for _, v := range p.Items {
			names = append(names, name(v))
		}
		if p.NextPageToken == "" {
			break
		}
		tok = p.NextPageToken
	}
	for i, n := range sizes {
		last := i == len(sizes)-1
		if (!last && n != filterPageSize) || (last && n == 0 && len(names) > 0) {
			t.Fatalf("%s: page sizes %v: a page other than the last is short (filter applied after paging?)", what, sizes)
		}
	}
	if total != len(names) {
		t.Fatalf("%s: total_size %d, listed %d (%v)", what, total, len(names), names)
	}
	return names
}

func wantNames(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	g := slices.Clone(got)
	slices.Sort(g)
	slices.Sort(want)
	if !slices.Equal(g, want) {
		t.Fatalf("%s: got %v, want %v", what, got, want)
	}
}

// every returns the names of format with i in [0, 20) where keep(i).
func every(format string, keep func(int) bool) []string {
	var out []string
	for i := range 20 {
		if keep(i) {
			out = append(out, fmt.Sprintf(format, i))
		}
	}
	return out
}

func mod4(r ...int) func(int) bool {
	return func(i int) bool { return slices.Contains(r, i%4) }
}

// testListFilters proves that the List filters the API exposes are applied in the query: 20 rows
// of which some match, interleaved in list order, listed two per page.
func testListFilters(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "filters", "")
	c := t.Context()
	now := time.Now()

	t.Run("APIKeys", func(t *testing.T) {
		// i%4: 0 active by alice, 1 revoked (half of them also past expiry), 2 expired, 3 active
		// by bob without expiry.
		must(t, s, f.scope, func(tx store.Tx) error {
			for i := range 20 {
				k := &domain.APIKey{Name: fmt.Sprintf("k%02d", i), Hash: []byte(fmt.Sprintf("hash-%d", i)),
					Role: domain.RoleViewer, CreatedBy: "bob", ExpireTime: now.Add(time.Hour)}
				switch i % 4 {
				case 0:
					k.CreatedBy = "alice"
				case 1:
					k.Revoked = true
					if i%8 == 1 {
						k.ExpireTime = now.Add(-time.Hour)
					}
				case 2:
					k.ExpireTime = now.Add(-time.Hour)
				case 3:
					k.ExpireTime = time.Time{}
				}
				if err := tx.CreateAPIKey(c, k); err != nil {
					return err
				}
			}
			return nil
		})
		for _, tt := range []struct {
			f    store.APIKeyFilter
			want []string
		}{
			{store.APIKeyFilter{Status: store.CredentialActive}, every("k%02d", mod4(0, 3))},
			{store.APIKeyFilter{Status: store.CredentialExpired}, every("k%02d", mod4(2))},
			{store.APIKeyFilter{Status: store.CredentialRevoked}, every("k%02d", mod4(1))},
			{store.APIKeyFilter{Status: store.CredentialUsed}, nil},
			{store.APIKeyFilter{CreatedBy: "alice", IncludeRevoked: true}, every("k%02d", mod4(0))},
			{store.APIKeyFilter{CreatedBy: "bob", Status: store.CredentialActive}, every("k%02d", mod4(3))},
			{store.APIKeyFilter{}, every("k%02d", mod4(0, 2, 3))},
		} {
			what := fmt.Sprintf("api keys %+v", tt.f)
			tt.f.Now = now
			got := pagedNames(t, s, f.scope, what, func(tx store.Tx, o store.ListOptions) (*store.Page[domain.APIKey], error) {
				return tx.ListAPIKeys(c, tt.f, o)
			}, func(k *domain.APIKey) string { return k.Name })
			wantNames(t, what, got, tt.want...)
		}
		err := s.ReadTx(c, f.scope, func(tx store.Tx) error {
			_, err := tx.ListAPIKeys(c, store.APIKeyFilter{Status: store.CredentialActive}, store.ListOptions{})
			return err
		})
		wantErr(t, err, domain.ErrInvalid) // a status filter without the time
	})

	t.Run("JoinTokens", func(t *testing.T) {
		// i%4: 0 active (some reusable with uses left, one without expiry) targeting relay-x,
		// 1 revoked, 2 used up, 3 expired.
		must(t, s, f.scope, func(tx store.Tx) error {
			for i := range 20 {
				j := &domain.JoinToken{Name: fmt.Sprintf("j%02d", i), Hash: []byte(fmt.Sprintf("tok-%d", i)),
					ExpireTime: now.Add(time.Hour)}
				switch {
				case i == 4:
					j.Reusable, j.MaxUses = true, 2
				case i == 8:
					j.Reusable = true
				case i == 12:
					j.ExpireTime = time.Time{}
				case i == 6:
					j.Reusable, j.MaxUses = true, 1
				case i%4 == 1:
					j.Revoked = true
				case i%4 == 3:
					j.ExpireTime = now.Add(-time.Hour)
				}
				if i%4 == 0 {
					j.Kind, j.TargetID = domain.NodeKindRelay, "relay-x"
				}
				if err := tx.CreateJoinToken(c, j); err != nil {
					return err
				}
				if i%4 == 2 || i == 4 || i == 8 {
					if _, err := tx.ConsumeJoinToken(c, j.Hash, now); err != nil {
						return err
					}
				}
			}
			return nil
		})
		for _, tt := range []struct {
			f    store.JoinTokenFilter
			want []string
		}{
			{store.JoinTokenFilter{Status: store.CredentialActive}, every("j%02d", mod4(0))},
			{store.JoinTokenFilter{Status: store.CredentialRevoked}, every("j%02d", mod4(1))},
			{store.JoinTokenFilter{Status: store.CredentialUsed}, every("j%02d", mod4(2))},
			{store.JoinTokenFilter{Status: store.CredentialExpired}, every("j%02d", mod4(3))},
			{store.JoinTokenFilter{TargetID: "relay-x", IncludeRevoked: true}, every("j%02d", mod4(0))},
			{store.JoinTokenFilter{TargetID: "relay-x", Status: store.CredentialExpired}, nil},
			{store.JoinTokenFilter{}, every("j%02d", mod4(0, 2, 3))},
		} {
			what := fmt.Sprintf("join tokens %+v", tt.f)
			tt.f.Now = now
			got := pagedNames(t, s, f.scope, what, func(tx store.Tx, o store.ListOptions) (*store.Page[domain.JoinToken], error) {
				return tx.ListJoinTokens(c, tt.f, o)
			}, func(j *domain.JoinToken) string { return j.Name })
			wantNames(t, what, got, tt.want...)
		}
	})

	t.Run("Relays", func(t *testing.T) {
		// Odd i shared; i%4: 0 own online, 2 own offline; shared ones online or pending.
		for i := range 20 {
			r := &domain.Relay{Name: fmt.Sprintf("r%02d", i), Status: domain.RelayPending}
			scope := f.scope
			switch i % 4 {
			case 0:
				r.Status = domain.RelayOnline
			case 1:
				r.Status = domain.RelayOnline
				scope = store.AllTenants()
			case 2:
				r.Status = domain.RelayOffline
			case 3:
				scope = store.AllTenants()
			}
			must(t, s, scope, func(tx store.Tx) error { return tx.CreateRelay(c, r) })
		}
		for _, tt := range []struct {
			f    store.RelayFilter
			want []string
		}{
			{store.RelayFilter{Status: domain.RelayOffline}, every("r%02d", mod4(2))},
			{store.RelayFilter{Status: domain.RelayOnline}, every("r%02d", mod4(0, 1))},
			{store.RelayFilter{OwnOnly: true}, every("r%02d", mod4(0, 2))},
			{store.RelayFilter{SharedOnly: true}, every("r%02d", mod4(1, 3))},
			{store.RelayFilter{OwnOnly: true, Status: domain.RelayOnline}, every("r%02d", mod4(0))},
		} {
			what := fmt.Sprintf("relays %+v", tt.f)
			got := pagedNames(t, s, f.scope, what, func(tx store.Tx, o store.ListOptions) (*store.Page[domain.Relay], error) {
				return tx.ListRelays(c, tt.f, o)
			}, func(r *domain.Relay) string { return r.Name })
			wantNames(t, what, got, tt.want...)
		}
	})

	t.Run("RegionsTagsVRoutersAudit", func(t *testing.T) {
		must(t, s, store.AllTenants(), func(tx store.Tx) error {
			for i := range 20 {
				if err := tx.CreateRegion(c, &domain.Region{Name: fmt.Sprintf("g%02d", i), Code: fmt.Sprintf("c%02d", 19-i)}); err != nil {
					return err
				}
			}
			return nil
		})
		got := pagedNames(t, s, f.scope, "regions by code", func(tx store.Tx, o store.ListOptions) (*store.Page[domain.Region], error) {
			return tx.ListRegions(c, store.RegionFilter{Code: "c04"}, o)
		}, func(r *domain.Region) string { return r.Name })
		wantNames(t, "regions by code", got, "g15")

		must(t, s, f.scope, func(tx store.Tx) error {
			for i := range 20 {
				tg := &domain.Tag{Name: fmt.Sprintf("t%02d", i), OwnerGroupIDs: []string{"other"}}
				if i%4 == 0 {
					tg.OwnerGroupIDs = append(tg.OwnerGroupIDs, "owners")
				}
				if err := tx.CreateTag(c, tg); err != nil {
					return err
				}
				v := &domain.VRouter{Name: fmt.Sprintf("v%02d", i), CvlanID: f.cvlan.ID, Status: domain.VRouterPending}
				if i%4 == 0 {
					v.Status = domain.VRouterOnline
				}
				if err := tx.CreateVRouter(c, v); err != nil {
					return err
				}
				action := "user.update"
				switch i % 4 {
				case 0:
					action = "node.create"
				case 1:
					action = "nodes.update" // starts with "node" but not "node."
				}
				if err := tx.AppendAudit(c, &domain.AuditEntry{ActorType: domain.ActorUser, ActorID: "a",
					Action: action, ResourceType: "node", ResourceID: fmt.Sprintf("x%02d", i)}); err != nil {
					return err
				}
			}
			return nil
		})
		got = pagedNames(t, s, f.scope, "tags by owner", func(tx store.Tx, o store.ListOptions) (*store.Page[domain.Tag], error) {
			return tx.ListTags(c, store.TagFilter{OwnerGroupID: "owners"}, o)
		}, func(v *domain.Tag) string { return v.Name })
		wantNames(t, "tags by owner", got, every("t%02d", mod4(0))...)
		got = pagedNames(t, s, f.scope, "vrouters by status", func(tx store.Tx, o store.ListOptions) (*store.Page[domain.VRouter], error) {
			return tx.ListVRouters(c, store.VRouterFilter{Status: domain.VRouterOnline}, o)
		}, func(v *domain.VRouter) string { return v.Name })
		wantNames(t, "vrouters by status", got, every("v%02d", mod4(0))...)
		got = pagedNames(t, s, f.scope, "audit by action prefix", func(tx store.Tx, o store.ListOptions) (*store.Page[domain.AuditEntry], error) {
			return tx.ListAudit(c, store.AuditFilter{ActionPrefix: "node."}, o)
		}, func(e *domain.AuditEntry) string { return e.ResourceID })
		wantNames(t, "audit by action prefix", got, every("x%02d", mod4(0))...)
		// One entry by id (GetAuditLog), not readable from another tenant.
		var id string
		must(t, s, f.scope, func(tx store.Tx) error {
			all, err := tx.ListAudit(c, store.AuditFilter{}, store.ListOptions{PageSize: 20})
			if err != nil {
				return err
			}
			id = all.Items[7].ID
			one, err := tx.ListAudit(c, store.AuditFilter{ID: id}, store.ListOptions{PageSize: 1, WithTotal: true})
			if err == nil && (len(one.Items) != 1 || one.Items[0].ID != id || one.TotalSize != 1) {
				err = fmt.Errorf("audit by id: %+v, want %s", one, id)
			}
			return err
		})
		other := newTenant(t, s, "other", "")
		must(t, s, other.scope, func(tx store.Tx) error {
			none, err := tx.ListAudit(c, store.AuditFilter{ID: id}, store.ListOptions{})
			if err == nil && len(none.Items) != 0 {
				err = fmt.Errorf("another tenant reads audit entry %s", id)
			}
			return err
		})
	})
}
