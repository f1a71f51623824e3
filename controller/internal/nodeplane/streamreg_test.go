package nodeplane

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// twoReplicas starts two controller replicas (two Planes, two Store instances) on one fresh
// PostgreSQL database with a short registry heartbeat.
func twoReplicas(t *testing.T, settings domain.TenantSettings) (*env, *env) {
	t.Helper()
	dsns := cluster.NewDatabase(t)
	st1 := openPG(t, dsns.App, dsns.Owner)
	st2 := openPG(t, dsns.App, dsns.Owner)
	ten, cv := seed(t, st1, settings)
	ca := newCA(t)
	fast := func(d *Deps) { d.ReplicaHeartbeat = 400 * time.Millisecond }
	return startEnv(t, st1, ca, ten, cv, fast), startEnv(t, st2, ca, ten, cv, fast)
}

// as connects a's identity (the same certificate) to replica e.
func (a *agent) as(t testing.TB, e *env) *agent {
	t.Helper()
	c := &agent{wg: a.wg, id: a.id, key: a.key}
	c.cert.Store(a.cert.Load())
	c.cc = e.dial(t, c.cert.Load)
	c.ctl = nodev1.NewControlServiceClient(c.cc)
	return c
}

// registered waits until the store's stream registry holds n streams of the node.
func registered(t *testing.T, e *env, nodeID string, n int) {
	t.Helper()
	eventually(t, 5*time.Second, strconv.Itoa(n)+" registered streams", func() bool {
		ms, err := e.st.MapStreams(context.Background(), nodeID, time.Now().Add(-time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		return len(ms) == n
	})
}

// TestReplicasSessionConflict: one node identity streaming from replica 1 and, under another
// session, from replica 2 is one incident (not one per replica), stored on the node; with
// quarantine_on_conflict both streams close. The same session on both replicas (an agent that
// moved) is no conflict.
func TestReplicasSessionConflict(t *testing.T) {
	for _, quarantine := range []bool{false, true} {
		t.Run("quarantine="+strconv.FormatBool(quarantine), func(t *testing.T) {
			r1, r2 := twoReplicas(t, domain.TenantSettings{QuarantineOnConflict: quarantine})
			a := r1.enroll(t, r1.token(t, nil), "alpha")
			ch1, c1 := a.watch(t, context.Background(), 0, "original-agent")
			defer c1()
			if r := next(t, ch1, 10*time.Second); r.err != nil {
				t.Fatal(r.err)
			}
			registered(t, r1, a.id.GetNodeId(), 1)
			// A clone of the identity connects to the other replica.
			ch2, c2 := a.as(t, r2).watch(t, context.Background(), 0, "cloned-agent")
			defer c2()
			r := next(t, ch2, 10*time.Second)
			eventually(t, 10*time.Second, "incident audited", func() bool { return len(r1.audits(t, "NodeSessionConflict")) >= 1 })
			// Give the other replica every chance to raise a second one.
			time.Sleep(time.Second)
			incidents := r1.audits(t, "NodeSessionConflict")
			if len(incidents) != 1 {
				t.Fatalf("%d incidents, want exactly 1", len(incidents))
			}
			var inc struct {
				Addresses    []string `json:"addresses"`
				OtherReplica bool     `json:"other_replica"`
			}
			if err := json.Unmarshal(incidents[0].After, &inc); err != nil || len(inc.Addresses) != 2 || !inc.OtherReplica {
				t.Fatalf("incident %s: %v", incidents[0].After, err)
			}
			n := r1.getNode(t, a.id.GetNodeId())
			if c := n.Conflict; c == nil || len(c.Addresses) != 2 || c.Quarantined != quarantine {
				t.Fatalf("stored conflict %+v", n.Conflict)
			}
			if !quarantine {
				if r.err != nil {
					t.Fatalf("clone's stream refused without quarantine_on_conflict: %v", r.err)
				}
				if !n.Conflict.Active {
					t.Fatal("conflict not active while both streams are open")
				}
				// The original (on replica 1) goes away: replica 2, which raised the conflict,
				// sees the node down to one session and clears it.
				c1()
				eventually(t, 10*time.Second, "conflict cleared", func() bool {
					c := r1.getNode(t, a.id.GetNodeId()).Conflict
					return c != nil && !c.Active && len(c.Addresses) == 2
				})
				if n := len(r1.audits(t, "NodeSessionConflict")); n != 1 {
					t.Fatalf("%d incidents after the conflict ended, want 1", n)
				}
				return
			}
			// Quarantined: the clone's stream (replica 2) and the original's (replica 1, through
			// the change feed) close.
			for i, ch := range []<-chan recv{ch2, ch1} {
				for {
					if r.err != nil {
						if status.Code(r.err) != codes.Unauthenticated {
							t.Fatalf("stream %d closed with %v, want Unauthenticated", i+1, r.err)
						}
						break
					}
					r = next(t, ch, 10*time.Second)
				}
				r = recv{}
			}
			if n := r1.getNode(t, a.id.GetNodeId()); n.Status != domain.NodeQuarantined {
				t.Fatalf("node %s, want quarantined", n.Status)
			}
			if q := r1.audits(t, "QuarantineNode"); len(q) != 1 {
				t.Fatalf("%d quarantine audits, want 1", len(q))
			}
		})
	}
	t.Run("same session", func(t *testing.T) {
		r1, r2 := twoReplicas(t, domain.TenantSettings{QuarantineOnConflict: true})
		a := r1.enroll(t, r1.token(t, nil), "alpha")
		ch1, c1 := a.watch(t, context.Background(), 0, "one-agent")
		defer c1()
		next(t, ch1, 10*time.Second)
		registered(t, r1, a.id.GetNodeId(), 1)
		ch2, c2 := a.as(t, r2).watch(t, context.Background(), 0, "one-agent")
		defer c2()
		if r := next(t, ch2, 10*time.Second); r.err != nil {
			t.Fatal(r.err)
		}
		registered(t, r1, a.id.GetNodeId(), 2)
		time.Sleep(500 * time.Millisecond)
		if n := len(r1.audits(t, "NodeSessionConflict")); n != 0 {
			t.Fatalf("%d incidents for one session on two replicas", n)
		}
		if n := r1.getNode(t, a.id.GetNodeId()); n.Status == domain.NodeQuarantined {
			t.Fatal("node quarantined")
		}
		// A closed stream leaves the registry.
		c2()
		registered(t, r1, a.id.GetNodeId(), 1)
	})
}

// TestReplicasHolePunch: alpha, streaming from replica 1, asks for a hole punch with bravo, who
// streams from replica 2: bravo's stream carries it, with alpha's endpoints as bravo's map has
// them; a peer streaming nowhere is reported undelivered.
func TestReplicasHolePunch(t *testing.T) {
	r1, r2 := twoReplicas(t, domain.TenantSettings{})
	a := r1.enroll(t, r1.token(t, nil), "alpha")
	b := r2.enroll(t, r2.token(t, nil), "bravo")
	c := r1.enroll(t, r1.token(t, nil), "charlie") // never streams
	ach, acancel := a.watch(t, context.Background(), 0, "session-alpha")
	defer acancel()
	bch, bcancel := b.watch(t, context.Background(), 0, "session-bravo")
	defer bcancel()
	next(t, ach, 10*time.Second)
	next(t, bch, 10*time.Second)
	if _, err := a.ctl.ReportStatus(context.Background(), &nodev1.ReportStatusRequest{
		Endpoints: []*nodev1.Endpoint{{Address: "198.51.100.7:41641", Type: nodev1.EndpointType_ENDPOINT_TYPE_STUN}},
	}); err != nil {
		t.Fatal(err)
	}
	registered(t, r2, b.id.GetNodeId(), 1)
	// Bravo's map (on replica 2) learns alpha's endpoint.
	eventually(t, 10*time.Second, "alpha's endpoint in bravo's map", func() bool {
		for _, ms := range r2.p.streamsOf(b.id.GetNodeId()) {
			ms.mu.Lock()
			p, ok := ms.mirror.Peer(a.id.GetNodeId())
			ms.mu.Unlock()
			if ok && len(p.GetEndpoints()) == 1 {
				return true
			}
		}
		return false
	})

	start := time.Now()
	hp, err := a.ctl.RequestHolePunch(context.Background(), &nodev1.RequestHolePunchRequest{PeerNodeId: b.id.GetNodeId()})
	if err != nil || !hp.GetDelivered() {
		t.Fatalf("hole punch across replicas: %v %v, want delivered", hp, err)
	}
	for {
		r := next(t, bch, 5*time.Second)
		if r.err != nil {
			t.Fatal(r.err)
		}
		if h := r.msg.GetHolePunch(); h != nil {
			if h.GetPeerNodeId() != a.id.GetNodeId() || string(h.GetWireguardPublicKey()) != string(a.wg[:]) ||
				len(h.GetEndpoints()) != 1 || h.GetEndpoints()[0] != "198.51.100.7:41641" {
				t.Fatalf("hole punch message %v", h)
			}
			t.Logf("bravo's stream on replica 2 got alpha's hole punch %s after the request on replica 1", time.Since(start).Round(time.Millisecond))
			break
		}
	}
	// The request may also reach a replica that holds neither stream (a load balancer's choice).
	hp, err = a.as(t, r2).ctl.RequestHolePunch(context.Background(), &nodev1.RequestHolePunchRequest{PeerNodeId: b.id.GetNodeId()})
	if err != nil || !hp.GetDelivered() {
		t.Fatalf("hole punch through replica 2: %v %v", hp, err)
	}
	// Charlie streams from no replica.
	hp, err = a.ctl.RequestHolePunch(context.Background(), &nodev1.RequestHolePunchRequest{PeerNodeId: c.id.GetNodeId()})
	if err != nil || hp.GetDelivered() {
		t.Fatalf("hole punch to a node without a stream: %v %v, want not delivered", hp, err)
	}
	// Once bravo's stream ended, it is no longer delivered anywhere.
	bcancel()
	registered(t, r2, b.id.GetNodeId(), 0)
	hp, err = a.ctl.RequestHolePunch(context.Background(), &nodev1.RequestHolePunchRequest{PeerNodeId: b.id.GetNodeId()})
	if err != nil || hp.GetDelivered() {
		t.Fatalf("hole punch after bravo left: %v %v, want not delivered", hp, err)
	}
}

// TestRegistryExpiresDeadReplica: the streams of a replica that stopped heartbeating (crashed,
// without removing its rows) no longer count after three heartbeats: no conflict with them, and
// the live replica's heartbeat deletes them.
func TestRegistryExpiresDeadReplica(t *testing.T) {
	_, r2 := twoReplicas(t, domain.TenantSettings{QuarantineOnConflict: true})
	a := r2.enroll(t, r2.token(t, nil), "alpha")
	// A replica registered a stream of alpha, then crashed.
	now := time.Now()
	if _, err := r2.st.SyncMapStreams(context.Background(), store.StreamSync{
		ReplicaID: "crashed", Now: now, StaleBefore: now.Add(-time.Minute),
		Opened: []store.MapStream{{ID: "crashed-stream", NodeID: a.id.GetNodeId(), SessionID: "old-agent", Addr: "192.0.2.1:1", OpenTime: now}},
	}); err != nil {
		t.Fatal(err)
	}
	// Past 3 heartbeats (1.2 s) it no longer counts.
	time.Sleep(1500 * time.Millisecond)
	ch, cancel := a.watch(t, context.Background(), 0, "new-agent")
	defer cancel()
	if r := next(t, ch, 10*time.Second); r.err != nil {
		t.Fatal(r.err)
	}
	eventually(t, 5*time.Second, "dead replica's rows deleted", func() bool {
		ms, err := r2.st.MapStreams(context.Background(), a.id.GetNodeId(), time.Time{})
		return err == nil && len(ms) == 1 && ms[0].ReplicaID == r2.p.streamReg.id
	})
	if n := len(r2.audits(t, "NodeSessionConflict")); n != 0 {
		t.Fatalf("%d incidents against a dead replica's stream", n)
	}
}

// TestRegistryRejoinAfterExpiry: a replica that another one took for dead (a stall past the stale
// time) registers its live streams again at its next heartbeat, and a conflict that opened
// meanwhile is then raised.
func TestRegistryRejoinAfterExpiry(t *testing.T) {
	r1, r2 := twoReplicas(t, domain.TenantSettings{})
	a := r1.enroll(t, r1.token(t, nil), "alpha")
	ch, cancel := a.watch(t, context.Background(), 0, "first-agent")
	defer cancel()
	next(t, ch, 10*time.Second)
	registered(t, r1, a.id.GetNodeId(), 1)
	// A replica whose clock runs an hour ahead expires everyone else.
	now := time.Now()
	if _, err := r2.st.SyncMapStreams(context.Background(), store.StreamSync{ReplicaID: "janitor", Now: now, StaleBefore: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	registered(t, r1, a.id.GetNodeId(), 0)
	// A clone opening now cannot see the first stream yet ...
	ch2, cancel2 := a.as(t, r2).watch(t, context.Background(), 0, "cloned-agent")
	defer cancel2()
	if r := next(t, ch2, 10*time.Second); r.err != nil {
		t.Fatal(r.err)
	}
	// ... but replica 1 registers it again and judges it.
	registered(t, r1, a.id.GetNodeId(), 2)
	eventually(t, 10*time.Second, "incident audited", func() bool { return len(r1.audits(t, "NodeSessionConflict")) == 1 })
}
