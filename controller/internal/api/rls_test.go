package api

import (
	"context"
	"log/slog"
	"testing"

	"connectrpc.com/connect"
	"github.com/jackc/pgx/v5"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
)

// TestRowLevelSecurityCatchesForgottenFilter seeds two tenants through the API on PostgreSQL,
// then reads every table the handlers list the way a handler that forgot its tenant filter
// would (no WHERE clause), in a transaction scoped to one tenant as the store sets it up, as the
// application role. Row-level security must return only that tenant's rows (and global ones).
func TestRowLevelSecurityCatchesForgottenFilter(t *testing.T) {
	ctx := context.Background()
	d := pgCluster.NewDatabase(t)
	st, err := postgres.Open(ctx, postgres.Config{DSN: d.App, MigrationDSN: d.Owner, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e := newEnvWith(t, st, nil, noLimit)
	rg, err := e.clients(e.admin, false).region.CreateRegion(ctx, connect.NewRequest(&v1.CreateRegionRequest{Region: &v1.Region{Name: "frankfurt", Code: "eu-central"}}))
	if err != nil {
		t.Fatal(err)
	}
	tids := map[string]string{}
	for _, name := range []string{"red", "blue"} {
		tids[name] = e.newTenant(t, name)
		seedTenant(t, e.clients(e.keyFor(t, tids[name], domain.RoleTenantAdmin), false), rg.Msg.GetRegion().GetId())
	}
	conn, err := pgx.Connect(ctx, d.App)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(ctx) })
	tables := map[string]string{
		"tenants": "id", "cvlans": "tenant_id", "nodes": "tenant_id", "users": "tenant_id",
		"groups_": "tenant_id", "tags": "tenant_id", "policies": "tenant_id", "relays": "tenant_id",
		"vrouters": "tenant_id", "discovery_servers": "tenant_id", "api_keys": "tenant_id",
		"join_tokens": "tenant_id", "audit_log": "tenant_id",
	}
	for name, tid := range tids {
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, "SELECT set_config('cloudvlan.tenant_id', $1, true), set_config('cloudvlan.all_tenants', 'off', true)", tid); err != nil {
			t.Fatal(err)
		}
		for table, col := range tables {
			rows, err := tx.Query(ctx, "SELECT coalesce("+col+"::text, '') FROM "+table)
			if err != nil {
				t.Fatalf("%s: %v", table, err)
			}
			n := 0
			for rows.Next() {
				var got string
				if err := rows.Scan(&got); err != nil {
					t.Fatal(err)
				}
				n++
				if got != tid && got != "" {
					t.Errorf("tenant %s reads a %s row of tenant %s without a filter", name, table, got)
				}
			}
			rows.Close()
			if n == 0 {
				t.Errorf("tenant %s sees no %s rows at all: the seed did not reach the table", name, table)
			}
		}
		_ = tx.Rollback(ctx)
	}
}
