package e2e

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/apidesc"
)

// TestGrpcurlListsEveryService runs the real grpcurl against the built controller: `list` must show every
// service of proto/cloudvlan/v1 and `describe` must print a message.
func TestGrpcurlListsEveryService(t *testing.T) {
	p := startController(t)
	grpcurl := binary(t, "grpcurl")
	out, err := run(t, 30*time.Second, grpcurl, "-insecure", p.addr("api"), "list")
	if err != nil {
		t.Fatalf("grpcurl list: %v\n%s", err, out)
	}
	listed := strings.Fields(out)
	want := apidesc.Services(apidesc.UserAPI)
	if len(want) < 10 {
		t.Fatalf("only %d services in cloudvlan.v1: %v", len(want), want)
	}
	for _, svc := range want {
		if !slices.Contains(listed, svc) {
			t.Errorf("grpcurl list does not show %s; it shows:\n%s", svc, out)
		}
	}
	if !slices.Contains(listed, "grpc.health.v1.Health") {
		t.Errorf("grpcurl list does not show grpc.health.v1.Health")
	}

	out, err = run(t, 30*time.Second, grpcurl, "-insecure", p.addr("api"), "describe", "cloudvlan.v1.Tenant")
	if err != nil {
		t.Fatalf("grpcurl describe: %v\n%s", err, out)
	}
	if !strings.Contains(out, "cloudvlan.v1.Tenant is a message") || !strings.Contains(out, "string id = 1") {
		t.Errorf("grpcurl describe cloudvlan.v1.Tenant printed:\n%s", out)
	}

	out, err = run(t, 30*time.Second, grpcurl, "-insecure", p.addr("api"), "grpc.health.v1.Health/Check")
	if err != nil || !strings.Contains(out, "SERVING") {
		t.Errorf("health check: %v\n%s", err, out)
	}
}

// TestControllerExitsCleanlyOnSIGTERM checks the graceful shutdown path.
func TestControllerExitsCleanlyOnSIGTERM(t *testing.T) {
	p := startController(t)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("controller exited with %v after SIGTERM\n%s", err, p.log.String())
		}
		p.done <- nil // let the cleanup see it exited
	case <-time.After(20 * time.Second):
		t.Fatal("controller did not exit within 20s of SIGTERM")
	}
	if !strings.Contains(p.log.String(), "msg=stopped") {
		t.Errorf("no clean stop logged:\n%s", p.log.String())
	}
}
