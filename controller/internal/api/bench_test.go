package api

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// benchNodes is the tenant size of BenchmarkAPIScale (CVLAN_BENCH_NODES overrides 100,000).
func benchNodes() int {
	if n, err := strconv.Atoi(os.Getenv("CVLAN_BENCH_NODES")); err == nil && n > 0 {
		return n
	}
	return 100_000
}

// BenchmarkAPIScale measures, per store, with one tenant holding benchNodes() nodes:
//   - fill: store-level CreateNode with IPAM (1,000 nodes per transaction), nodes/s;
//   - CreateStaticPeer through the API (Connect over in-memory TLS HTTP/2, 8 concurrent
//     clients, 2,000 calls): one node with IPAM, its WireGuard key pair, its audit row and the
//     rendered wg-quick config per call, nodes/s;
//   - ListNodes through the API, page_size 100 (with total_size): 400 calls at random name
//     prefixes followed by their next page token, and 100 consecutive unfiltered pages (whose
//     total_size counts all nodes): p50 and p99 latency of each.
//
// Run: cd controller && go test -run '^$' -bench BenchmarkAPIScale -benchtime 1x -timeout 60m ./internal/api/
func BenchmarkAPIScale(b *testing.B) {
	for _, kind := range storeKinds {
		b.Run(kind, func(b *testing.B) {
			for range b.N {
				benchScale(b, kind)
			}
		})
	}
}

func benchScale(b *testing.B, kind string) {
	ctx := context.Background()
	e := newEnv(b, kind, noLimit)
	tid := e.newTenant(b, "bench")
	c := e.clients(e.keyFor(b, tid, domain.RoleTenantAdmin), false)
	cv, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "big"}}))
	if err != nil {
		b.Fatal(err)
	}
	cvID := cv.Msg.GetCvlan().GetId()

	// Fill the tenant through the store (the API has no bulk create: nodes come from enrollment).
	total := benchNodes()
	start := time.Now()
	const batch = 1000
	for i := 0; i < total; i += batch {
		err := e.st.Tx(ctx, store.TenantScope(tid), func(tx store.Tx) error {
			for j := i; j < min(i+batch, total); j++ {
				n := &domain.Node{
					TenantID: tid, CvlanID: cvID, Name: fmt.Sprintf("n%07d", j), Kind: domain.NodeKindNode,
					WireGuardPublicKey: fmt.Sprintf("%043dA=", j), Status: domain.NodeOffline,
				}
				if err := tx.CreateNode(ctx, n); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatalf("fill at %d: %v", i, err)
		}
	}
	fill := time.Since(start)

	// CreateStaticPeer through the API.
	const creates, workers = 2000, 8
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	start = time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > creates {
					return
				}
				_, err := c.node.CreateStaticPeer(ctx, connect.NewRequest(&v1.CreateStaticPeerRequest{CvlanId: cvID, Name: fmt.Sprintf("sp%05d", i)}))
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
	createDur := time.Since(start)

	// ListNodes latency: random pages reached by name prefix, then the next page by token.
	var lat []time.Duration
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		prefix := fmt.Sprintf("n%04d", rng.IntN(max(total/1000, 1)))
		tok := ""
		for range 2 {
			t0 := time.Now()
			r, err := c.node.ListNodes(ctx, connect.NewRequest(&v1.ListNodesRequest{PageSize: 100, PageToken: tok, NamePrefix: prefix}))
			lat = append(lat, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			if len(r.Msg.GetNodes()) == 0 {
				b.Fatalf("empty page for prefix %s", prefix)
			}
			tok = r.Msg.GetNextPageToken()
		}
	}
	// And pages of the whole tenant, unfiltered: total_size then counts every node, which
	// dominates their latency.
	var full []time.Duration
	tok := ""
	for range 100 {
		t0 := time.Now()
		r, err := c.node.ListNodes(ctx, connect.NewRequest(&v1.ListNodesRequest{PageSize: 100, PageToken: tok}))
		full = append(full, time.Since(t0))
		if err != nil || int(r.Msg.GetTotalSize()) != total+creates {
			b.Fatalf("list: %v total %d", err, r.Msg.GetTotalSize())
		}
		tok = r.Msg.GetNextPageToken()
	}
	slices.Sort(lat)
	slices.Sort(full)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	f50, f99 := full[len(full)/2], full[len(full)*99/100]
	fillRate := float64(total) / fill.Seconds()
	createRate := float64(creates) / createDur.Seconds()
	b.ReportMetric(fillRate, "store-nodes/s")
	b.ReportMetric(createRate, "api-staticpeers/s")
	b.ReportMetric(float64(p50.Microseconds()), "list-p50-us")
	b.ReportMetric(float64(p99.Microseconds()), "list-p99-us")
	b.ReportMetric(float64(f50.Microseconds()), "listall-p50-us")
	b.ReportMetric(float64(f99.Microseconds()), "listall-p99-us")
	fmt.Printf("bench-api %s: %d nodes in one tenant; store CreateNode+IPAM %.0f nodes/s (batches of %d); "+
		"API CreateStaticPeer %.0f nodes/s (%d calls, %d clients, Connect over in-memory TLS HTTP/2); "+
		"API ListNodes page 100 (name-prefix pages) p50 %v p99 %v (%d calls); unfiltered pages with total_size over all nodes p50 %v p99 %v (%d calls)\n",
		kind, total, fillRate, batch, createRate, creates, workers, p50.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), len(lat),
		f50.Round(10*time.Microsecond), f99.Round(10*time.Microsecond), len(full))
}
