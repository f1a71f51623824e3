package nodeplane

import (
	"context"
	"crypto/tls"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// enrollAs enrolls with a relay or vrouter token and returns the identity and a client connection
// presenting the new certificate.
func (e *env) enrollAs(t testing.TB, secret, kind string) (*agent, *nodev1.EnrollResponse) {
	t.Helper()
	a := &agent{wg: randWG(t), key: newKey(t)}
	ctx := metadata.AppendToOutgoingContext(context.Background(), strings.ToLower(IdentityKindHeader), kind)
	resp, err := nodev1.NewEnrollmentServiceClient(e.dial(t, nil)).Enroll(ctx, e.enrollReq(t, secret, a.key, a.wg, kind+"-host"))
	if err != nil {
		t.Fatalf("enroll %s: %v", kind, err)
	}
	a.id = resp.GetIdentity()
	a.setChain(resp.GetCertificateChainDer())
	a.cc = e.dial(t, func() *tls.Certificate { return a.cert.Load() })
	a.ctl = nodev1.NewControlServiceClient(a.cc)
	return a, resp
}

func TestRelayRegistration(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	region := &domain.Region{Name: "frankfurt", Code: "eu-central"}
	if err := e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateRegion(ctx, region) }); err != nil {
		t.Fatal(err)
	}
	r1 := &domain.Relay{TenantID: e.tenant.ID, RegionID: region.ID, Name: "relay-1"}
	r2 := &domain.Relay{TenantID: e.tenant.ID, RegionID: region.ID, Name: "relay-2", Addresses: []string{"relay2.example:443"}}
	err := e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error {
		if err := tx.CreateRelay(ctx, r1); err != nil {
			return err
		}
		return tx.CreateRelay(ctx, r2)
	})
	if err != nil {
		t.Fatal(err)
	}
	node := e.enroll(t, e.token(t, nil), "alpha")
	nch, ncancel := node.watch(t, ctx, 0, "session-alpha")
	defer ncancel()
	var nst netmapstate.State
	applyAck(t, node, &nst, next(t, nch, 5*time.Second).msg)

	relay, resp := e.enrollAs(t, e.token(t, func(j *domain.JoinToken) { j.Kind, j.TargetID = domain.NodeKindRelay, r1.ID }), "relay")
	if resp.GetIdentity().GetKind() != nodev1.IdentityKind_IDENTITY_KIND_RELAY || resp.GetIdentity().GetResourceId() != r1.ID ||
		!strings.HasSuffix(resp.GetIdentity().GetSpiffeId(), "/relay/"+r1.ID) {
		t.Fatalf("relay identity %v", resp.GetIdentity())
	}
	client := relayv1.NewRelayControlServiceClient(relay.cc)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	ws, err := client.WatchRelayConfig(wctx, &relayv1.WatchRelayConfigRequest{Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ws.Recv()
	if err != nil || cfg.GetRegionId() != region.ID || len(cfg.GetMeshPeers()) != 1 || cfg.GetMeshPeers()[0].GetUrl() != "https://relay2.example:443/relay" {
		t.Fatalf("relay config %v %v", cfg, err)
	}
	_, err = client.ReportRelayStatus(ctx, &relayv1.ReportRelayStatusRequest{
		Urls: []string{"https://relay1.example:8443/relay"}, StunAddress: "203.0.113.1:3478", Version: "test",
		Counters: &relayv1.RelayCounters{ConnectedClients: 3, BytesForwarded: 1000, Drops: map[string]uint64{"queue_full": 2}},
	})
	if err != nil {
		t.Fatal(err)
	}
	var stored *domain.Relay
	_ = e.st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error { stored, err = tx.GetRelay(ctx, r1.ID); return err })
	if stored.Status != domain.RelayOnline || stored.Stats.ConnectedClients != 3 || stored.STUNAddress != "203.0.113.1:3478" || stored.Addresses[0] != "relay1.example:8443" {
		t.Fatalf("stored relay %+v", stored)
	}
	// Nodes' relay maps now list the registered relay.
	deadline := time.Now().Add(5 * time.Second)
	for {
		rm := nst.Map().GetRelayMap()
		if len(rm.GetRegions()) == 1 && len(rm.GetRegions()[0].GetRelays()) == 2 && rm.GetRegions()[0].GetCode() == "eu-central" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("relay map %v", rm)
		}
		applyAck(t, node, &nst, next(t, nch, 5*time.Second).msg)
	}
	// A relay cannot watch a network map, and a node cannot use the relay service.
	if _, err := relay.ctl.ReportStatus(ctx, &nodev1.ReportStatusRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("relay calling ReportStatus: %v", err)
	}
	if _, err := relayv1.NewRelayControlServiceClient(node.cc).ReportRelayStatus(ctx, &relayv1.ReportRelayStatusRequest{Urls: []string{"https://x:1/relay"}}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("node calling ReportRelayStatus: %v", err)
	}
	// Deleting the relay ends its configuration stream and refuses its certificate.
	if err := e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error { return tx.DeleteRelay(ctx, r1.ID, 0) }); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := ws.Recv()
		if err != nil {
			if status.Code(err) != codes.Unauthenticated {
				t.Fatalf("relay stream after deletion: %v", err)
			}
			break
		}
	}
}

