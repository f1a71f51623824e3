package control

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	"github.com/cloudvlan/cloudvlan/controller/nodeclient/nodeclienttest"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// fakeVRouterControl streams one configuration and records reports; refuse makes it answer
// Unauthenticated the way the controller does for a deleted vrouter.
type fakeVRouterControl struct {
	vrouterv1.UnimplementedVRouterControlServiceServer
	cfg *vrouterv1.WatchVRouterConfigResponse

	// endStream ends each stream after its configuration, as a controller restart would.
	endStream bool

	mu      sync.Mutex
	refuse  bool
	known   []uint64
	reports []*vrouterv1.ReportConnectionStatusRequest
}

func (f *fakeVRouterControl) refused() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refuse
}

func (f *fakeVRouterControl) WatchVRouterConfig(req *vrouterv1.WatchVRouterConfigRequest, s grpc.ServerStreamingServer[vrouterv1.WatchVRouterConfigResponse]) error {
	f.mu.Lock()
	f.known = append(f.known, req.GetKnownVersion())
	f.mu.Unlock()
	if f.refused() {
		return status.Error(codes.Unauthenticated, "vrouter v1 was deleted")
	}
	if req.GetKnownVersion() != f.cfg.GetVersion() {
		if err := s.Send(f.cfg); err != nil {
			return err
		}
	}
	if f.endStream {
		return status.Error(codes.Unavailable, "controller shutting down")
	}
	<-s.Context().Done()
	return nil
}

func (f *fakeVRouterControl) ReportConnectionStatus(ctx context.Context, req *vrouterv1.ReportConnectionStatusRequest) (*vrouterv1.ReportConnectionStatusResponse, error) {
	if nodeclienttest.CallerURI(ctx) == "" {
		return nil, status.Error(codes.Unauthenticated, "no client certificate")
	}
	if f.refused() {
		return nil, status.Error(codes.Unauthenticated, "vrouter v1 is revoked")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reports = append(f.reports, req)
	return &vrouterv1.ReportConnectionStatusResponse{}, nil
}

func (f *fakeVRouterControl) lastReport() *vrouterv1.ReportConnectionStatusRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reports) == 0 {
		return nil
	}
	return f.reports[len(f.reports)-1]
}

// flakyDataplane fails its first Apply.
type flakyDataplane struct {
	mu      sync.Mutex
	applied []uint64
	calls   int
}

func (d *flakyDataplane) Apply(_ context.Context, cfg *vrouterv1.WatchVRouterConfigResponse) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.calls++; d.calls == 1 {
		return errors.New("vpp: ikev2_profile_add_del: retval -1")
	}
	d.applied = append(d.applied, cfg.GetVersion())
	return nil
}

func (d *flakyDataplane) Status(context.Context) ([]*vrouterv1.ConnectionStatus, error) {
	return []*vrouterv1.ConnectionStatus{{Name: "hq-fw", State: vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING}}, nil
}

