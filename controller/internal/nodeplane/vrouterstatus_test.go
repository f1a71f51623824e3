package nodeplane

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/cloudvlan/cloudvlan/controller/internal/api"
	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/proctest"
	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"
	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// apiServer serves the controller API on e's store and returns an HTTP client, the server's URL
// and a tenant_admin's credentials for it.
func apiServer(t *testing.T, e *env) (*http.Client, string, connect.ClientOption) {
	t.Helper()
	key, label, hash, err := auth.NewSecret(auth.APIKeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	err = e.st.Tx(context.Background(), store.TenantScope(e.tenant.ID), func(tx store.Tx) error {
		return tx.CreateAPIKey(context.Background(), &domain.APIKey{TenantID: e.tenant.ID, Name: "admin", Prefix: label, Hash: hash,
			Role: domain.RoleTenantAdmin, Scopes: []string{string(auth.ScopeRead), string(auth.ScopeWrite)}})
	})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	a, err := api.Mount(mux, api.Deps{Store: e.st, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); a.Close() })
	return srv.Client(), srv.URL, proctest.Bearer(key)
}

// apiVRouters serves the controller API on e's store and returns a tenant_admin's vrouter client.
func apiVRouters(t *testing.T, e *env) cloudvlanv1connect.VRouterServiceClient {
	t.Helper()
	hc, url, cred := apiServer(t, e)
	return cloudvlanv1connect.NewVRouterServiceClient(hc, url, cred)
}

