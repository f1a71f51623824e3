package api

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/controller/internal/store/pgtest"
)

// pgCluster is the package's throw-away PostgreSQL cluster: store-backed tests run against
// SQLite and PostgreSQL.
var pgCluster *pgtest.Cluster

func TestMain(m *testing.M) {
	code := pgtest.Main(m, &pgCluster)
	if code == 0 {
		// The event hub's follower and the test servers must all be gone.
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