func dial(t *testing.T, f *fakeVRouterControl) *nodeclient.Client {
	t.Helper()
	c := nodeclienttest.Start(t, time.Hour, &nodev1.NodeIdentity{Kind: nodev1.IdentityKind_IDENTITY_KIND_VROUTER, ResourceId: "v1", SpiffeId: "spiffe://td/tenant/t1/vrouter/v1"},
		func(s *grpc.Server) { vrouterv1.RegisterVRouterControlServiceServer(s, f) })
	cl := c.Client(t, nodev1.IdentityKind_IDENTITY_KIND_VROUTER)
	cl.MinBackoff, cl.MaxBackoff = 10*time.Millisecond, 50*time.Millisecond
	return cl
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestApplyFailureIsReportedDownRetriedAndRefusalEndsRun(t *testing.T) {
	f := &fakeVRouterControl{cfg: &vrouterv1.WatchVRouterConfigResponse{Version: 7, Vrf: &vrouterv1.Vrf{TableId: 9, TenantId: "t1"},
		Connections: []*vrouterv1.IpsecConnection{{Name: "hq-fw", RemoteAddress: "203.0.113.50", PreSharedKey: "correct-horse-battery-staple"}}}}
	cl := dial(t, f)
	dp := &flakyDataplane{}
	statusFile := filepath.Join(t.TempDir(), "status.json")
	done := make(chan error, 1)
	go func() {
		done <- Run(context.Background(), cl, dp, Options{ReportInterval: 100 * time.Millisecond, MinRetry: 20 * time.Millisecond, StatusFile: statusFile})
	}()

	// The failed apply is reported at once: nothing applied, every connection DOWN.
	waitFor(t, "a report after the failed apply", func() bool { return f.lastReport() != nil })
	f.mu.Lock()
	first := f.reports[0]
	f.mu.Unlock()
	if first.GetAppliedVersion() != 0 || len(first.GetConnections()) != 1 || first.GetConnections()[0].GetState() != vrouterv1.ConnectionState_CONNECTION_STATE_DOWN {
		t.Fatalf("report after a failed apply: %v", first)
	}
	// The retry applies it; reports then carry the version and the data plane's states.
	waitFor(t, "a report after the retried apply", func() bool {
		r := f.lastReport()
		return r.GetAppliedVersion() == 7 && r.GetConnections()[0].GetState() == vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING
	})
	waitFor(t, "the status file", func() bool {
		s, err := ReadStatus(statusFile)
		return err == nil && s.AppliedVersion == 7 && s.VRouterID == "v1" && len(s.Connections) == 1 && s.Connections[0].State == "connecting" && s.ApplyError == ""
	})
	// Periodic reports do not re-apply the same configuration.
	n := len(f.reports)
	waitFor(t, "two periodic reports", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.reports) >= n+2 })
	dp.mu.Lock()
	applied := dp.applied
	dp.mu.Unlock()
	if len(applied) != 1 || applied[0] != 7 {
		t.Fatalf("applied %v, want [7]", applied)
	}

	// The controller refuses the vrouter: Run ends with ErrRefused.
	f.mu.Lock()
	f.refuse = true
	f.mu.Unlock()
	select {
	case err := <-done:
		if !errors.Is(err, ErrRefused) {
			t.Fatalf("Run = %v, want ErrRefused", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not end after the refusal")
	}
}

func TestWatchRefusalEndsRunAndContextEndsItCleanly(t *testing.T) {
	f := &fakeVRouterControl{refuse: true}
	cl := dial(t, f)
	err := Run(context.Background(), cl, &flakyDataplane{}, Options{})
	if !errors.Is(err, ErrRefused) || status.Code(err) != codes.Unauthenticated {
		t.Fatalf("Run = %v, want ErrRefused", err)
	}

	ok := &fakeVRouterControl{cfg: &vrouterv1.WatchVRouterConfigResponse{Version: 1}}
	cl = dial(t, ok)
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if err := Run(ctx, cl, &flakyDataplane{}, Options{}); err != nil {
		t.Fatalf("Run until the context ends = %v, want nil", err)
	}
}

// A broken stream is reopened with the applied version, which the controller does not send again.
func TestStreamResumesWithKnownVersion(t *testing.T) {
	f := &fakeVRouterControl{endStream: true, cfg: &vrouterv1.WatchVRouterConfigResponse{Version: 3, Vrf: &vrouterv1.Vrf{TableId: 9}}}
	cl := dial(t, f)
	dp := &flakyDataplane{calls: 1} // no failure
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cl, dp, Options{}) }()
	waitFor(t, "three streams", func() bool { f.mu.Lock(); defer f.mu.Unlock(); return len(f.known) >= 3 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.known[0] != 0 || f.known[len(f.known)-1] != 3 {
		t.Fatalf("known versions %v, want 0 then 3", f.known)
	}
	if len(dp.applied) != 1 {
		t.Fatalf("applied %v, want once", dp.applied)
	}
}
