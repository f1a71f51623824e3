package pgtest

import (
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

var cluster *Cluster

func TestMain(m *testing.M) { os.Exit(Main(m, &cluster)) }

func TestRoles(t *testing.T) {
	dsns := cluster.NewDatabase(t)
	tests := []struct {
		dsn, role string
		super     bool
	}{
		{dsns.Owner, OwnerRole, false},
		{dsns.App, AppRole, false},
		{dsns.Super, superRole, true},
	}
	for _, tt := range tests {
		t.Run(tt.role, func(t *testing.T) {
			conn, err := pgx.Connect(t.Context(), tt.dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close(t.Context())
			var user, db string
			var super, bypass bool
			err = conn.QueryRow(t.Context(), `SELECT current_user, current_database(), rolsuper, rolbypassrls
				FROM pg_roles WHERE rolname = current_user`).Scan(&user, &db, &super, &bypass)
			if err != nil {
				t.Fatal(err)
			}
			if user != tt.role || db != dsns.Database || super != tt.super || bypass != tt.super {
				t.Fatalf("connected as %s to %s (super %v, bypassrls %v)", user, db, super, bypass)
			}
		})
	}
	// Databases are independent: a table in one is not in another.
	other := cluster.NewDatabase(t)
	c1, err := pgx.Connect(t.Context(), dsns.Owner)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close(t.Context())
	if _, err := c1.Exec(t.Context(), "CREATE TABLE x (a int)"); err != nil {
		t.Fatal(err)
	}
	c2, err := pgx.Connect(t.Context(), other.Owner)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close(t.Context())
	if _, err := c2.Exec(t.Context(), "SELECT * FROM x"); err == nil {
		t.Fatal("table visible in another database")
	}
}
