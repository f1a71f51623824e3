package storetest

import (
	"fmt"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// testSharedResources: regions are global and shared relays (no tenant) are readable by every
// tenant, while only the all-tenants scope changes them; a shared relay enrolls with a token and
// a node that belong to no tenant.
func testSharedResources(t *testing.T, h Harness) {
	s := h.New(t)
	a := newTenant(t, s, "shared-a", "")
	b := newTenant(t, s, "shared-b", "")
	c := t.Context()
	region := &domain.Region{Name: "frankfurt", Code: "eu-central"}
	shared := &domain.Relay{Name: "relay-fra", Addresses: []string{"127.0.0.1:8443"}}
	own := &domain.Relay{Name: "relay-own"}
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		if err := tx.CreateRegion(c, region); err != nil {
			return err
		}
		shared.RegionID = region.ID
		return tx.CreateRelay(c, shared)
	})
	must(t, s, a.scope, func(tx store.Tx) error { return tx.CreateRelay(c, own) })
	err := s.Tx(c, a.scope, func(tx store.Tx) error { return tx.CreateRegion(c, &domain.Region{Name: "x", Code: "x"}) })
	wantErr(t, err, domain.ErrPermissionDenied)
	// Each tenant reads the region and the shared relay; b does not see a's own relay.
	for _, tc := range []struct {
		f    fixture
		want int
	}{{a, 2}, {b, 1}} {
		must(t, s, tc.f.scope, func(tx store.Tx) error {
			if _, err := tx.GetRegion(c, region.ID); err != nil {
				return err
			}
			if _, err := tx.GetRelay(c, shared.ID); err != nil {
				return err
			}
			n, err := lenPage(tx.ListRelays(c, store.RelayFilter{}, store.ListOptions{}))
			if err == nil && n != tc.want {
				err = fmt.Errorf("tenant %s lists %d relays, want %d", tc.f.tenant.Name, n, tc.want)
			}
			return err
		})
	}
	must(t, s, b.scope, func(tx store.Tx) error {
		if _, err := tx.GetRelay(c, own.ID); err == nil {
			return fmt.Errorf("tenant b reads tenant a's relay")
		}
		n, err := lenPage(tx.ListRelays(c, store.RelayFilter{SharedOnly: true}, store.ListOptions{}))
		if err == nil && n != 1 {
			err = fmt.Errorf("%d shared relays", n)
		}
		return err
	})
	// Tenants cannot change shared rows.
	for _, fn := range []func(tx store.Tx) error{
		func(tx store.Tx) error {
			r, _ := tx.GetRelay(c, shared.ID)
			r.Description = "mine now"
			return tx.UpdateRelay(c, r)
		},
		func(tx store.Tx) error { return tx.DeleteRelay(c, shared.ID, 0) },
		func(tx store.Tx) error {
			r, _ := tx.GetRegion(c, region.ID)
			r.Description = "x"
			return tx.UpdateRegion(c, r)
		},
		func(tx store.Tx) error { return tx.DeleteRegion(c, region.ID, 0) },
	} {
		wantErr(t, s.Tx(c, a.scope, fn), domain.ErrPermissionDenied)
	}
	// The all-tenants scope changes them; the region code is immutable.
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		r, err := tx.GetRegion(c, region.ID)
		if err != nil {
			return err
		}
		r.Code = "changed"
		r.Description = "Frankfurt am Main"
		if err := tx.UpdateRegion(c, r); err != nil {
			return err
		}
		if r.Code != "eu-central" {
			return fmt.Errorf("region code changed to %s", r.Code)
		}
		rl, err := tx.GetRelay(c, shared.ID)
		if err != nil {
			return err
		}
		rl.Status = domain.RelayOnline
		rl.Stats.Drops = map[string]uint64{"queue_full": 3}
		return tx.UpdateRelay(c, rl)
	})
	// A shared relay enrolls with a tenant-less token and becomes a tenant-less node.
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		return tx.CreateJoinToken(c, &domain.JoinToken{Hash: []byte("relay-token"), Kind: domain.NodeKindRelay,
			TargetID: shared.ID, ExpireTime: time.Now().Add(time.Hour)})
	})
	var relayNode *domain.Node
	must(t, s, store.AllTenants(), func(tx store.Tx) error {
		tok, err := tx.ConsumeJoinToken(c, []byte("relay-token"), time.Now())
		if err != nil {
			return err
		}
		if tok.TenantID != "" || tok.TargetID != shared.ID {
			return fmt.Errorf("token = %+v", tok)
		}
		relayNode = &domain.Node{TenantID: tok.TenantID, Name: "relay-fra", Kind: domain.NodeKindRelay, LinkedResourceID: tok.TargetID}
		return tx.CreateNode(c, relayNode)
	})
	if relayNode.TenantID != "" || relayNode.IPv4Address.IsValid() {
		t.Fatalf("shared relay node = %+v", relayNode)
	}
	// Tenants see neither the token nor the node.
	must(t, s, a.scope, func(tx store.Tx) error {
		if _, err := tx.GetNode(c, relayNode.ID); err == nil {
			return fmt.Errorf("tenant reads the shared relay's node")
		}
		n, err := lenPage(tx.ListJoinTokens(c, store.JoinTokenFilter{IncludeRevoked: true}, store.ListOptions{}))
		if err == nil && n != 0 {
			err = fmt.Errorf("tenant lists %d tokens", n)
		}
		return err
	})
	// Only a shared relay's node may lack a tenant.
	err = s.Tx(c, store.AllTenants(), func(tx store.Tx) error { return tx.CreateNode(c, &domain.Node{Name: "orphan"}) })
	wantErr(t, err, domain.ErrInvalid)
	// Changes to global rows reach the feed with an empty tenant.
	ev, err := s.ChangesSince(c, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range ev {
		if e.ResourceType == domain.ResourceRegion && e.ResourceID == region.ID && e.TenantID == "" {
			found = true
		}
	}
	if !found {
		t.Fatal("no change event for the region")
	}
}
