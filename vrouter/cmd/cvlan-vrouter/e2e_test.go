package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.fd.io/govpp/binapi/ikev2"
	"go.fd.io/govpp/binapi/ip"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"
	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/control"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/vpp"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/vpp/vpptest"
)

// controllerBinary returns $CLOUDVLAN_BIN/cvlan-controller (make test-go) or builds it.
func controllerBinary(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("CLOUDVLAN_BIN"); d != "" {
		p := filepath.Join(d, "cvlan-controller")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	out := filepath.Join(t.TempDir(), "cvlan-controller")
	cmd := exec.Command("go", "build", "-o", out, "github.com/cloudvlan/cloudvlan/controller/cmd/cvlan-controller")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the controller (or set CLOUDVLAN_BIN): %v\n%s", err, b)
	}
	return out
}

var (
	nodePortRE  = regexp.MustCompile(`msg=listening port=node addr=(\S+)`)
	apiPortRE   = regexp.MustCompile(`msg=listening port=api addr=(\S+)`)
	bootstrapRE = regexp.MustCompile(`bootstrap admin API key: (cvk_[A-Za-z0-9_-]+)`)
	// appliedThreeRE is the vrouter's log line for a configuration of three connections applied.
	appliedThreeRE = regexp.MustCompile(`msg="vrouter configuration applied" version=\d+ connections=3 `)
)

// startController runs the real controller binary on loopback until the test ends and returns its
// node address, API address, bootstrap admin key and root CA file.
func startController(t *testing.T) (node, api, key, rootCA string) {
	t.Helper()
	dataDir := t.TempDir()
	p := proctest.Start(t, "controller", controllerBinary(t), "--data-dir", dataDir, "--api-addr", "127.0.0.1:0",
		"--node-addr", "127.0.0.1:0", "--metrics-addr", "127.0.0.1:0")
	return p.WaitFor(t, nodePortRE, 2*time.Minute)[1], p.WaitFor(t, apiPortRE, 2*time.Minute)[1],
		p.WaitFor(t, bootstrapRE, 2*time.Minute)[1], filepath.Join(dataDir, "ca", "root_ca.crt")
}

// eventually retries f until it returns nil or timeout passes, and fails the test with its last error.
func eventually(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := proctest.Eventually(timeout, f); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// vrouterProc is one in-process `cvlan-vrouter up` over its own mock VPP.
type vrouterProc struct {
	cancel context.CancelFunc
	done   chan error
	log    *proctest.Buffer
	rec    chan *vpptest.Recorder
	admin  chan net.Addr
}

func startVRouter(t *testing.T, args ...string) *vrouterProc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	p := &vrouterProc{cancel: cancel, done: make(chan error, 1), log: &proctest.Buffer{}, rec: make(chan *vpptest.Recorder, 1), admin: make(chan net.Addr, 1)}
	h := &hooks{dataplane: func(ctx context.Context, _ string, o vpp.Options) (control.Dataplane, func(), error) {
		conn, rec := vpptest.NewMockVPP(t)
		prog, err := vpp.New(conn, o)
		if err != nil {
			return nil, nil, err
		}
		p.rec <- rec
		return prog, func() { _ = prog.Close() }, nil
	}, ready: func(a net.Addr) { p.admin <- a }}
	go func() { p.done <- run(ctx, append([]string{"up"}, args...), io.Discard, p.log, h) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("vrouter log:\n%s", p.log.String())
		}
	})
	return p
}

// stop cancels the vrouter (as SIGTERM does) and returns what run returned; it is idempotent.
func (p *vrouterProc) stop(t *testing.T) error {
	p.cancel()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("the vrouter did not stop within 30 s")
		return nil
	}
}

// recorder waits for the mock VPP of p.
func (p *vrouterProc) recorder(t *testing.T) *vpptest.Recorder {
	t.Helper()
	select {
	case r := <-p.rec:
		return r
	case err := <-p.done:
		p.done <- err
		t.Fatalf("the vrouter exited before connecting to VPP: %v\n%s", err, p.log.String())
	case <-time.After(30 * time.Second):
		t.Fatal("the vrouter did not connect to VPP")
	}
	return nil
}

