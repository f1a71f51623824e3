package system

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
)

// run runs a command and fails the test with its output when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// stripWGQuick does what `wg-quick strip` does: it drops the wg-quick-only keys (Address, DNS, MTU,
// Table, hooks, SaveConfig) that wg(8) setconf rejects, and returns them separately.
func stripWGQuick(conf string) (wgConf string, addresses []string) {
	quickOnly := map[string]bool{"address": true, "dns": true, "mtu": true, "table": true, "preup": true,
		"postup": true, "predown": true, "postdown": true, "saveconfig": true}
	var b strings.Builder
	section := ""
	for _, line := range strings.Split(conf, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "[") {
			section = strings.ToLower(trimmed)
		}
		k, v, ok := strings.Cut(trimmed, "=")
		key := strings.ToLower(strings.TrimSpace(k))
		if ok && section == "[interface]" && quickOnly[key] {
			if key == "address" {
				for _, a := range strings.Split(v, ",") {
					addresses = append(addresses, strings.TrimSpace(a))
				}
			}
			continue
		}
		b.WriteString(line + "\n")
	}
	return b.String(), addresses
}

// allowedIPs lists every AllowedIPs entry of a WireGuard config.
func allowedIPs(conf string) []string {
	var out []string
	for _, line := range strings.Split(conf, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if ok && strings.EqualFold(strings.TrimSpace(k), "allowedips") {
			for _, a := range strings.Split(v, ",") {
				out = append(out, strings.TrimSpace(a))
			}
		}
	}
	return out
}

