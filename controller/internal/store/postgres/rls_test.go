package postgres

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/internal/sqlcore"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/pgtest"
)

func openStore(t *testing.T) (*Store, pgtest.DSNs) {
	t.Helper()
	d := TestCluster.NewDatabase(t)
	s, err := Open(t.Context(), Config{DSN: d.App, MigrationDSN: d.Owner, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, d
}

// rlsTables are the tables under row-level security with their tenant column.
var rlsTables = map[string]string{
	"tenants": "id", "cvlans": "tenant_id", "nodes": "tenant_id", "users": "tenant_id",
	"groups_": "tenant_id", "tags": "tenant_id", "policies": "tenant_id",
	"relays": "tenant_id", "vrouters": "tenant_id", "discovery_servers": "tenant_id",
	"api_keys": "tenant_id", "join_tokens": "tenant_id", "sessions": "tenant_id",
	"audit_log": "tenant_id", "change_events": "tenant_id",
}

// systemTables belong to no tenant: under forced RLS, visible to the all-tenants scope only.
var systemTables = map[string]bool{"controller_replicas": true, "map_streams": true, "hole_punches": true}

// seedTenant creates a tenant with one row in every table.
func seedTenant(t *testing.T, s *Store, name string) string {
	t.Helper()
	ctx := t.Context()
	tn := &domain.Tenant{Name: name}
	if err := s.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx, tn) }); err != nil {
		t.Fatal(err)
	}
	err := s.Tx(ctx, store.TenantScope(tn.ID), func(tx store.Tx) error {
		cv := &domain.Cvlan{Name: "net"}
		u := &domain.User{Name: "u", Email: "u@x"}
		steps := []func() error{
			func() error { return tx.CreateCvlan(ctx, cv) },
			func() error { return tx.CreateNode(ctx, &domain.Node{Name: "n", CvlanID: cv.ID}) },
			func() error { return tx.CreateUser(ctx, u) },
			func() error { return tx.CreateGroup(ctx, &domain.Group{Name: "g"}) },
			func() error { return tx.CreateTag(ctx, &domain.Tag{Name: "t"}) },
			func() error { return tx.CreatePolicy(ctx, &domain.Policy{Name: "p"}) },
			func() error { return tx.CreateRelay(ctx, &domain.Relay{Name: "r"}) },
			func() error { return tx.CreateVRouter(ctx, &domain.VRouter{Name: "v"}) },
			func() error { return tx.CreateDiscoveryServer(ctx, &domain.DiscoveryServer{Name: "d", Type: "stun"}) },
			func() error { return tx.CreateAPIKey(ctx, &domain.APIKey{Name: "k", Hash: []byte("k" + name)}) },
			func() error {
				return tx.CreateJoinToken(ctx, &domain.JoinToken{Hash: []byte("j" + name), ExpireTime: time.Now().Add(time.Hour)})
			},
			func() error {
				return tx.CreateSession(ctx, &domain.Session{UserID: u.ID, Hash: []byte("s" + name), ExpireTime: time.Now().Add(time.Hour)})
			},
			func() error {
				return tx.AppendAudit(ctx, &domain.AuditEntry{ActorType: domain.ActorSystem, Action: "Seed", ResourceType: "tenant"})
			},
		}
		for _, st := range steps {
			if err := st(); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tn.ID
}

func tenantsIn(ctx context.Context, q sqlcore.Querier, table, col string) ([]string, error) {
	rows, err := q.Query(ctx, "SELECT DISTINCT "+col+" FROM "+table) // deliberately unfiltered
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out = append(out, id)
	}
	return out, rows.Err()
}

// TestRowLevelSecurity proves that a query without a tenant filter, run inside a tenant-scoped
// transaction, still sees only that tenant's rows, cannot write another tenant's rows, and that
// a connection that never set a scope sees nothing.
func TestRowLevelSecurity(t *testing.T) {
	s, dsns := openStore(t)
	ctx := t.Context()
	a, b := seedTenant(t, s, "a"), seedTenant(t, s, "b")

	// Every table holds both tenants' rows (the superuser bypasses RLS).
	super, err := pgx.Connect(ctx, dsns.Super)
	if err != nil {
		t.Fatal(err)
	}
	defer super.Close(ctx)
	for table, col := range rlsTables {
		var n int
		if err := super.QueryRow(ctx, "SELECT count(DISTINCT "+col+") FROM "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 2 {
			t.Fatalf("%s holds rows of %d tenants, want 2", table, n)
		}
	}

	for _, own := range []string{a, b} {
		err := s.Tx(ctx, store.TenantScope(own), func(tx store.Tx) error {
			raw := tx.(*sqlcore.Tx).Raw()
			for table, col := range rlsTables {
				got, err := tenantsIn(ctx, raw, table, col)
				if err != nil {
					return fmt.Errorf("%s: %w", table, err)
				}
				if !slices.Equal(got, []string{own}) {
					return fmt.Errorf("unfiltered SELECT on %s in tenant %s's transaction saw tenants %v", table, own, got)
				}
			}
			other := a
			if own == a {
				other = b
			}
			// Writes to the other tenant's rows touch nothing.
			n, err := raw.Exec(ctx, "UPDATE tags SET name = 'stolen' WHERE tenant_id = $1", other)
			if err != nil || n != 0 {
				return fmt.Errorf("cross-tenant UPDATE: %d rows, %v", n, err)
			}
			n, err = raw.Exec(ctx, "DELETE FROM nodes")
			if err != nil || n != 1 {
				return fmt.Errorf("unfiltered DELETE removed %d rows (want only own 1), %v", n, err)
			}
			return errRollback
		})
		if err != errRollback {
			t.Fatal(err)
		}
	}
	// Inserting a row for another tenant violates the policy's WITH CHECK.
	err = s.Tx(ctx, store.TenantScope(a), func(tx store.Tx) error {
		_, err := tx.(*sqlcore.Tx).Raw().Exec(ctx, `INSERT INTO tags (id, tenant_id, version, create_time, update_time, data, name)
			VALUES ('x', $1, 1, 0, 0, '{}', 'sneaky')`, b)
		return err
	})
	if err == nil || pgCode(err) != "42501" {
		t.Fatalf("cross-tenant INSERT: err = %v, want an RLS violation (42501)", err)
	}
	// Global and shared rows: tenants read them but raw writes touch nothing or are refused.
	var relayID string
	err = s.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		if err := tx.CreateRegion(ctx, &domain.Region{Name: "fra", Code: "eu"}); err != nil {
			return err
		}
		r := &domain.Relay{Name: "shared"}
		err := tx.CreateRelay(ctx, r)
		relayID = r.ID
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	err = s.Tx(ctx, store.TenantScope(a), func(tx store.Tx) error {
		raw := tx.(*sqlcore.Tx).Raw()
		got, err := tenantsIn(ctx, raw, "relays", "coalesce(tenant_id, 'shared')")
		if err != nil {
			return err
		}
		if !slices.Equal(got, []string{a, "shared"}) && !slices.Equal(got, []string{"shared", a}) {
			return fmt.Errorf("tenant a sees relays of %v", got)
		}
		if n, err := raw.Exec(ctx, "UPDATE relays SET name = 'mine' WHERE id = $1", relayID); err != nil || n != 0 {
			return fmt.Errorf("UPDATE of a shared relay: %d rows, %v", n, err)
		}
		if n, err := raw.Exec(ctx, "DELETE FROM regions"); err != nil || n != 0 {
			return fmt.Errorf("DELETE of regions: %d rows, %v", n, err)
		}
		return errRollback
	})
	if err != errRollback {
		t.Fatal(err)
	}
	// A connection of the application role that never set a scope sees no rows at all.
	app, err := pgx.Connect(ctx, dsns.App)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	for table := range rlsTables {
		var n int
		q := "SELECT count(*) FROM " + table
		if table == "relays" {
			q += " WHERE tenant_id IS NOT NULL" // shared relays are public
		}
		if err := app.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Fatalf("unscoped connection sees %d rows of %s", n, table)
		}
	}
	// Every table of the schema but goose's is under forced RLS, so a new table cannot be
	// forgotten silently.
	rows, err := super.Query(ctx, `SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity FROM pg_class c
		JOIN pg_namespace ns ON ns.oid = c.relnamespace WHERE ns.nspname = 'public' AND c.relkind = 'r'`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := 0
	for rows.Next() {
		var name string
		var rls, force bool
		if err := rows.Scan(&name, &rls, &force); err != nil {
			t.Fatal(err)
		}
		if name == "goose_db_version" {
			continue
		}
		if systemTables[name] { // the stream registry: only the all scope sees it
			if !rls || !force {
				t.Errorf("table %s: row security %v, forced %v", name, rls, force)
			}
			continue
		}
		if name == "regions" { // global: RLS lets every scope read and only the all scope write
			if !rls || !force {
				t.Errorf("table regions: row security %v, forced %v", rls, force)
			}
			continue
		}
		seen++
		if !rls || !force {
			t.Errorf("table %s: row security %v, forced %v", name, rls, force)
		}
		if _, ok := rlsTables[name]; !ok {
			t.Errorf("table %s is missing from this test's list", name)
		}
	}
	if seen != len(rlsTables) {
		t.Fatalf("%d tables, want %d", seen, len(rlsTables))
	}
}

var errRollback = fmt.Errorf("rollback")

// TestOwnerRoleStillIsolated: connected as the table owner (single-role deployments), RLS
// still applies because it is forced.
func TestOwnerRoleStillIsolated(t *testing.T) {
	d := TestCluster.NewDatabase(t)
	s, err := Open(t.Context(), Config{DSN: d.Owner, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := seedTenant(t, s, "a")
	seedTenant(t, s, "b")
	err = s.ReadTx(t.Context(), store.TenantScope(a), func(tx store.Tx) error {
		got, err := tenantsIn(t.Context(), tx.(*sqlcore.Tx).Raw(), "nodes", "tenant_id")
		if err == nil && !slices.Equal(got, []string{a}) {
			err = fmt.Errorf("owner's unfiltered SELECT saw %v", got)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestRebind(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"SELECT 1", "SELECT 1"},
		{"a = ? AND b = ?", "a = $1 AND b = $2"},
		{"(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"},
	} {
		if got := rebind(tt.in); got != tt.want {
			t.Errorf("rebind(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestMalformedTenantID(t *testing.T) {
	s, _ := openStore(t)
	err := s.ReadTx(t.Context(), store.TenantScope("x'; DROP TABLE nodes; --"), func(store.Tx) error { return nil })
	if !errors.Is(err, domain.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
}
