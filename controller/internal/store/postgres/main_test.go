package postgres

import (
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/controller/internal/store/pgtest"
)

// TestCluster is the package's throw-away PostgreSQL cluster (exported for the external tests).
var TestCluster *pgtest.Cluster

func TestMain(m *testing.M) {
	code := pgtest.Main(m, &TestCluster)
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goleak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}