// TestInteropStockWireGuard configures a stock WireGuard peer (Debian's wireguard-go and wg from
// wireguard-tools) only from the config CreateStaticPeer exports, in a network namespace joined
// to the root namespace by a veth pair, and checks that it completes a handshake with a netstack
// agent and gets an answer to a DNS query over TCP from the agent's overlay address (the mesh
// resolver, served inside the agent's netstack).
func TestInteropStockWireGuard(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process interop test; skipped with -short")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace, a veth pair and a WireGuard interface")
	}
	for _, tool := range []string{"wireguard-go", "wg", "ip", "bash", "timeout", "head", "od"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian packages wireguard-go, wireguard-tools, iproute2, coreutils, bash): %v", tool, err)
		}
	}
	ctlBin, agentBin := builtBinary(t, "cvlan-controller"), builtBinary(t, "cvlan-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// The namespace and veth pair. Names and the /30 depend on the pid so that two runs on one
	// machine do not collide; interface names stay within IFNAMSIZ (15).
	pid := os.Getpid()
	ns := fmt.Sprintf("cvlan-interop-%d", pid)
	hostIf, nsIf, wgIf := fmt.Sprintf("cvi%da", pid%100000), fmt.Sprintf("cvi%db", pid%100000), "wgstock0"
	octet3 := pid%250 + 1
	hostIP, nsIP := fmt.Sprintf("10.201.%d.1", octet3), fmt.Sprintf("10.201.%d.2", octet3)
	run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() {
		_ = exec.Command("ip", "netns", "del", ns).Run() // also deletes the veth end and the wg interface inside
		_ = exec.Command("ip", "link", "del", hostIf).Run()
	})
	run(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	run(t, "ip", "link", "set", nsIf, "netns", ns)
	run(t, "ip", "addr", "add", hostIP+"/30", "dev", hostIf)
	run(t, "ip", "link", "set", hostIf, "up")
	run(t, "ip", "-n", ns, "addr", "add", nsIP+"/30", "dev", nsIf)
	run(t, "ip", "-n", ns, "link", "set", nsIf, "up")
	run(t, "ip", "-n", ns, "link", "set", "lo", "up")

	// Controller, tenant, cvlan, allow-all policy, and one netstack agent whose WireGuard socket
	// is bound to the root end of the veth, so the endpoint it reports is reachable from the
	// namespace.
	ctl := startController(t, ctlBin, "127.0.0.1:0")
	nodeAddr, rootCA, api := ctl.nodeAddr, ctl.rootCA, ctl.api()

	tn, err := api.tenants.CreateTenant(ctx, connect.NewRequest(&v1.CreateTenantRequest{Tenant: &v1.Tenant{Name: "interop"}}))
	if err != nil {
		t.Fatalf("CreateTenant: %v", err)
	}
	tid := tn.Msg.GetTenant().GetId()
	cv, err := api.cvlans.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{TenantId: tid, Cvlan: &v1.Cvlan{Name: "lab", DnsDomain: "interop.test"}}))
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
	jt, err := api.tokens.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{TenantId: tid, JoinToken: &v1.JoinToken{
		Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: cvID,
	}}))
	if err != nil {
		t.Fatalf("CreateJoinToken: %v", err)
	}
	agentP := proctest.Start(t, "agent", agentBin, "up", "--controller", "https://"+nodeAddr, "--token", jt.Msg.GetSecret(),
		"--controller-ca", rootCA, "--state-dir", filepath.Join(t.TempDir(), "agent"), "--netstack", "--socks5", "127.0.0.1:0",
		"--admin-addr", "127.0.0.1:0", "--listen-ip", hostIP, "--name", "agent")
	agentP.WaitFor(t, socksRE, time.Minute)

	// The agent's node must be ONLINE with its endpoint on the veth before the static peer is
	// created: the exported config's Endpoint line is the node's first reported endpoint.
	var agentNode *v1.Node
	if err := proctest.Eventually(60*time.Second, func() error {
		r, err := api.nodes.ListNodes(ctx, connect.NewRequest(&v1.ListNodesRequest{TenantId: tid}))
		if err != nil {
			return err
		}
		for _, n := range r.Msg.GetNodes() {
			if n.GetName() != "agent" {
				continue
			}
			for _, ep := range n.GetEndpoints() {
				if strings.HasPrefix(ep.GetAddress(), hostIP+":") && n.GetStatus() == v1.NodeStatus_NODE_STATUS_ONLINE {
					agentNode = n
					return nil
				}
			}
			return fmt.Errorf("agent node status %v endpoints %v", n.GetStatus(), n.GetEndpoints())
		}
		return fmt.Errorf("agent node not listed (%d nodes)", len(r.Msg.GetNodes()))
	}); err != nil {
		t.Fatalf("agent ONLINE with an endpoint on %s: %v", hostIP, err)
	}
	agentIP, err := netip.ParseAddr(agentNode.GetIpv4Address())
	if err != nil {
		t.Fatalf("agent overlay IPv4 %q: %v", agentNode.GetIpv4Address(), err)
	}

	sp, err := api.nodes.CreateStaticPeer(ctx, connect.NewRequest(&v1.CreateStaticPeerRequest{TenantId: tid, CvlanId: cvID, Name: "stock"}))
	if err != nil {
		t.Fatalf("CreateStaticPeer: %v", err)
	}
	conf := sp.Msg.GetWgQuickConfig()
	if !strings.Contains(conf, "Endpoint = "+hostIP+":") {
		t.Fatalf("exported config has no Endpoint on %s:\n%s", hostIP, conf)
	}

	// The stock peer: wireguard-go in the namespace, configured only from the exported text.
	t.Setenv("WG_PROCESS_FOREGROUND", "1")
	proctest.Start(t, "wireguard-go", "ip", "netns", "exec", ns, "wireguard-go", wgIf)
	if err := proctest.Eventually(20*time.Second, func() error {
		return exec.Command("ip", "netns", "exec", ns, "wg", "show", wgIf).Run()
	}); err != nil {
		t.Fatalf("wireguard-go did not create %s: %v", wgIf, err)
	}
	wgConf, addrs := stripWGQuick(conf)
	if len(addrs) == 0 {
		t.Fatalf("exported config has no Address:\n%s", conf)
	}
	confFile := filepath.Join(t.TempDir(), "stock.conf")
	if err := os.WriteFile(confFile, []byte(wgConf), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, "ip", "netns", "exec", ns, "wg", "setconf", wgIf, confFile)
	for _, a := range addrs {
		run(t, "ip", "-n", ns, "addr", "add", a, "dev", wgIf)
	}
	run(t, "ip", "-n", ns, "link", "set", wgIf, "up")
	routed := false
	for _, a := range allowedIPs(wgConf) {
		run(t, "ip", "-n", ns, "route", "replace", a, "dev", wgIf)
		if p, err := netip.ParsePrefix(a); err == nil && p.Contains(agentIP) {
			routed = true
		}
	}
	if !routed {
		t.Fatalf("no AllowedIPs entry covers the agent's address %s:\n%s", agentIP, conf)
	}

	// Traffic: a DNS query over TCP from the namespace to the agent's overlay address, port 53,
	// which only the resolver inside the agent's netstack serves, through the stock peer's
	// tunnel; the reply's message id must echo the query's. bash's /dev/tcp keeps the test free
	// of tools beyond bash, coreutils and iproute2. The name does not matter: any reply
	// (NXDOMAIN included) crossed the tunnel both ways.
	query := `\x00\x18\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01a\x04test\x00\x00\x01\x00\x01`
	dial := fmt.Sprintf(`exec 3<>/dev/tcp/%s/53 && printf '%s' >&3 && head -c 4 <&3 | od -An -tx1`, agentIP, query)
	var lastOut []byte
	if err := proctest.Eventually(60*time.Second, func() error {
		c := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "timeout", "5", "bash", "-c", dial)
		out, err := c.CombinedOutput()
		lastOut = out
		if err != nil {
			return err
		}
		if f := strings.Fields(string(out)); len(f) != 4 || f[2] != "12" || f[3] != "34" {
			return fmt.Errorf("DNS reply header %q: want 4 bytes with message id 12 34", out)
		}
		return nil
	}); err != nil {
		t.Fatalf("TCP from the stock peer to %s:53 through the tunnel: %v\n%s\nwg show:\n%s", agentIP, err, lastOut,
			run(t, "ip", "netns", "exec", ns, "wg", "show", wgIf))
	}
	hs := run(t, "ip", "netns", "exec", ns, "wg", "show", wgIf, "latest-handshakes")
	fields := strings.Fields(hs)
	if len(fields) != 2 {
		t.Fatalf("wg show latest-handshakes: want one peer, got %q", hs)
	}
	if ts, err := strconv.ParseInt(fields[1], 10, 64); err != nil || ts == 0 {
		t.Fatalf("no handshake with the agent: %q (%v)", hs, err)
	}
	if !bytes.Contains([]byte(conf), []byte(fields[0])) {
		t.Fatalf("handshake peer %s is not the exported config's peer", fields[0])
	}
	t.Logf("stock WireGuard peer got a DNS reply over TCP from agent %s; handshake %s", agentIP, fields[1])
}
