package system

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
)

// netnsHelperEnv makes the re-executed test binary run a small network program (TestNetNSHelperProcess)
// inside a namespace instead of the tests, so the test needs no netcat on the machine.
const netnsHelperEnv = "CVLAN_NETNS_HELPER"

// TestNetNSHelperProcess is not a test: it is the body of the re-executed test binary when
// CVLAN_NETNS_HELPER is set ("echo-server ADDR" or "tcp-echo ADDR"); otherwise it returns at once.
func TestNetNSHelperProcess(t *testing.T) {
	mode, arg, ok := strings.Cut(os.Getenv(netnsHelperEnv), " ")
	if !ok {
		return
	}
	switch mode {
	case "echo-server":
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				os.Exit(1)
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	case "tcp-echo":
		c, err := net.DialTimeout("tcp", arg, 3*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		msg := []byte("through the tunnel")
		if _, err := c.Write(msg); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			fmt.Fprintln(os.Stderr, "echo:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(2)
}

// netnsRun runs a command and fails the test with its output if it fails.
func netnsRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// netnsAgentStatus is the part of `cvlan-agent status --json` the test reads.
type netnsAgentStatus struct {
	Name      string   `json:"name"`
	Addresses []string `json:"addresses"`
	Peers     []struct {
		Name string `json:"name"`
		Path string `json:"path"`
	} `json:"peers"`
}

// TestNetNSRealController runs the real controller and the registered relay in the root namespace
// and three TUN-mode agents in three network namespaces joined by a bridge: TCP between every pair
// over the overlay; with UDP between two agents blocked by nftables they reach each other through the
// relay; unblocked, the path upgrades to direct; with the controller SIGKILLed traffic keeps flowing.
func TestNetNSRealController(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process system test; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs, TUN devices and nftables rules")
	}
	for _, tool := range []string{"ip", "nft", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (Debian packages iproute2, nftables, iputils-ping)", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	ctlBin, relayBin, agentBin := builtBinary(t, "cvlan-controller"), builtBinary(t, "cvlan-relay"), builtBinary(t, "cvlan-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Topology: bridge br in the root namespace with 10.202.0.1/24 (controller and relay), three
	// namespaces with 10.202.0.11-13 on veth pairs attached to it.
	pfx := fmt.Sprintf("cvs%d", os.Getpid()%100000)
	br := pfx + "b"
	netnsRun(t, "ip", "link", "add", br, "type", "bridge")
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", br).Run() })
	netnsRun(t, "ip", "addr", "add", "10.202.0.1/24", "dev", br)
	netnsRun(t, "ip", "link", "set", br, "up")
	var nss []string
	for i := 1; i <= 3; i++ {
		ns := fmt.Sprintf("%sn%d", pfx, i)
		veth := fmt.Sprintf("%sv%d", pfx, i)
		netnsRun(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		netnsRun(t, "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", veth)
		t.Cleanup(func() { _ = exec.Command("ip", "link", "del", veth).Run() })
		netnsRun(t, "ip", "link", "set", veth, "master", br, "up")
		netnsRun(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.202.0.%d/24", 10+i), "dev", "eth0")
		netnsRun(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		netnsRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
		nss = append(nss, ns)
	}

	// Controller: API on loopback (for the test), node port on the bridge.
	ctl := startController(t, ctlBin, "10.202.0.1:0", "--server-name", "10.202.0.1")
	nodeAddr, rootCA, api := ctl.nodeAddr, ctl.rootCA, ctl.api()

	tn, err := api.tenants.CreateTenant(ctx, connect.NewRequest(&v1.CreateTenantRequest{Tenant: &v1.Tenant{Name: "netns"}}))
	if err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	tid := tn.Msg.GetTenant().GetId()
	rg, err := api.regions.CreateRegion(ctx, connect.NewRequest(&v1.CreateRegionRequest{Region: &v1.Region{Name: "lab", Code: "lab"}}))
	if err != nil {
		t.Fatalf("CreateRegion: %v", err)
	}
	ln, err := net.Listen("tcp", "10.202.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	relayAddr := ln.Addr().String()
	ln.Close()
	rl, err := api.relays.CreateRelay(ctx, connect.NewRequest(&v1.CreateRelayRequest{TenantId: tid, Relay: &v1.Relay{
		Name: "relay-1", RegionId: rg.Msg.GetRegion().GetId(), Addresses: []string{relayAddr},
	}}))
	if err != nil {
		t.Fatalf("CreateRelay: %v", err)
	}
	relayID := rl.Msg.GetRelay().GetId()
	rt, err := api.tokens.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{TenantId: tid, JoinToken: &v1.JoinToken{
		Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_RELAY, TargetId: relayID,
	}}))
	if err != nil {
		t.Fatalf("CreateJoinToken(relay): %v", err)
	}
	proctest.Start(t, "relay", relayBin, "up", "--controller", "https://"+nodeAddr, "--controller-ca", rootCA, "--state-dir",
		filepath.Join(t.TempDir(), "relay"), "--listen", relayAddr, "--stun-listen", "10.202.0.1:0", "--admin-listen", "",
		"--token", rt.Msg.GetSecret())
	if err := proctest.Eventually(30*time.Second, func() error {
		r, err := api.relays.GetRelay(ctx, connect.NewRequest(&v1.GetRelayRequest{TenantId: tid, Id: relayID}))
		if err != nil {
			return err
		}
		if s := r.Msg.GetRelay().GetStatus(); s != v1.RelayStatus_RELAY_STATUS_ONLINE {
			return fmt.Errorf("relay status %v", s)
		}
		return nil
	}); err != nil {
		t.Fatalf("relay ONLINE: %v", err)
	}

	cv, err := api.cvlans.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{TenantId: tid, Cvlan: &v1.Cvlan{Name: "prod", DnsDomain: "netns.test"}}))
	if err != nil {
		t.Fatalf("CreateCvlan: %v", err)
	}
	cvID := cv.Msg.GetCvlan().GetId()
	anyT := []*v1.PolicyTarget{{Target: &v1.PolicyTarget_Any{Any: true}}}
	if _, err := api.policies.CreatePolicy(ctx, connect.NewRequest(&v1.CreatePolicyRequest{TenantId: tid, Policy: &v1.Policy{
		Name: "all", Enabled: true, CvlanId: cvID, Rules: []*v1.PolicyRule{{Name: "all", Action: v1.PolicyAction_POLICY_ACTION_ALLOW,
			Protocol: v1.Protocol_PROTOCOL_ANY, Sources: anyT, Destinations: anyT}},
	}})); err != nil {
		t.Fatalf("CreatePolicy: %v", err)
	}

	// UDP between ns1 and ns2 is blocked from the start (in ns1, both directions).
	rules := filepath.Join(t.TempDir(), "block.nft")
	if err := os.WriteFile(rules, []byte(`table inet cvsblock {
  chain out { type filter hook output priority 0; ip daddr 10.202.0.12 meta l4proto udp drop; }
  chain in { type filter hook input priority 0; ip saddr 10.202.0.12 meta l4proto udp drop; }
}
`), 0o600); err != nil {
		t.Fatal(err)
	}
	netnsRun(t, "ip", "netns", "exec", nss[0], "nft", "-f", rules)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "exec", nss[0], "nft", "delete", "table", "inet", "cvsblock").Run()
	})

	// Three TUN-mode agents, one per namespace, and a TCP echo server in each.
	var dirs []string
	for i, ns := range nss {
		jt, err := api.tokens.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{TenantId: tid, JoinToken: &v1.JoinToken{
			Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: cvID,
		}}))
		if err != nil {
			t.Fatalf("CreateJoinToken(node): %v", err)
		}
		dir := filepath.Join(t.TempDir(), "agent")
		dirs = append(dirs, dir)
		proctest.Start(t, fmt.Sprintf("agent-%d", i+1), "ip", "netns", "exec", ns, agentBin, "up", "--controller", "https://"+nodeAddr,
			"--token", jt.Msg.GetSecret(), "--controller-ca", rootCA, "--state-dir", dir, "--tun", "cvlan0",
			"--name", fmt.Sprintf("n%d", i+1), "--log-level", "debug")
		echo := exec.Command("ip", "netns", "exec", ns, os.Args[0], "-test.run=^TestNetNSHelperProcess$")
		echo.Env = append(os.Environ(), netnsHelperEnv+"=echo-server 0.0.0.0:7")
		if err := echo.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = echo.Wait(); close(exited) }()
		t.Cleanup(func() { _ = echo.Process.Kill(); <-exited })
	}

	// Step 1: all three agents ONLINE through the API.
	if err := proctest.Eventually(90*time.Second, func() error {
		r, err := api.nodes.ListNodes(ctx, connect.NewRequest(&v1.ListNodesRequest{TenantId: tid}))
		if err != nil {
			return err
		}
		online := 0
		for _, n := range r.Msg.GetNodes() {
			if n.GetStatus() == v1.NodeStatus_NODE_STATUS_ONLINE {
				online++
			}
		}
		if online != 3 {
			return fmt.Errorf("%d of %d nodes online", online, len(r.Msg.GetNodes()))
		}
		return nil
	}); err != nil {
		t.Fatalf("step 1 three agents ONLINE via ListNodes: %v", err)
	}
	t.Log("step 1 passed: three agents online")

	status := func(i int) (netnsAgentStatus, error) {
		var s netnsAgentStatus
		out, err := exec.Command(agentBin, "status", "--json", "--state-dir", dirs[i]).Output()
		if err != nil {
			return s, fmt.Errorf("cvlan-agent status: %w", err)
		}
		return s, json.Unmarshal(out, &s)
	}
	overlay := make([]string, 3)
	if err := proctest.Eventually(30*time.Second, func() error {
		for i := range 3 {
			s, err := status(i)
			if err != nil {
				return err
			}
			if len(s.Addresses) == 0 || len(s.Peers) != 2 {
				return fmt.Errorf("agent %d: addresses %v, %d peers", i+1, s.Addresses, len(s.Peers))
			}
			overlay[i], _, _ = strings.Cut(s.Addresses[0], "/")
		}
		return nil
	}); err != nil {
		t.Fatalf("agent status: %v", err)
	}
	reach := func(from, to int) error {
		cmd := exec.Command("ip", "netns", "exec", nss[from], os.Args[0], "-test.run=^TestNetNSHelperProcess$")
		cmd.Env = append(os.Environ(), netnsHelperEnv+"=tcp-echo "+net.JoinHostPort(overlay[to], "7"))
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("tcp echo n%d -> n%d (%s): %v: %s", from+1, to+1, overlay[to], err, out)
		}
		return nil
	}
	reachAll := func(step string, timeout time.Duration) {
		t.Helper()
		for from := range 3 {
			for to := range 3 {
				if from != to {
					if err := proctest.Eventually(timeout, func() error { return reach(from, to) }); err != nil {
						t.Fatalf("%s: %v", step, err)
					}
				}
			}
		}
	}
	path := func(i int, peer string) string {
		s, err := status(i)
		if err != nil {
			return err.Error()
		}
		for _, p := range s.Peers {
			if p.Name == peer {
				return p.Path
			}
		}
		return "absent"
	}

	// Step 2: TCP between every pair over the overlay addresses.
	reachAll("step 2 TCP over the overlay", 45*time.Second)
	t.Logf("step 2 passed: TCP between all pairs (%v)", overlay)

	// Step 2b: ICMP echo between every pair, answered by the peers' kernels through their TUN devices.
	for from := range 3 {
		for to := range 3 {
			if from == to {
				continue
			}
			if err := proctest.Eventually(15*time.Second, func() error {
				out, err := exec.Command("ip", "netns", "exec", nss[from], "ping", "-n", "-c", "1", "-W", "2", overlay[to]).CombinedOutput()
				if err != nil {
					return fmt.Errorf("ping n%d -> n%d (%s): %v: %s", from+1, to+1, overlay[to], err, out)
				}
				return nil
			}); err != nil {
				t.Fatalf("step 2b ICMP over the overlay: %v", err)
			}
		}
	}
	t.Log("step 2b passed: ICMP echo between all pairs")

	// Step 3: n1 and n2 (UDP blocked) reach each other through the relay; n1-n3 is direct.
	if err := proctest.Eventually(30*time.Second, func() error {
		if err := reach(0, 1); err != nil {
			return err
		}
		if got := path(0, "n2"); got != "relayed" {
			return fmt.Errorf("n1's path to n2 is %q", got)
		}
		return nil
	}); err != nil {
		t.Fatalf("step 3 n1-n2 relayed while UDP is blocked: %v", err)
	}
	if err := proctest.Eventually(30*time.Second, func() error {
		if got := path(0, "n3"); got != "direct" {
			return fmt.Errorf("n1's path to n3 is %q", got)
		}
		return nil
	}); err != nil {
		t.Fatalf("step 3 n1-n3 direct: %v", err)
	}
	t.Log("step 3 passed: n1-n2 relayed, n1-n3 direct")

	// Step 4: unblocked, the path upgrades to direct.
	netnsRun(t, "ip", "netns", "exec", nss[0], "nft", "delete", "table", "inet", "cvsblock")
	if err := proctest.Eventually(60*time.Second, func() error {
		if got := path(0, "n2"); got != "direct" {
			return fmt.Errorf("n1's path to n2 is %q", got)
		}
		return reach(0, 1)
	}); err != nil {
		t.Fatalf("step 4 n1-n2 upgrades to direct after unblocking: %v", err)
	}
	t.Log("step 4 passed: n1-n2 direct after unblocking")

	// Step 5: the controller SIGKILLed, traffic keeps flowing.
	ctl.Kill()
	time.Sleep(2 * time.Second)
	reachAll("step 5 after the controller was killed", 15*time.Second)
	t.Log("step 5 passed: traffic flows without the controller")
}
