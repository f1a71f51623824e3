package sqlite_test

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/sqlite"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func open(t testing.TB, path string) *sqlite.Store {
	t.Helper()
	s, err := sqlite.Open(t.Context(), sqlite.Config{Path: path, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func TestConformance(t *testing.T) {
	paths := map[store.Store]string{}
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) store.Store {
			p := filepath.Join(t.TempDir(), "cloudvlan.db")
			s := open(t, p)
			paths[s] = p
			return s
		},
		Twin: func(t *testing.T, s store.Store) store.Store { return open(t, paths[s]) },
	})
}

func TestReopenKeepsData(t *testing.T) {
	p := filepath.Join(t.TempDir(), "cloudvlan.db")
	s, err := sqlite.Open(t.Context(), sqlite.Config{Path: p, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	// Opening runs the migrations once; a second open finds them applied.
	s.Close()
	open(t, p)
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("database file mode = %v, want 0600", st.Mode().Perm())
	}
}
