package nodeplane

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// applyAck applies a message to st like an agent and acknowledges it; it returns whether the
// controller agreed.
func applyAck(t testing.TB, a *agent, st *netmapstate.State, m *nodev1.WatchNetworkMapResponse) bool {
	t.Helper()
	switch {
	case m.GetSnapshot() != nil:
		st.ApplySnapshot(m.GetSnapshot())
	case m.GetDelta() != nil:
		if err := st.ApplyDelta(m.GetDelta()); err != nil {
			t.Fatalf("apply delta: %v", err)
		}
	default:
		t.Fatalf("unexpected message %v", m)
	}
	resp, err := a.ctl.AckNetworkMap(context.Background(), &nodev1.AckNetworkMapRequest{Version: st.Version(), StateHash: st.Hash()})
	if err != nil {
		t.Fatalf("ack: %v", err)
	}
	return resp.GetInSync()
}

func TestSnapshotThenDeltas(t *testing.T) {
	e := newEnv(t)
	a := e.enroll(t, e.token(t, nil), "alpha")
	ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer cancel()
	var st netmapstate.State
	r := next(t, ch, 5*time.Second)
	if r.err != nil || r.msg.GetSnapshot() == nil {
		t.Fatalf("first message %v %v, want a snapshot", r.msg, r.err)
	}
	snap := r.msg.GetSnapshot()
	if snap.GetSelf().GetNodeId() != a.id.GetNodeId() || len(snap.GetPeers()) != 0 || snap.GetSelf().GetFqdn() != "alpha.office.mesh.test" {
		t.Fatalf("snapshot %v", snap)
	}
	if !applyAck(t, a, &st, r.msg) {
		t.Fatal("controller disagrees with the snapshot's hash")
	}
	eventually(t, 5*time.Second, "node in sync in the store", func() bool {
		n := e.getNode(t, a.id.GetNodeId())
		return n.Sync.State == domain.SyncInSync && n.Sync.AppliedVersion == st.Version() && n.Status == domain.NodeOnline
	})

	b := e.enroll(t, e.token(t, nil), "bravo")
	r = next(t, ch, 5*time.Second)
	d := r.msg.GetDelta()
	if r.err != nil || d == nil || d.GetBaseVersion() != snap.GetVersion() || len(d.GetPeersUpserted()) != 1 || d.GetPeersUpserted()[0].GetNodeId() != b.id.GetNodeId() {
		t.Fatalf("after bravo joined: %v %v", r.msg, r.err)
	}
	if !applyAck(t, a, &st, r.msg) {
		t.Fatal("controller disagrees with the delta's hash")
	}
	// A change to bravo reaches alpha as a delta on top.
	e.setNode(t, b.id.GetNodeId(), func(n *domain.Node) { n.Tags = []string{"db"} })
	r = next(t, ch, 5*time.Second)
	if r.err != nil || r.msg.GetDelta() == nil || r.msg.GetDelta().GetPeersUpserted()[0].GetTags()[0] != "db" {
		t.Fatalf("after tagging bravo: %v %v", r.msg, r.err)
	}
	if !applyAck(t, a, &st, r.msg) {
		t.Fatal("controller disagrees after the tag change")
	}
	// A wrong hash is reported failed and answered with a snapshot.
	resp, err := a.ctl.AckNetworkMap(context.Background(), &nodev1.AckNetworkMapRequest{Version: st.Version(), StateHash: strings.Repeat("0", 64)})
	if err != nil || resp.GetInSync() {
		t.Fatalf("bad hash ack: %v %v", resp, err)
	}
	r = next(t, ch, 5*time.Second)
	if r.err != nil || r.msg.GetSnapshot() == nil {
		t.Fatalf("after a hash mismatch: %v %v, want a snapshot", r.msg, r.err)
	}
	eventually(t, 5*time.Second, "failed state recorded", func() bool {
		n := e.getNode(t, a.id.GetNodeId())
		return n.Sync.State == domain.SyncFailed && strings.Contains(n.Sync.Error, "differs")
	})
}

