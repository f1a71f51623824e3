package storetest

import (
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func testCreateNodesBulk(t *testing.T, h Harness) {
	s := h.New(t)
	f := newTenant(t, s, "bulk", "10.3.0.0/27") // 30 usable: .1 to .30
	c := t.Context()
	// Reserve .5 explicitly so the bulk allocation has to skip it.
	r := f.node("reserved")
	r.IPv4Address = netip.MustParseAddr("10.3.0.5")
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNode(c, r) })
	var batch []*domain.Node
	for i := range 20 {
		batch = append(batch, f.node(fmt.Sprintf("b%02d", i)))
	}
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNodes(c, batch) })
	seen := map[netip.Addr]bool{r.IPv4Address: true}
	for _, n := range batch {
		if seen[n.IPv4Address] || !n.IPv4Address.IsValid() || n.ID == "" {
			t.Fatalf("bad allocation %s for %s", n.IPv4Address, n.Name)
		}
		seen[n.IPv4Address] = true
	}
	if batch[0].IPv4Address.String() != "10.3.0.1" || batch[19].IPv4Address.String() != "10.3.0.21" {
		t.Fatalf("batch got %s..%s, want 10.3.0.1..10.3.0.21 skipping .5", batch[0].IPv4Address, batch[19].IPv4Address)
	}
	// 9 addresses are left: a batch of 10 fails as a whole.
	var big []*domain.Node
	for i := range 10 {
		big = append(big, f.node(fmt.Sprintf("big%d", i)))
	}
	err := s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNodes(c, big) })
	wantErr(t, err, domain.ErrExhausted)
	must(t, s, f.scope, func(tx store.Tx) error {
		n, err := lenPage(tx.ListNodes(c, store.NodeFilter{NamePrefix: "big"}, store.ListOptions{}))
		if err == nil && n != 0 {
			err = fmt.Errorf("%d nodes of a failed batch exist", n)
		}
		return err
	})
	must(t, s, f.scope, func(tx store.Tx) error { return tx.CreateNodes(c, big[:9]) })
	// An explicit address and automatic ones in one batch do not collide.
	f2 := newTenant(t, s, "bulk2", "10.4.0.0/29")
	mixed := []*domain.Node{f2.node("m0"), f2.node("m1"), f2.node("m2")}
	mixed[2].IPv4Address = netip.MustParseAddr("10.4.0.2")
	must(t, s, f2.scope, func(tx store.Tx) error { return tx.CreateNodes(c, mixed) })
	if got := []string{mixed[0].IPv4Address.String(), mixed[1].IPv4Address.String()}; got[0] != "10.4.0.1" || got[1] != "10.4.0.3" {
		t.Fatalf("mixed batch got %v, want .1 and .3 around the explicit .2", got)
	}
	// A taken name fails the whole batch.
	must(t, s, f.scope, func(tx store.Tx) error { return tx.DeleteNode(c, batch[0].ID, 0) })
	err = s.Tx(c, f.scope, func(tx store.Tx) error { return tx.CreateNodes(c, []*domain.Node{f.node("b01")}) })
	wantErr(t, err, domain.ErrAlreadyExists)
}

// testChangeFeedConcurrent: while writers on (up to) two Store instances commit concurrently, a
// reader that polls ChangesSince(last) never skips an id: ids become visible in id order.
func testChangeFeedConcurrent(t *testing.T, h Harness) {
	s := h.New(t)
	stores := []store.Store{s}
	if h.Twin != nil {
		stores = append(stores, h.Twin(t, s))
	}
	f := newTenant(t, s, "feedrace", "")
	c := t.Context()
	base, err := s.ChangesSince(c, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var last int64
	if len(base) > 0 {
		last = base[len(base)-1].ID
	}
	start := last
	const writers, each = 4, 15
	var wg sync.WaitGroup
	for w := range writers {
		st := stores[w%len(stores)]
		wg.Go(func() {
			for i := range each {
				err := st.Tx(c, f.scope, func(tx store.Tx) error {
					return tx.CreateTag(c, &domain.Tag{Name: fmt.Sprintf("w%d-%d", w, i)})
				})
				if err != nil {
					t.Errorf("write: %v", err)
					return
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	seen := map[int64]bool{}
	read := func() {
		evs, err := s.ChangesSince(c, last, 1000)
		if err != nil {
			t.Errorf("read: %v", err)
			return
		}
		for _, e := range evs {
			if e.ID <= last {
				t.Errorf("id %d after %d", e.ID, last)
			}
			seen[e.ID] = true
			last = e.ID
		}
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
		}
		read()
	}
	read()
	all, err := s.ChangesSince(c, start, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != writers*each {
		t.Fatalf("%d events, want %d", len(all), writers*each)
	}
	for _, e := range all {
		if !seen[e.ID] {
			t.Fatalf("the polling reader skipped change %d: ids were not visible in order", e.ID)
		}
	}
}
