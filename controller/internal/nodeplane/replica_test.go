package nodeplane

import (
	"context"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func openPG(t testing.TB, app, owner string) store.Store {
	st, err := postgres.Open(context.Background(), postgres.Config{DSN: app, MigrationDSN: owner, Logger: quiet()})
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// TestReplicasDeliverEveryChangeOnce runs two controller replicas (two Planes, two Store instances)
// on one PostgreSQL database: a change committed through either reaches the agents streaming from
// both, exactly once (versions are consecutive and the acknowledged hashes agree).
func TestReplicasDeliverEveryChangeOnce(t *testing.T) {
	dsns := cluster.NewDatabase(t)
	st1 := openPG(t, dsns.App, dsns.Owner)
	st2 := openPG(t, dsns.App, dsns.Owner)
	ten, cv := seed(t, st1, domain.TenantSettings{})
	ca := newCA(t)
	r1 := startEnv(t, st1, ca, ten, cv)
	r2 := startEnv(t, st2, ca, ten, cv)

	a := r1.enroll(t, r1.token(t, nil), "alpha") // streams from replica 1
	b := r2.enroll(t, r2.token(t, nil), "bravo") // streams from replica 2
	type watcher struct {
		a  *agent
		ch <-chan recv
		st netmapstate.State
	}
	var ws []*watcher
	for _, ag := range []*agent{a, b} {
		ch, cancel := ag.watch(t, context.Background(), 0, "session-"+ag.id.GetName())
		t.Cleanup(cancel)
		w := &watcher{a: ag, ch: ch}
		r := next(t, ch, 10*time.Second)
		if r.err != nil || r.msg.GetSnapshot() == nil {
			t.Fatalf("%s: first message %v %v", ag.id.GetName(), r.msg, r.err)
		}
		applyAck(t, ag, &w.st, r.msg)
		ws = append(ws, w)
	}
	// Wait until each sees the other (whichever replica enrolled it).
	for _, w := range ws {
		other := b.id.GetNodeId()
		if w.a == b {
			other = a.id.GetNodeId()
		}
		for {
			if _, ok := w.st.Peer(other); ok {
				break
			}
			r := next(t, w.ch, 10*time.Second)
			if r.err != nil {
				t.Fatal(r.err)
			}
			applyAck(t, w.a, &w.st, r.msg)
		}
	}

	// One change through each replica's store; both agents get it once.
	for i, through := range []*env{r2, r1} {
		c := through.enroll(t, through.token(t, nil), []string{"charlie", "delta"}[i])
		start := time.Now()
		for _, w := range ws {
			// Other deltas (a peer going online) may come first; every one must apply on top of the
			// last, which is what "none lost, none duplicated" means for a versioned stream.
			for {
				before := w.st.Version()
				r := next(t, w.ch, 10*time.Second)
				if r.err != nil {
					t.Fatal(r.err)
				}
				d := r.msg.GetDelta()
				if d == nil || d.GetBaseVersion() != before {
					t.Fatalf("%s: got %v, want a delta on top of %d", w.a.id.GetName(), r.msg, before)
				}
				// Not necessarily in sync here: the next delta may already be on its way.
				applyAck(t, w.a, &w.st, r.msg)
				if _, ok := w.st.Peer(c.id.GetNodeId()); ok {
					break
				}
			}
			t.Logf("%s (replica %d) got %s's join %s after it committed on replica %d", w.a.id.GetName(), 1+map[bool]int{true: 0, false: 1}[w.a == a], c.id.GetName(), time.Since(start).Round(time.Millisecond), 2-i)
		}
	}
	// Let the joins' own status changes (online) settle, then expect silence.
	time.Sleep(time.Second)
	for _, w := range ws {
		for drained := false; !drained; {
			select {
			case r := <-w.ch:
				if r.err != nil {
					t.Fatal(r.err)
				}
				if r.msg.GetKeepAlive() == nil {
					if r.msg.GetDelta() == nil || r.msg.GetDelta().GetBaseVersion() != w.st.Version() {
						t.Fatalf("%s: %v does not apply on top of %d", w.a.id.GetName(), r.msg, w.st.Version())
					}
					applyAck(t, w.a, &w.st, r.msg)
				}
			default:
				drained = true
			}
		}
		// Settled: the controller agrees with what each agent holds.
		resp, err := w.a.ctl.AckNetworkMap(context.Background(), &nodev1.AckNetworkMapRequest{Version: w.st.Version(), StateHash: w.st.Hash()})
		if err != nil || !resp.GetInSync() {
			t.Fatalf("%s: final ack %v %v, want in sync", w.a.id.GetName(), resp, err)
		}
	}
	// Nothing else arrives: no duplicates.
	for _, w := range ws {
		select {
		case r := <-w.ch:
			if r.err == nil && r.msg.GetKeepAlive() == nil {
				t.Fatalf("%s: unexpected extra message %v", w.a.id.GetName(), r.msg)
			}
		case <-time.After(500 * time.Millisecond):
		}
	}
	// Revocation on one replica closes the stream on the other.
	r1.setNode(t, b.id.GetNodeId(), func(n *domain.Node) { n.Status = domain.NodeQuarantined })
	start := time.Now()
	for _, w := range ws {
		if w.a != b {
			continue
		}
		for {
			r := next(t, w.ch, 5*time.Second)
			if r.err != nil {
				t.Logf("bravo's stream on replica 2 closed %s after the quarantine committed on replica 1: %v", time.Since(start).Round(time.Millisecond), r.err)
				break
			}
		}
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("cross-replica revocation took %s", d)
	}
}