func TestResumeFromVersion(t *testing.T) {
	e := newEnv(t)
	a := e.enroll(t, e.token(t, nil), "alpha")
	b := e.enroll(t, e.token(t, nil), "bravo")
	var st netmapstate.State
	ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
	r := next(t, ch, 5*time.Second)
	applyAck(t, a, &st, r.msg)
	cancel()
	held := st.Version()

	// Changes while alpha is away.
	e.setNode(t, b.id.GetNodeId(), func(n *domain.Node) { n.Tags = []string{"one"} })
	e.setNode(t, b.id.GetNodeId(), func(n *domain.Node) { n.Tags = []string{"two"} })
	if err := e.p.CatchUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	ch, cancel = a.watch(t, context.Background(), held, "session-alpha")
	defer cancel()
	r = next(t, ch, 5*time.Second)
	d := r.msg.GetDelta()
	if r.err != nil || d == nil || d.GetBaseVersion() != held || d.GetVersion() <= held {
		t.Fatalf("resume from %d: %v %v, want one delta on top of it", held, r.msg, r.err)
	}
	if !applyAck(t, a, &st, r.msg) || st.Map().GetPeers()[0].GetTags()[0] != "two" {
		t.Fatalf("resumed state not in sync: %v", st.Map())
	}
	// A version of another engine (a restart, another replica) gets a snapshot.
	cancel()
	ch, cancel = a.watch(t, context.Background(), 7<<32|3, "session-alpha")
	defer cancel()
	if r = next(t, ch, 5*time.Second); r.err != nil || r.msg.GetSnapshot() == nil {
		t.Fatalf("foreign version: %v %v, want a snapshot", r.msg, r.err)
	}
}

