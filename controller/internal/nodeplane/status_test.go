package nodeplane

import (
	"context"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func (e *env) audits(t testing.TB, action string) []*domain.AuditEntry {
	t.Helper()
	ctx := context.Background()
	var out []*domain.AuditEntry
	err := e.st.ReadTx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error {
		p, err := tx.ListAudit(ctx, store.AuditFilter{Action: action}, store.ListOptions{})
		if err == nil {
			out = p.Items
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestReportStatusFeedsPeersAndHolePunch(t *testing.T) {
	e := newEnv(t)
	a := e.enroll(t, e.token(t, nil), "alpha")
	b := e.enroll(t, e.token(t, nil), "bravo")
	ach, acancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer acancel()
	bch, bcancel := b.watch(t, context.Background(), 0, "session-bravo")
	defer bcancel()
	var ast netmapstate.State
	applyAck(t, a, &ast, next(t, ach, 5*time.Second).msg)
	next(t, bch, 5*time.Second)

	hs := time.Now().Add(-time.Second)
	resp, err := b.ctl.ReportStatus(context.Background(), &nodev1.ReportStatusRequest{
		Endpoints: []*nodev1.Endpoint{{Address: "198.51.100.7:41641", Type: nodev1.EndpointType_ENDPOINT_TYPE_STUN}, {Address: "192.168.1.7:41641", Type: nodev1.EndpointType_ENDPOINT_TYPE_LOCAL}},
		Peers: []*nodev1.PeerStatus{{PeerNodeId: a.id.GetNodeId(), Path: nodev1.PathType_PATH_TYPE_DIRECT, Endpoint: "198.51.100.9:41641",
			Latency: durationpb.New(3 * time.Millisecond), LastHandshakeTime: timestamppb.New(hs)}},
		AgentVersion: "1.2.3", Os: "linux/arm64", AdvertisedRoutes: []string{"10.9.0.0/16"},
	})
	if err != nil || resp.GetReportInterval().AsDuration() <= 0 {
		t.Fatalf("report: %v %v", resp, err)
	}
	// Alpha's map learns bravo's endpoints (for NAT traversal).
	deadline := time.Now().Add(5 * time.Second)
	for {
		p, _ := ast.Peer(b.id.GetNodeId())
		if len(p.GetEndpoints()) == 2 && p.GetEndpoints()[0] == "198.51.100.7:41641" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("alpha's view of bravo: %v", p)
		}
		applyAck(t, a, &ast, next(t, ach, 5*time.Second).msg)
	}
	eventually(t, 5*time.Second, "status stored", func() bool {
		n := e.getNode(t, b.id.GetNodeId())
		return n.Status == domain.NodeOnline && n.AgentVersion == "1.2.3" && len(n.PeerPaths) == 1 && n.PeerPaths[0].Path == domain.PathDirect &&
			n.PeerPaths[0].LastHandshakeTime.Unix() == hs.Unix() && len(n.Routes) == 1 && n.Routes[0].Advertised && !n.Routes[0].Approved
	})

	// Alpha asks bravo to punch: bravo's stream carries alpha's request.
	hp, err := a.ctl.RequestHolePunch(context.Background(), &nodev1.RequestHolePunchRequest{PeerNodeId: b.id.GetNodeId()})
	if err != nil || !hp.GetDelivered() {
		t.Fatalf("hole punch: %v %v", hp, err)
	}
	for {
		r := next(t, bch, 5*time.Second)
		if r.err != nil {
			t.Fatal(r.err)
		}
		if h := r.msg.GetHolePunch(); h != nil {
			if h.GetPeerNodeId() != a.id.GetNodeId() || len(h.GetWireguardPublicKey()) != 32 {
				t.Fatalf("hole punch message %v", h)
			}
			break
		}
	}
	if _, err := a.ctl.RequestHolePunch(context.Background(), &nodev1.RequestHolePunchRequest{PeerNodeId: "not-a-peer"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("hole punch to a stranger: %v, want PermissionDenied", err)
	}
}

func TestOfflineSweepAndEphemeralRemoval(t *testing.T) {
	e := newEnv(t, func(d *Deps) {
		d.ReportInterval, d.OfflineAfter, d.EphemeralTimeout = 200*time.Millisecond, 600*time.Millisecond, time.Second
	})
	perm := e.enroll(t, e.token(t, nil), "permanent")
	eph := e.enroll(t, e.token(t, func(j *domain.JoinToken) { j.Ephemeral = true }), "ephemeral")
	var cancels []context.CancelFunc
	for _, a := range []*agent{perm, eph} {
		ch, cancel := a.watch(t, context.Background(), 0, "s-"+a.id.GetName())
		cancels = append(cancels, cancel)
		next(t, ch, 5*time.Second)
	}
	eventually(t, 5*time.Second, "both online", func() bool {
		return e.getNode(t, perm.id.GetNodeId()).Status == domain.NodeOnline && e.getNode(t, eph.id.GetNodeId()).Status == domain.NodeOnline
	})
	// Streaming keeps them online well past OfflineAfter.
	time.Sleep(1500 * time.Millisecond)
	if s := e.getNode(t, perm.id.GetNodeId()).Status; s != domain.NodeOnline {
		t.Fatalf("streaming node is %s", s)
	}
	for _, c := range cancels {
		c()
	}
	eventually(t, 10*time.Second, "permanent node offline", func() bool { return e.getNode(t, perm.id.GetNodeId()).Status == domain.NodeOffline })
	eventually(t, 10*time.Second, "ephemeral node deleted", func() bool {
		ctx := context.Background()
		err := e.st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error { _, err := tx.GetNode(ctx, eph.id.GetNodeId()); return err })
		return store.IsNotFound(err)
	})
	if len(e.audits(t, "DeleteEphemeralNode")) != 1 {
		t.Fatal("no audit row for the ephemeral node's removal")
	}
	if e.getNode(t, perm.id.GetNodeId()) == nil {
		t.Fatal("permanent node removed")
	}
}

func TestSessionConflict(t *testing.T) {
	for _, quarantine := range []bool{false, true} {
		t.Run("quarantine="+strconv.FormatBool(quarantine), func(t *testing.T) {
			st := newSQLite(t)
			ten, cv := seed(t, st, domain.TenantSettings{QuarantineOnConflict: quarantine})
			e := startEnv(t, st, newCA(t), ten, cv)
			a := e.enroll(t, e.token(t, nil), "alpha")
			ch1, c1 := a.watch(t, context.Background(), 0, "original-agent")
			defer c1()
			next(t, ch1, 5*time.Second)
			// The same identity from a second agent process (a clone).
			clone := &agent{id: a.id, key: a.key}
			clone.cert.Store(a.cert.Load())
			clone.cc = e.dial(t, a.cert.Load)
			clone.ctl = nodev1.NewControlServiceClient(clone.cc)
			cctx, ccancel := context.WithCancel(context.Background())
			defer ccancel()
			s2, err := clone.ctl.WatchNetworkMap(cctx, &nodev1.WatchNetworkMapRequest{SessionId: "cloned-agent"})
			if err != nil {
				t.Fatal(err)
			}
			_, err2 := s2.Recv()
			eventually(t, 5*time.Second, "incident audited", func() bool { return len(e.audits(t, "NodeSessionConflict")) == 1 })
			// The conflict is persisted on the node (the API shows it) ...
			n := e.getNode(t, a.id.GetNodeId())
			if c := n.Conflict; c == nil || len(c.Addresses) != 2 || c.Quarantined != quarantine || c.DetectTime.IsZero() {
				t.Fatalf("stored conflict %+v", n.Conflict)
			}
			if !quarantine {
				if err2 != nil {
					t.Fatalf("second stream refused without quarantine_on_conflict: %v", err2)
				}
				if !n.Conflict.Active {
					t.Fatal("conflict not active while both streams are open")
				}
				// ... and cleared once the clone's stream ended.
				ccancel()
				eventually(t, 10*time.Second, "conflict cleared", func() bool {
					c := e.getNode(t, a.id.GetNodeId()).Conflict
					return c != nil && !c.Active && len(c.Addresses) == 2
				})
				return
			}
			if status.Code(err2) != codes.Unauthenticated {
				t.Fatalf("clone's stream: %v, want Unauthenticated", err2)
			}
			if r := next(t, ch1, 5*time.Second); status.Code(r.err) != codes.Unauthenticated {
				t.Fatalf("original stream: %v, want closed Unauthenticated", r.err)
			}
			if n := e.getNode(t, a.id.GetNodeId()); n.Status != domain.NodeQuarantined || n.QuarantineReason == "" {
				t.Fatalf("node %s (%q), want quarantined", n.Status, n.QuarantineReason)
			}
			// Both streams are closed: the conflict is over (the quarantine stays).
			eventually(t, 10*time.Second, "conflict cleared", func() bool {
				n := e.getNode(t, a.id.GetNodeId())
				return n.Conflict != nil && !n.Conflict.Active && n.Conflict.Quarantined && n.Status == domain.NodeQuarantined
			})
		})
	}
}

func TestAdmissionControl(t *testing.T) {
	e := newEnv(t, func(d *Deps) { d.MaxStreams = 1 })
	a := e.enroll(t, e.token(t, nil), "alpha")
	b := e.enroll(t, e.token(t, nil), "bravo")
	ch, cancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer cancel()
	next(t, ch, 5*time.Second)
	var trailer metadata.MD
	s, err := b.ctl.WatchNetworkMap(context.Background(), &nodev1.WatchNetworkMapRequest{SessionId: "session-bravo"}, grpc.Trailer(&trailer))
	if err == nil {
		_, err = s.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("second stream: %v, want ResourceExhausted", err)
	}
	ms, perr := strconv.Atoi(firstOf(trailer.Get("retry-after-ms")))
	if perr != nil || ms < 1000 || ms >= 4000 {
		t.Fatalf("retry-after-ms %v, want a jittered 2-4 s", trailer.Get("retry-after-ms"))
	}
	cancel()
	// Once the first stream ended, the second is admitted.
	eventually(t, 5*time.Second, "slot released", func() bool { return e.p.Streams() == 0 })
	ch, cancel = b.watch(t, context.Background(), 0, "session-bravo")
	defer cancel()
	if r := next(t, ch, 5*time.Second); r.err != nil {
		t.Fatal(r.err)
	}
	// The accept rate: a burst beyond it is shed too.
	e2 := newEnv(t, func(d *Deps) { d.StreamRate, d.StreamBurst = 1, 1 })
	c := e2.enroll(t, e2.token(t, nil), "charlie")
	var refused int
	for i := range 3 {
		s, err := c.ctl.WatchNetworkMap(context.Background(), &nodev1.WatchNetworkMapRequest{SessionId: "session-charlie"})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) == codes.ResourceExhausted {
			refused++
		}
		_ = i
	}
	if refused < 1 {
		t.Fatal("no stream refused beyond the accept rate")
	}
}

func firstOf(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}
