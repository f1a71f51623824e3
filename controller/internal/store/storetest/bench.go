package storetest

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// report adds latency percentiles (microseconds) of ds to b's output.
func report(b *testing.B, ds []time.Duration) {
	if len(ds) == 0 {
		return
	}
	slices.Sort(ds)
	pct := func(p float64) float64 {
		return float64(ds[min(len(ds)-1, int(float64(len(ds))*p))].Microseconds())
	}
	b.ReportMetric(pct(0.50), "p50-µs")
	b.ReportMetric(pct(0.99), "p99-µs")
}

func benchTenant(b *testing.B, s store.Store) fixture {
	b.Helper()
	f := fixture{tenant: &domain.Tenant{Name: "bench"}, cvlan: &domain.Cvlan{Name: "net"}}
	c := b.Context()
	if err := s.Tx(c, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(c, f.tenant) }); err != nil {
		b.Fatal(err)
	}
	f.scope = store.TenantScope(f.tenant.ID)
	if err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateCvlan(c, f.cvlan) }); err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchCreateNode measures CreateNode, each in its own transaction with its address allocation
// and change event, from `parallel` goroutines (1: serial). It reports nodes/s and the
// transaction latency percentiles.
func BenchCreateNode(b *testing.B, s store.Store, parallel int) {
	f := benchTenant(b, s)
	c := b.Context()
	var seq atomic.Int64
	lat := make([][]time.Duration, parallel)
	start := time.Now()
	b.SetParallelism(1)
	next := make(chan struct{})
	done := make(chan struct{})
	for w := range parallel {
		go func() {
			defer func() { done <- struct{}{} }()
			for range next {
				n := &domain.Node{Name: fmt.Sprintf("n%d", seq.Add(1)), CvlanID: f.cvlan.ID, Tags: []string{"web"}}
				t0 := time.Now()
				if err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, n) }); err != nil {
					b.Error(err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	for b.Loop() {
		next <- struct{}{}
	}
	close(next)
	for range parallel {
		<-done
	}
	elapsed := time.Since(start)
	b.ReportMetric(float64(seq.Load())/elapsed.Seconds(), "nodes/s")
	report(b, slices.Concat(lat...))
}

// SeedNodes creates n nodes in f's cvlan with CreateNodes in batches (10% tagged "web") and
// returns how long it took.
func seedNodes(b *testing.B, s store.Store, f fixture, n int) time.Duration {
	c := b.Context()
	start := time.Now()
	const batch = 5000
	for done := 0; done < n; {
		k := min(batch, n-done)
		nodes := make([]*domain.Node, k)
		for i := range nodes {
			v := &domain.Node{Name: fmt.Sprintf("node-%06d", done+i), CvlanID: f.cvlan.ID,
				WireGuardPublicKey: fmt.Sprintf("key-%06d", done+i), Status: domain.NodeOnline}
			if (done+i)%10 == 0 {
				v.Tags = []string{"web"}
			}
			nodes[i] = v
		}
		if err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNodes(c, nodes) }); err != nil {
			b.Fatal(err)
		}
		done += k
	}
	return time.Since(start)
}

// BenchListNodes seeds total nodes in one tenant (reporting the seed time), then measures
// ListNodes of a page of 100 at random positions (keyset tokens collected beforehand), without
// and with the total count, and with a tag filter.
func BenchListNodes(b *testing.B, s store.Store, total int) {
	f := benchTenant(b, s)
	c := b.Context()
	seed := seedNodes(b, s, f, total)
	b.Logf("seeded %d nodes in %s (%.0f nodes/s)", total, seed.Round(time.Millisecond), float64(total)/seed.Seconds())
	tokens := []string{""}
	for tok := ""; ; {
		var p *store.Page[domain.Node]
		if err := s.ReadTx(c, f.scope, func(tx store.Tx) (err error) {
			p, err = tx.ListNodes(c, store.NodeFilter{}, store.ListOptions{PageSize: 100, PageToken: tok})
			return
		}); err != nil {
			b.Fatal(err)
		}
		if p.NextPageToken == "" {
			break
		}
		tok = p.NextPageToken
		tokens = append(tokens, tok)
	}
	if len(tokens) != (total+99)/100 {
		b.Fatalf("%d pages, want %d", len(tokens), (total+99)/100)
	}
	for _, bc := range []struct {
		name   string
		filter store.NodeFilter
		total  bool
		random bool
	}{
		{"page100", store.NodeFilter{}, false, true},
		{"page100+total", store.NodeFilter{}, true, true},
		{"page100-tag-filter", store.NodeFilter{Tag: "web"}, false, false},
	} {
		b.Run(bc.name, func(b *testing.B) {
			rng := rand.New(rand.NewPCG(1, 2))
			var lat []time.Duration
			for b.Loop() {
				tok := ""
				if bc.random {
					tok = tokens[rng.IntN(len(tokens))]
				}
				t0 := time.Now()
				err := s.ReadTx(c, f.scope, func(tx store.Tx) error {
					p, err := tx.ListNodes(c, bc.filter, store.ListOptions{PageSize: 100, PageToken: tok, WithTotal: bc.total})
					if err == nil && len(p.Items) == 0 {
						err = fmt.Errorf("empty page")
					}
					return err
				})
				if err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			report(b, lat)
			b.ReportMetric(seed.Seconds(), "seed-s")
		})
	}
}

// BenchStreamRegistry measures the stream registry (ADR 009) holding `streams` streams of two
// replicas: "storm" is one registration flush of 500 newly opened streams (a reconnect storm is
// streams/500 of them), "heartbeat" an idle replica's sync with nothing opened or closed.
func BenchStreamRegistry(b *testing.B, s store.Store, streams int) {
	c := b.Context()
	now := time.Now().UTC()
	var seq atomic.Int64
	batch := func(replica string, n int) []store.MapStream {
		out := make([]store.MapStream, n)
		for i := range out {
			id := fmt.Sprint("s", seq.Add(1))
			out[i] = store.MapStream{ID: id, NodeID: "node-" + id, SessionID: id, Addr: "192.0.2.1:41641", OpenTime: now}
		}
		return out
	}
	for i := 0; i < streams; i += 500 {
		replica := []string{"r1", "r2"}[i/500%2]
		if _, err := s.SyncMapStreams(c, store.StreamSync{ReplicaID: replica, Now: now, StaleBefore: now.Add(-time.Minute), Opened: batch(replica, 500)}); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("storm500", func(b *testing.B) {
		for b.Loop() {
			opened := batch("r1", 500)
			ids := make([]string, len(opened))
			for i, m := range opened {
				ids[i] = m.ID
			}
			if _, err := s.SyncMapStreams(c, store.StreamSync{ReplicaID: "r1", Now: now, StaleBefore: now.Add(-time.Minute), Opened: opened}); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if _, err := s.SyncMapStreams(c, store.StreamSync{ReplicaID: "r1", Now: now, StaleBefore: now.Add(-time.Minute), Closed: ids}); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
	b.Run("heartbeat", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.SyncMapStreams(c, store.StreamSync{ReplicaID: "r2", Now: now, StaleBefore: now.Add(-time.Minute)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