func TestResyncAfterFallingBehind(t *testing.T) {
	t.Run("history no longer reaches back", func(t *testing.T) {
		e := newEnv(t, func(d *Deps) { d.History = 2 })
		a := e.enroll(t, e.token(t, nil), "alpha")
		b := e.enroll(t, e.token(t, nil), "bravo")
		var st netmapstate.State
		ch, cancel := a.watch(t, context.Background(), 0, "s-alpha-1")
		applyAck(t, a, &st, next(t, ch, 5*time.Second).msg)
		cancel()
		for i := range 5 {
			e.setNode(t, b.id.GetNodeId(), func(n *domain.Node) { n.Tags = []string{fmt.Sprint("t", i)} })
			// One version per change: applied together, the five would be read once (one version).
			if err := e.p.CatchUp(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		ch, cancel = a.watch(t, context.Background(), st.Version(), "s-alpha-1")
		defer cancel()
		r := next(t, ch, 5*time.Second)
		if r.err != nil || r.msg.GetSnapshot() == nil {
			t.Fatalf("got %v %v, want a snapshot", r.msg, r.err)
		}
		if !applyAck(t, a, &st, r.msg) {
			t.Fatal("not in sync after the snapshot")
		}
	})
	t.Run("queue overflows", func(t *testing.T) {
		// A long coalescing window lets the changes pile up past the queue bound.
		e := newEnv(t, func(d *Deps) { d.QueueLen, d.Coalesce = 2, 500*time.Millisecond })
		a := e.enroll(t, e.token(t, nil), "alpha")
		b := e.enroll(t, e.token(t, nil), "bravo")
		var st netmapstate.State
		ch, cancel := a.watch(t, context.Background(), 0, "s-alpha-2")
		defer cancel()
		applyAck(t, a, &st, next(t, ch, 5*time.Second).msg)
		for i := range 6 {
			e.setNode(t, b.id.GetNodeId(), func(n *domain.Node) { n.Tags = []string{fmt.Sprint("t", i)} })
			if err := e.p.CatchUp(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		r := next(t, ch, 5*time.Second)
		if r.err != nil || r.msg.GetSnapshot() == nil {
			t.Fatalf("got %v %v, want a snapshot", r.msg, r.err)
		}
		if !applyAck(t, a, &st, r.msg) || st.Map().GetPeers()[0].GetTags()[0] != "t5" {
			t.Fatalf("state after resync: %v", st.Map())
		}
	})
}

func TestStuckAgentDoesNotDelayOthers(t *testing.T) {
	e := newEnv(t, func(d *Deps) { d.QueueLen, d.SendTimeout = 4, 2*time.Second })
	reader := e.enroll(t, e.token(t, nil), "reader")
	stuck := e.enroll(t, e.token(t, nil), "stuck")
	target := e.enroll(t, e.token(t, nil), "target")
	// The stuck agent opens its stream and never reads it.
	sctx, scancel := context.WithCancel(context.Background())
	defer scancel()
	if _, err := stuck.ctl.WatchNetworkMap(sctx, &nodev1.WatchNetworkMapRequest{SessionId: "stuck-session"}); err != nil {
		t.Fatal(err)
	}
	ch, cancel := reader.watch(t, context.Background(), 0, "reader-session")
	defer cancel()
	var st netmapstate.State
	applyAck(t, reader, &st, next(t, ch, 5*time.Second).msg)

	// Each change carries ~20 KB of tags, so the stuck stream's flow-control window fills fast.
	var worst time.Duration
	for i := range 30 {
		tags := make([]string, 200)
		for j := range tags {
			tags[j] = fmt.Sprintf("tag-%03d-%03d-%s", i, j, strings.Repeat("x", 80))
		}
		at := time.Now()
		e.setNode(t, target.id.GetNodeId(), func(n *domain.Node) { n.Tags = tags })
		for {
			r := next(t, ch, 5*time.Second)
			if r.err != nil {
				t.Fatalf("reader stream: %v", r.err)
			}
			if r.msg.GetDelta() == nil {
				t.Fatalf("reader got %v", r.msg)
			}
			if err := st.ApplyDelta(r.msg.GetDelta()); err != nil {
				t.Fatal(err)
			}
			if p, ok := st.Peer(target.id.GetNodeId()); ok && len(p.GetTags()) > 0 && p.GetTags()[0] == tags[0] {
				break
			}
		}
		worst = max(worst, time.Since(at))
		// The stuck stream's queue stays bounded whatever happens.
		for _, ms := range e.p.streamsOf(stuck.id.GetNodeId()) {
			if q := ms.sub.QueueLen(); q > 4 {
				t.Fatalf("stuck stream queues %d deltas, bound is 4", q)
			}
		}
	}
	t.Logf("slowest change to reach the reading agent while another is stuck: %s", worst)
	if worst > 2*time.Second {
		t.Fatalf("reader delayed %s by the stuck agent", worst)
	}
	// The stuck stream is reset once a send has waited longer than SendTimeout.
	eventually(t, 15*time.Second, "stuck stream closed", func() bool { return len(e.p.streamsOf(stuck.id.GetNodeId())) == 0 })
	if len(e.p.streamsOf(reader.id.GetNodeId())) != 1 {
		t.Fatal("the reading agent's stream was closed too")
	}
}

func TestRevocationClosesStreams(t *testing.T) {
	for _, how := range []string{"quarantine through the store", "delete through the store", "RevokeNode hook"} {
		t.Run(how, func(t *testing.T) {
			e := newEnv(t)
			a := e.enroll(t, e.token(t, nil), "alpha")
			ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
			defer cancel()
			if r := next(t, ch, 5*time.Second); r.err != nil {
				t.Fatal(r.err)
			}
			start := time.Now()
			switch how {
			case "quarantine through the store":
				e.setNode(t, a.id.GetNodeId(), func(n *domain.Node) { n.Status, n.QuarantineReason = domain.NodeQuarantined, "test" })
			case "delete through the store":
				ctx := context.Background()
				if err := e.st.Tx(ctx, storeAll(), func(tx storeTx) error { return tx.DeleteNode(ctx, a.id.GetNodeId(), 0) }); err != nil {
					t.Fatal(err)
				}
			default:
				e.p.RevokeNode(context.Background(), e.tenant.ID, a.id.GetNodeId())
			}
			r := next(t, ch, 5*time.Second)
			took := time.Since(start)
			if status.Code(r.err) != codes.Unauthenticated {
				t.Fatalf("stream ended with %v, want Unauthenticated", r.err)
			}
			t.Logf("stream closed %s after the revocation", took)
			if took > time.Second {
				t.Fatalf("stream closed after %s, want within a second", took)
			}
			// And the certificate is refused from now on.
			_, err := a.ctl.ReportStatus(context.Background(), &nodev1.ReportStatusRequest{})
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("call after revocation: %v, want Unauthenticated", err)
			}
		})
	}
}

func TestClientCertificates(t *testing.T) {
	e := newEnv(t)
	a := e.enroll(t, e.token(t, nil), "alpha")
	call := func(cert *tls.Certificate) error {
		var cc = e.dial(t, nil)
		if cert != nil {
			cc = e.dial(t, func() *tls.Certificate { return cert })
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := nodev1.NewControlServiceClient(cc).ReportStatus(ctx, &nodev1.ReportStatusRequest{})
		return err
	}
	foreign := newCA(t)
	fkey := newKey(t)
	fchain, err := foreign.Sign(context.Background(), pki.SignRequest{CSR: parseCSR(t, csrDER(t, fkey)), ID: identityOf(t, a), WGKey: a.wg[:]})
	if err != nil {
		t.Fatal(err)
	}
	ekey := newKey(t)
	echain, err := e.ca.Sign(context.Background(), pki.SignRequest{CSR: parseCSR(t, csrDER(t, ekey)), ID: identityOf(t, a), WGKey: a.wg[:], TTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	deleted := e.enroll(t, e.token(t, nil), "gone")
	ctx := context.Background()
	if err := e.st.Tx(ctx, storeAll(), func(tx storeTx) error { return tx.DeleteNode(ctx, deleted.id.GetNodeId(), 0) }); err != nil {
		t.Fatal(err)
	}
	quarantined := e.enroll(t, e.token(t, nil), "quarantined")
	e.setNode(t, quarantined.id.GetNodeId(), func(n *domain.Node) { n.Status = domain.NodeQuarantined })
	if err := e.p.CatchUp(ctx); err != nil {
		t.Fatal(err)
	}
	fc, ec := fchain.TLSCertificate(fkey), echain.TLSCertificate(ekey)
	tests := []struct {
		name string
		cert *tls.Certificate
		ok   bool
	}{
		{"valid", a.cert.Load(), true},
		{"none", nil, false},
		{"another CA", &fc, false},
		{"expired", &ec, false},
		{"deleted node", deleted.cert.Load(), false},
		{"quarantined node", quarantined.cert.Load(), false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := call(tc.cert)
			if tc.ok != (err == nil) {
				t.Fatalf("got %v, want ok=%v", err, tc.ok)
			}
			if !tc.ok {
				t.Logf("refused: %v", err)
			}
		})
	}
}

func TestRenewalKeepsStreamAcrossShortCertificates(t *testing.T) {
	if testing.Short() {
		t.Skip("runs for a minute")
	}
	e := newEnv(t, func(d *Deps) { d.CertTTL = 5 * time.Second })
	a := e.enroll(t, e.token(t, nil), "alpha")
	b := e.enroll(t, e.token(t, nil), "bravo")
	ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer cancel()
	var st netmapstate.State
	applyAck(t, a, &st, next(t, ch, 5*time.Second).msg)

	ctx, stop := context.WithTimeout(context.Background(), 60*time.Second)
	defer stop()
	renewals := 0
	serials := map[string]bool{a.cert.Load().Leaf.SerialNumber.String(): true}
	issued, changed := time.Now(), time.Now()
	// Checked often, so that a loaded machine delays a renewal by half a second, not by a tick of
	// the change loop: a renewal past the 5 s life is refused, as it should be.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	change := 0
	for ctx.Err() == nil {
		select {
		case <-ctx.Done():
		case <-tick.C:
			// Renew at half the 5 s life, measured from issue (NotBefore is backdated).
			if time.Since(issued) > 2500*time.Millisecond {
				key := newKey(t)
				resp, err := a.ctl.RenewCertificate(context.Background(), &nodev1.RenewCertificateRequest{CsrDer: csrDER(t, key)})
				if err != nil {
					t.Fatalf("renewal %d: %v", renewals+1, err)
				}
				a.key = key
				a.setChain(resp.GetCertificateChainDer())
				issued = time.Now()
				renewals++
				serials[a.cert.Load().Leaf.SerialNumber.String()] = true
				// A new connection presents the new certificate and is accepted.
				fresh := nodev1.NewControlServiceClient(e.dial(t, func() *tls.Certificate { return a.cert.Load() }))
				if _, err := fresh.ReportStatus(context.Background(), &nodev1.ReportStatusRequest{}); err != nil {
					t.Fatalf("new connection with renewed certificate: %v", err)
				}
			}
			if time.Since(changed) < 2*time.Second {
				continue
			}
			changed = time.Now()
			change++
			tag := fmt.Sprint("c", change)
			e.setNode(t, b.id.GetNodeId(), func(n *domain.Node) { n.Tags = []string{tag} })
			r := next(t, ch, 5*time.Second)
			if r.err != nil {
				t.Fatalf("stream dropped after %d renewals: %v", renewals, r.err)
			}
			if !applyAck(t, a, &st, r.msg) {
				t.Fatal("not in sync")
			}
			if p, _ := st.Peer(b.id.GetNodeId()); p.GetTags()[0] != tag {
				t.Fatalf("peer tags %v, want %s", p.GetTags(), tag)
			}
		}
	}
	if renewals < 10 || len(serials) != renewals+1 {
		t.Fatalf("%d renewals, %d distinct certificates", renewals, len(serials))
	}
	t.Logf("one stream stayed up for a minute across %d renewals of 5 s certificates, %d changes delivered", renewals, change)
}