// TestVRouterReportKeepsEtag: a connection status report changes what the API shows but not the
// vrouter's etag (an administrator's etag-guarded update still succeeds), records one
// vrouter_status event only when a state changed, and sends the vrouter no new configuration.
func TestVRouterReportKeepsEtag(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	v := &domain.VRouter{TenantID: e.tenant.ID, CvlanID: e.cvlan.ID, Name: "branch-gw", Connections: []domain.VRouterConnection{
		{Name: "hq-fw", RemoteAddress: "203.0.113.50", PreSharedKey: "correct-horse-battery-staple"},
		{Name: "dc-fw", RemoteAddress: "203.0.113.60", PreSharedKey: "another-long-secret-key"},
	}}
	if err := e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error { return tx.CreateVRouter(ctx, v) }); err != nil {
		t.Fatal(err)
	}
	vr, _ := e.enrollAs(t, e.token(t, func(j *domain.JoinToken) { j.Kind, j.TargetID = domain.NodeKindVRouter, v.ID }), "vrouter")
	control := vrouterv1.NewVRouterControlServiceClient(vr.cc)
	ws, err := control.WatchVRouterConfig(ctx, &vrouterv1.WatchVRouterConfigRequest{})
	if err != nil {
		t.Fatal(err)
	}
	configs := make(chan *vrouterv1.WatchVRouterConfigResponse, 8)
	go func() {
		defer close(configs)
		for {
			cfg, err := ws.Recv()
			if err != nil {
				return
			}
			configs <- cfg
		}
	}()
	first := <-configs
	vrouters := apiVRouters(t, e)
	get := func() *v1.VRouter {
		t.Helper()
		r, err := vrouters.GetVRouter(ctx, connect.NewRequest(&v1.GetVRouterRequest{Id: v.ID}))
		if err != nil {
			t.Fatal(err)
		}
		return r.Msg.GetVrouter()
	}
	before := get()
	report := func(hq, dc vrouterv1.ConnectionState) {
		t.Helper()
		if _, err := control.ReportConnectionStatus(ctx, &vrouterv1.ReportConnectionStatusRequest{AppliedVersion: first.GetVersion(),
			Connections: []*vrouterv1.ConnectionStatus{{Name: "hq-fw", State: hq}, {Name: "dc-fw", State: dc}}}); err != nil {
			t.Fatal(err)
		}
	}
	up, down := vrouterv1.ConnectionState_CONNECTION_STATE_UP, vrouterv1.ConnectionState_CONNECTION_STATE_DOWN
	steps := []struct {
		name       string
		hq, dc     vrouterv1.ConnectionState
		wantStatus v1.VRouterStatus
		wantUp     int32
		wantEvents int // vrouter_status events
	}{
		{"one up", up, down, v1.VRouterStatus_V_ROUTER_STATUS_DEGRADED, 1, 1},
		{"same again", up, down, v1.VRouterStatus_V_ROUTER_STATUS_DEGRADED, 1, 0},
		{"both up", up, up, v1.VRouterStatus_V_ROUTER_STATUS_ONLINE, 2, 1},
	}
	for _, st := range steps {
		head, err := e.st.LatestChangeID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		report(st.hq, st.dc)
		got := get()
		if got.GetEtag() != before.GetEtag() || !got.GetUpdateTime().AsTime().Equal(before.GetUpdateTime().AsTime()) {
			t.Fatalf("%s: etag %s, update time %v; want %s, %v", st.name, got.GetEtag(), got.GetUpdateTime().AsTime(), before.GetEtag(), before.GetUpdateTime().AsTime())
		}
		if got.GetStatus() != st.wantStatus || got.GetStats().GetConnectionsUp() != st.wantUp || got.GetStats().GetConnectionsTotal() != 2 ||
			got.GetConnections()[0].GetStatus() != v1.VRouterConnectionStatus_V_ROUTER_CONNECTION_STATUS_UP || got.GetLastSeenTime() == nil {
			t.Fatalf("%s: API shows %v", st.name, got)
		}
		evs, err := e.st.ChangesSince(ctx, head, 100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range evs {
			switch {
			case ev.ResourceType == domain.ResourceVRouterStatus && ev.ResourceID == v.ID:
				n++
			case ev.ResourceID == v.ID:
				t.Fatalf("%s: report recorded a %s event", st.name, ev.ResourceType)
			}
		}
		if n != st.wantEvents {
			t.Fatalf("%s: %d vrouter_status events, want %d", st.name, n, st.wantEvents)
		}
	}
	// The configuration did not change, so the vrouter hears nothing (a version bump would
	// have sent it the same configuration again).
	select {
	case cfg := <-configs:
		t.Fatalf("a status report sent a configuration: %v", cfg)
	case <-time.After(500 * time.Millisecond):
	}
	// The administrator's etag from before the reports is still current.
	upd := &v1.VRouter{Id: v.ID, Etag: before.GetEtag(), Description: "edited after reports"}
	r, err := vrouters.UpdateVRouter(ctx, connect.NewRequest(&v1.UpdateVRouterRequest{Vrouter: upd, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}}))
	if err != nil {
		t.Fatalf("update with the etag read before the reports: %v", err)
	}
	if r.Msg.GetVrouter().GetEtag() == before.GetEtag() || r.Msg.GetVrouter().GetStatus() != v1.VRouterStatus_V_ROUTER_STATUS_ONLINE {
		t.Fatalf("updated vrouter %v", r.Msg.GetVrouter())
	}
	select {
	case cfg := <-configs:
		if cfg.GetVersion() == first.GetVersion() {
			t.Fatalf("config after an update has the old version %d", cfg.GetVersion())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no configuration after an update")
	}
	// A vrouter that resumes with the current version as known_version gets nothing until the
	// next change; one with an older version gets the configuration at once.
	cur := uint64(0)
	if _, err := fmt.Sscanf(r.Msg.GetVrouter().GetEtag(), "v%d", &cur); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		known uint64
		want  bool
	}{{cur, false}, {first.GetVersion(), true}} {
		wctx, wcancel := context.WithTimeout(ctx, time.Second)
		s, err := control.WatchVRouterConfig(wctx, &vrouterv1.WatchVRouterConfigRequest{KnownVersion: tt.known})
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := s.Recv()
		wcancel()
		if got := err == nil; got != tt.want || (got && cfg.GetVersion() != cur) {
			t.Fatalf("known_version %d: config %v, err %v; want a config: %v", tt.known, cfg, err, tt.want)
		}
	}
}
