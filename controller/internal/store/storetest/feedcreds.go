package storetest

import (
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// testChangeFeedCredentials proves that users, API keys and join tokens are in the change feed
// (create, update, delete, with their tenant; a shared-relay token has none), while the
// bookkeeping writes of authentication and enrollment (TouchAPIKey, ConsumeJoinToken) are not.
func testChangeFeedCredentials(t *testing.T, h Harness) {
	s := h.New(t)
	c := t.Context()
	f := newTenant(t, s, "creds", "")
	head, err := s.ChangesSince(c, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	last := head[len(head)-1].ID
	now := time.Now()
	u := &domain.User{Name: "u", Email: "u@x"}
	k := &domain.APIKey{Name: "k", Hash: []byte("key-hash"), Role: domain.RoleViewer}
	j := &domain.JoinToken{Hash: []byte("tok-hash"), Reusable: true, ExpireTime: now.Add(time.Hour)}
	shared := &domain.JoinToken{Hash: []byte("shared-hash"), Kind: domain.NodeKindRelay, ExpireTime: now.Add(time.Hour)}
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.CreateUser(c, u); err != nil {
			return err
		}
		if err := tx.CreateAPIKey(c, k); err != nil {
			return err
		}
		return tx.CreateJoinToken(c, j)
	})
	must(t, s, store.AllTenants(), func(tx store.Tx) error { return tx.CreateJoinToken(c, shared) })
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.TouchAPIKey(c, k.ID, now); err != nil {
			return err
		}
		_, err := tx.ConsumeJoinToken(c, j.Hash, now)
		return err
	})
	must(t, s, f.scope, func(tx store.Tx) error {
		u.DisplayName, k.Description, j.Revoked = "U", "d", true
		if err := tx.UpdateUser(c, u); err != nil {
			return err
		}
		if err := tx.UpdateAPIKey(c, k); err != nil {
			return err
		}
		return tx.UpdateJoinToken(c, j)
	})
	must(t, s, f.scope, func(tx store.Tx) error {
		if err := tx.DeleteUser(c, u.ID, 0); err != nil {
			return err
		}
		if err := tx.DeleteAPIKey(c, k.ID, 0); err != nil {
			return err
		}
		return tx.DeleteJoinToken(c, j.ID, 0)
	})
	got, err := s.ChangesSince(c, last, 100)
	if err != nil {
		t.Fatal(err)
	}
	type ev struct {
		tenant, kind, id string
		op               domain.ChangeOp
		version          int64
	}
	tid := f.tenant.ID
	want := []ev{
		{tid, domain.ResourceUser, u.ID, domain.OpCreate, 1},
		{tid, domain.ResourceAPIKey, k.ID, domain.OpCreate, 1},
		{tid, domain.ResourceJoinToken, j.ID, domain.OpCreate, 1},
		{"", domain.ResourceJoinToken, shared.ID, domain.OpCreate, 1},
		{tid, domain.ResourceUser, u.ID, domain.OpUpdate, 2},
		{tid, domain.ResourceAPIKey, k.ID, domain.OpUpdate, 2},
		{tid, domain.ResourceJoinToken, j.ID, domain.OpUpdate, 2},
		{tid, domain.ResourceUser, u.ID, domain.OpDelete, 0},
		{tid, domain.ResourceAPIKey, k.ID, domain.OpDelete, 0},
		{tid, domain.ResourceJoinToken, j.ID, domain.OpDelete, 0},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d events %+v, want %d", len(got), got, len(want))
	}
	for i, g := range got {
		if w := (ev{g.TenantID, g.ResourceType, g.ResourceID, g.Op, g.Version}); w != want[i] {
			t.Fatalf("event %d = %+v, want %+v", i, w, want[i])
		}
	}
}
