package postgres_test

import (
	"log/slog"
	"testing"

	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/pgtest"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/storetest"
)

func open(t testing.TB, dsns pgtest.DSNs) *postgres.Store {
	t.Helper()
	s, err := postgres.Open(t.Context(), postgres.Config{DSN: dsns.App, MigrationDSN: dsns.Owner, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	dbs := map[store.Store]pgtest.DSNs{}
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) store.Store {
			d := postgres.TestCluster.NewDatabase(t)
			s := open(t, d)
			dbs[s] = d
			return s
		},
		Twin:              func(t *testing.T, s store.Store) store.Store { return open(t, dbs[s]) },
		CrossProcessWatch: true,
	})
}
