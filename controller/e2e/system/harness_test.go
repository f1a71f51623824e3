// Package system is a multi-process system test: the built cvlan-controller, cvlan-relay and
// cvlan-agent binaries (make build) on loopback, driven through the real API.
package system

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"
)

// builtBinary returns bin/<name> as built by `make build`, or fails with what to run.
func builtBinary(t *testing.T, name string) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(os.Getenv("CLOUDVLAN_BIN"), name), filepath.Join(root, "bin", name)} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	t.Fatalf("%s is not built: run `make build` first (it writes bin/%s)", name, name)
	return ""
}

// controller is a started cvlan-controller and what its output told.
type controller struct {
	*proctest.Proc
	nodeAddr, apiAddr, key, rootCA string
}

// startController runs the controller binary with a fresh data directory, its node port on
// nodeListen and the API and metrics ports on loopback, and waits for its addresses and the
// bootstrap admin key.
func startController(t *testing.T, bin, nodeListen string, extraArgs ...string) *controller {
	t.Helper()
	dataDir := t.TempDir()
	args := append([]string{"--data-dir", dataDir, "--api-addr", "127.0.0.1:0", "--node-addr", nodeListen,
		"--metrics-addr", "127.0.0.1:0"}, extraArgs...)
	p := proctest.Start(t, "controller", bin, args...)
	return &controller{
		Proc:     p,
		nodeAddr: p.WaitFor(t, listeningRE, time.Minute)[1],
		apiAddr:  p.WaitFor(t, apiRE, time.Minute)[1],
		key:      p.WaitFor(t, bootstrapRE, 30*time.Second)[1],
		rootCA:   filepath.Join(dataDir, "ca", "root_ca.crt"),
	}
}

// clients are the API clients the system tests use, as the bootstrap super_admin.
type clients struct {
	regions  cloudvlanv1connect.RegionServiceClient
	relays   cloudvlanv1connect.RelayServiceClient
	tokens   cloudvlanv1connect.JoinTokenServiceClient
	tenants  cloudvlanv1connect.TenantServiceClient
	cvlans   cloudvlanv1connect.CvlanServiceClient
	policies cloudvlanv1connect.PolicyServiceClient
	nodes    cloudvlanv1connect.NodeServiceClient
}

// api returns clients of c's API port with its bootstrap admin key.
func (c *controller) api() clients {
	base, hc, auth := "https://"+c.apiAddr, proctest.APIClient(), proctest.Bearer(c.key)
	return clients{
		regions:  cloudvlanv1connect.NewRegionServiceClient(hc, base, auth),
		relays:   cloudvlanv1connect.NewRelayServiceClient(hc, base, auth),
		tokens:   cloudvlanv1connect.NewJoinTokenServiceClient(hc, base, auth),
		tenants:  cloudvlanv1connect.NewTenantServiceClient(hc, base, auth),
		cvlans:   cloudvlanv1connect.NewCvlanServiceClient(hc, base, auth),
		policies: cloudvlanv1connect.NewPolicyServiceClient(hc, base, auth),
		nodes:    cloudvlanv1connect.NewNodeServiceClient(hc, base, auth),
	}
}

// freePort returns a loopback TCP port that was free a moment ago (for addresses that must be
// known before the process starts, like the relay's, which goes into its certificate).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