// profiles returns the IKEv2 profiles VPP was asked to create and the VRF tables it was asked to add.
func profiles(rec *vpptest.Recorder) (names []string, tables []uint32) {
	for _, r := range rec.Requests() {
		switch m := r.Msg.(type) {
		case *ikev2.Ikev2ProfileAddDel:
			if m.IsAdd {
				names = append(names, m.Name)
			}
		case *ip.IPTableAddDel:
			if m.IsAdd {
				tables = append(tables, m.Table.TableID)
			}
		}
	}
	return names, tables
}

func hasProfile(rec *vpptest.Recorder, name string) error {
	names, tables := profiles(rec)
	for _, n := range names {
		if n == name {
			if len(tables) == 0 {
				return errors.New("no VRF table created")
			}
			return nil
		}
	}
	return fmt.Errorf("VPP has IKEv2 profiles %v, not %q", names, name)
}

// TestRegistrationEndToEnd drives the whole vrouter registration through the real controller binary:
// create a vrouter and a join token in the API, `up` enrolls, programs the (mock) VPP, reports, follows
// changes, restarts from its state directory, and stops when the vrouter is deleted.
func TestRegistrationEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the controller binary; skipped with -short")
	}
	nodeAddr, apiAddr, key, rootCA := startController(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	hc, auth := proctest.APIClient(), proctest.Bearer(key)
	defer hc.CloseIdleConnections()
	base := "https://" + apiAddr
	tenants := cloudvlanv1connect.NewTenantServiceClient(hc, base, auth)
	regions := cloudvlanv1connect.NewRegionServiceClient(hc, base, auth)
	cvlans := cloudvlanv1connect.NewCvlanServiceClient(hc, base, auth)
	vrouters := cloudvlanv1connect.NewVRouterServiceClient(hc, base, auth)
	tokens := cloudvlanv1connect.NewJoinTokenServiceClient(hc, base, auth)

	// Step 1: tenant, region, cvlan, a vrouter with one IPsec connection and a vrouter join token.
	tn, err := tenants.CreateTenant(ctx, connect.NewRequest(&v1.CreateTenantRequest{Tenant: &v1.Tenant{Name: "acme"}}))
	if err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	tid := tn.Msg.GetTenant().GetId()
	rg, err := regions.CreateRegion(ctx, connect.NewRequest(&v1.CreateRegionRequest{Region: &v1.Region{Name: "lab", Code: "lab"}}))
	if err != nil {
		t.Fatalf("CreateRegion: %v", err)
	}
	cv, err := cvlans.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{TenantId: tid, Cvlan: &v1.Cvlan{Name: "prod"}}))
	if err != nil {
		t.Fatalf("CreateCvlan: %v", err)
	}
	hq := &v1.VRouterConnection{Name: "hq-fw", RemoteAddress: "203.0.113.50", LocalSubnets: []string{"100.64.0.0/10"},
		RemoteSubnets: []string{"10.20.0.0/16"}, PreSharedKey: "correct-horse-battery-staple"}
	vr, err := vrouters.CreateVRouter(ctx, connect.NewRequest(&v1.CreateVRouterRequest{TenantId: tid, Vrouter: &v1.VRouter{
		Name: "branch-gw", RegionId: rg.Msg.GetRegion().GetId(), CvlanId: cv.Msg.GetCvlan().GetId(), Connections: []*v1.VRouterConnection{hq},
	}}))
	if err != nil {
		t.Fatalf("CreateVRouter: %v", err)
	}
	vrID := vr.Msg.GetVrouter().GetId()
	jt, err := tokens.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{TenantId: tid, JoinToken: &v1.JoinToken{
		Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_VROUTER, TargetId: vrID,
	}}))
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	token := jt.Msg.GetSecret()
	get := func() *v1.VRouter {
		r, err := vrouters.GetVRouter(ctx, connect.NewRequest(&v1.GetVRouterRequest{TenantId: tid, Id: vrID}))
		if err != nil {
			t.Fatalf("GetVRouter: %v", err)
		}
		return r.Msg.GetVrouter()
	}

	// update replaces the connections with the etag just read. Status reports keep the vrouter's
	// etag (they are status writes), so this never fails with ABORTED while `up` reports.
	update := func(conns ...*v1.VRouterConnection) {
		t.Helper()
		if _, err := vrouters.UpdateVRouter(ctx, connect.NewRequest(&v1.UpdateVRouterRequest{TenantId: tid,
			Vrouter:    &v1.VRouter{Id: vrID, Etag: get().GetEtag(), Connections: conns},
			UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"connections"}}})); err != nil {
			t.Fatalf("UpdateVRouter: %v", err)
		}
	}

	// Step 2: `up` enrolls with the token, programs VPP and reports; the API shows it.
	stateDir := filepath.Join(t.TempDir(), "state")
	args := []string{"--controller", "https://" + nodeAddr, "--controller-ca", rootCA, "--state-dir", stateDir,
		"--uplink-interface", vpptest.Uplink, "--public-address", "198.51.100.7", "--admin-addr", "127.0.0.1:0",
		"--report-interval", "1s", "--log-level", "debug"}
	p := startVRouter(t, append(args, "--token", token)...)
	rec := p.recorder(t)
	eventually(t, time.Minute, "VPP receives the connection's IKEv2 profile and the tenant VRF", func() error { return hasProfile(rec, "hq-fw") })
	eventually(t, time.Minute, "the API shows the vrouter registered and its connection reported", func() error {
		v := get()
		if v.GetNodeId() == "" || v.GetStatus() != v1.VRouterStatus_V_ROUTER_STATUS_DEGRADED ||
			len(v.GetConnections()) != 1 || v.GetConnections()[0].GetStatus() != v1.VRouterConnectionStatus_V_ROUTER_CONNECTION_STATUS_CONNECTING {
			return fmt.Errorf("node %q status %v connections %v", v.GetNodeId(), v.GetStatus(), v.GetConnections())
		}
		return nil
	})
	// The legacy device comes up (VPP holds an authenticated IKE SA): the next report makes it ONLINE.
	rec.SetSAEstablished("hq-fw", true)
	eventually(t, time.Minute, "the API shows the vrouter ONLINE with the connection UP", func() error {
		v := get()
		if v.GetStatus() != v1.VRouterStatus_V_ROUTER_STATUS_ONLINE || v.GetConnections()[0].GetStatus() != v1.VRouterConnectionStatus_V_ROUTER_CONNECTION_STATUS_UP {
			return fmt.Errorf("status %v connections %v", v.GetStatus(), v.GetConnections())
		}
		return nil
	})
	// The admin endpoint serves gRPC health.
	gc, err := grpc.NewClient("passthrough:///"+(<-p.admin).String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	if hr, err := healthpb.NewHealthClient(gc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", hr, err)
	}
	_ = gc.Close()
	for _, f := range []string{"vrouter.key", "vrouter.crt", "root.pem", "identity.json", "wireguard.key"} {
		if st, err := os.Stat(filepath.Join(stateDir, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("state file %s: %v %v", f, st, err)
		}
	}

	// Step 3: a connection added in the API reaches VPP.
	hq.PreSharedKey = "" // keeps the key
	dc := &v1.VRouterConnection{Name: "dc-fw", RemoteAddress: "203.0.113.60", LocalSubnets: []string{"100.64.0.0/10"},
		RemoteSubnets: []string{"10.30.0.0/16"}, PreSharedKey: "another-long-secret-key"}
	added := time.Now()
	update(hq, dc)
	eventually(t, time.Minute, "the added connection reaches VPP", func() error { return hasProfile(rec, "dc-fw") })
	t.Logf("added connection reached VPP in %v", time.Since(added).Round(time.Millisecond))

	// A failed apply is logged and retried with backoff.
	rec.FailNext("ikev2_profile_add_del", -1)
	lab := &v1.VRouterConnection{Name: "lab-fw", RemoteAddress: "203.0.113.70", LocalSubnets: []string{"100.64.0.0/10"},
		RemoteSubnets: []string{"10.40.0.0/16"}, PreSharedKey: "yet-another-long-secret"}
	dc.PreSharedKey = ""
	update(hq, dc, lab)
	eventually(t, time.Minute, "the failed apply is logged, retried and then applied", func() error {
		log := p.log.String()
		failed := strings.Index(log, "applying the vrouter configuration failed")
		applied := appliedThreeRE.FindStringIndex(log)
		if names, _ := profiles(rec); failed < 0 || applied == nil || applied[0] < failed || strings.Count(strings.Join(names, " "), "lab-fw") != 2 {
			return fmt.Errorf("profiles %v, log:\n%s", names, log)
		}
		return nil
	})

	// `status` shows identity, certificate and connections from the state directory.
	var out strings.Builder
	eventually(t, 30*time.Second, "cvlan-vrouter status", func() error {
		out.Reset()
		if err := run(ctx, []string{"status", "--state-dir", stateDir}, &out, io.Discard, nil); err != nil {
			return err
		}
		for _, want := range []string{vrID, "valid until", "dc-fw", "hq-fw", "lab-fw", "up"} {
			if !strings.Contains(out.String(), want) {
				return fmt.Errorf("no %q in\n%s", want, out.String())
			}
		}
		return nil
	})

	// Step 4: SIGTERM stops it cleanly; a restart from the state directory needs no token.
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	// Periodic reports and re-sent versions must not apply the same content again (the initial
	// content, the added connection, and the retry of the failed one: three applies).
	if n := strings.Count(p.log.String(), "vrouter configuration applied"); n != 3 {
		t.Fatalf("%d applies, want 3 (initial, added connection, retry of the failed one)", n)
	}
	before := get().GetLastSeenTime().AsTime()
	p2 := startVRouter(t, args...)
	rec2 := p2.recorder(t)
	eventually(t, time.Minute, "the restarted vrouter programs VPP again", func() error {
		for _, n := range []string{"hq-fw", "dc-fw", "lab-fw"} {
			if err := hasProfile(rec2, n); err != nil {
				return err
			}
		}
		return nil
	})
	eventually(t, time.Minute, "the restarted vrouter reports", func() error {
		if v := get(); !v.GetLastSeenTime().AsTime().After(before) {
			return fmt.Errorf("last seen %v, not after %v", v.GetLastSeenTime().AsTime(), before)
		}
		return nil
	})

	// Step 5: the used token is refused with a clear error, before anything is saved.
	other := filepath.Join(t.TempDir(), "other")
	reuse := append(append([]string{"up"}, args...), "--token", token, "--state-dir", other, "--admin-addr", "") // later flags win
	err = run(ctx, reuse, io.Discard, io.Discard,
		&hooks{dataplane: func(context.Context, string, vpp.Options) (control.Dataplane, func(), error) {
			return nopDataplane{}, func() {}, nil
		}})
	if err == nil || !strings.Contains(err.Error(), "PermissionDenied") || !strings.Contains(err.Error(), "enroll") {
		t.Fatalf("reused token: %v", err)
	}
	if _, err := os.Stat(filepath.Join(other, "identity.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a refused enrollment left state: %v", err)
	}
	t.Logf("reused token: %v", err)

	// Step 6: deleting the vrouter in the API stops the running vrouter with the controller's refusal.
	if _, err := vrouters.DeleteVRouter(ctx, connect.NewRequest(&v1.DeleteVRouterRequest{TenantId: tid, Id: vrID})); err != nil {
		t.Fatalf("DeleteVRouter: %v", err)
	}
	select {
	case err := <-p2.done:
		p2.done <- err
		if !errors.Is(err, control.ErrRefused) || !strings.Contains(err.Error(), "Unauthenticated") {
			t.Fatalf("after delete: %v", err)
		}
		t.Logf("after delete: %v", err)
	case <-time.After(time.Minute):
		t.Fatalf("the vrouter kept running after its deletion:\n%s", p2.log.String())
	}
}

func nopConnect(context.Context, string, vpp.Options) (control.Dataplane, func(), error) {
	return nopDataplane{}, func() {}, nil
}

// nopDataplane stands in where VPP must not matter (refused enrollments).
type nopDataplane struct{}

func (nopDataplane) Apply(context.Context, *vrouterv1.WatchVRouterConfigResponse) error { return nil }
func (nopDataplane) Status(context.Context) ([]*vrouterv1.ConnectionStatus, error)      { return nil, nil }
