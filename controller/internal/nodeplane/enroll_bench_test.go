package nodeplane

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// BenchmarkEnroll measures enrollments per second end to end on each store: the Enroll RPC over real
// gRPC and TLS on loopback, consuming a join token, creating the node row with IPAM and an audit row, and
// having the embedded step-ca authority sign the certificate. Client keys and CSRs are made before the
// timer starts (on a real fleet every node makes its own). Four concurrent clients.
//
//	cd controller && go test -run '^$' -bench BenchmarkEnroll -benchtime 2000x ./internal/nodeplane/
func BenchmarkEnroll(b *testing.B) {
	stores := []struct {
		name string
		open func(b *testing.B) store.Store
	}{
		{"sqlite", func(b *testing.B) store.Store { return newSQLite(b) }},
		{"postgres", func(b *testing.B) store.Store {
			dsns := cluster.NewDatabase(b)
			return openPG(b, dsns.App, dsns.Owner)
		}},
	}
	for _, sc := range stores {
		b.Run(sc.name, func(b *testing.B) {
			st := sc.open(b)
			ten, cv := seed(b, st, domain.TenantSettings{})
			e := startEnv(b, st, newCA(b), ten, cv, fastEnroll)
			// One reusable token with exactly b.N uses: every enrollment still consumes a use atomically.
			secret := e.token(b, func(j *domain.JoinToken) { j.Reusable, j.MaxUses = true, int32(b.N) })
			reqs := make(chan *nodev1.EnrollRequest, b.N)
			for i := 0; i < b.N; i++ {
				wg := randWG(b)
				reqs <- e.enrollReq(b, secret, newKey(b), wg, fmt.Sprintf("bench-%d", i))
			}
			close(reqs)
			const clients = 4
			conns := make([]nodev1.EnrollmentServiceClient, clients)
			for i := range conns {
				conns[i] = nodev1.NewEnrollmentServiceClient(e.dial(b, nil))
			}
			errc := make(chan error, clients)
			b.ResetTimer()
			start := time.Now()
			for i := 0; i < clients; i++ {
				go func(c nodev1.EnrollmentServiceClient) {
					for r := range reqs {
						if _, err := c.Enroll(context.Background(), r); err != nil {
							errc <- err
							return
						}
					}
					errc <- nil
				}(conns[i])
			}
			for i := 0; i < clients; i++ {
				if err := <-errc; err != nil {
					b.Fatalf("enroll: %v", err)
				}
			}
			elapsed := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "enrollments/s")
		})
	}
}