func TestVRouterRegistration(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	v := &domain.VRouter{TenantID: e.tenant.ID, CvlanID: e.cvlan.ID, Name: "branch-gw", Connections: []domain.VRouterConnection{{
		Name: "hq-fw", RemoteAddress: "203.0.113.50", PreSharedKey: "correct-horse-battery-staple",
		LocalSubnets: []netip.Prefix{netip.MustParsePrefix("100.64.0.0/10")}, RemoteSubnets: []netip.Prefix{netip.MustParsePrefix("10.20.0.0/16")},
	}}}
	if err := e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error { return tx.CreateVRouter(ctx, v) }); err != nil {
		t.Fatal(err)
	}
	vr, resp := e.enrollAs(t, e.token(t, func(j *domain.JoinToken) { j.Kind, j.TargetID = domain.NodeKindVRouter, v.ID }), "vrouter")
	if resp.GetIdentity().GetKind() != nodev1.IdentityKind_IDENTITY_KIND_VROUTER || resp.GetIdentity().GetNodeId() == "" || resp.GetIdentity().GetIpv4Address() == "" {
		t.Fatalf("vrouter identity %v", resp.GetIdentity())
	}
	client := vrouterv1.NewVRouterControlServiceClient(vr.cc)
	wctx, wcancel := context.WithCancel(ctx)
	defer wcancel()
	ws, err := client.WatchVRouterConfig(wctx, &vrouterv1.WatchVRouterConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ws.Recv()
	if err != nil || cfg.GetVrf().GetTenantId() != e.tenant.ID || cfg.GetVrf().GetTableId() == 0 || len(cfg.GetConnections()) != 1 ||
		cfg.GetConnections()[0].GetPreSharedKey() != "correct-horse-battery-staple" || cfg.GetConnections()[0].GetRemoteSubnets()[0] != "10.20.0.0/16" {
		t.Fatalf("vrouter config %v %v", cfg, err)
	}
	if _, err := client.ReportConnectionStatus(ctx, &vrouterv1.ReportConnectionStatusRequest{AppliedVersion: cfg.GetVersion(),
		Connections: []*vrouterv1.ConnectionStatus{{Name: "hq-fw", State: vrouterv1.ConnectionState_CONNECTION_STATE_UP}}}); err != nil {
		t.Fatal(err)
	}
	var stored *domain.VRouter
	_ = e.st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error { stored, err = tx.GetVRouter(ctx, v.ID); return err })
	if stored.Status != domain.VRouterOnline || stored.Connections[0].Status != "up" || stored.NodeID != resp.GetIdentity().GetNodeId() {
		t.Fatalf("stored vrouter %+v", stored)
	}
	// The vrouter's mesh side streams a network map like any node.
	ch, cancel := vr.watch(t, ctx, 0, "vrouter-session")
	defer cancel()
	r := next(t, ch, 5*time.Second)
	if r.err != nil || r.msg.GetSnapshot().GetSelf().GetNodeId() != stored.NodeID {
		t.Fatalf("vrouter map: %v %v", r.msg, r.err)
	}
	// A config change reaches the vrouter.
	_ = e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error {
		cur, err := tx.GetVRouter(ctx, v.ID)
		if err != nil {
			return err
		}
		cur.Connections = append(cur.Connections, domain.VRouterConnection{Name: "dc-fw", RemoteAddress: "203.0.113.60", PreSharedKey: "another-long-secret-key"})
		return tx.UpdateVRouter(ctx, cur)
	})
	for {
		cfg, err = ws.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if len(cfg.GetConnections()) == 2 {
			break
		}
	}
}
