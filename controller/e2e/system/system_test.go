package system

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
)

var (
	listeningRE = regexp.MustCompile(`msg=listening port=node addr=(\S+)`)
	apiRE       = regexp.MustCompile(`msg=listening port=api addr=(\S+)`)
	bootstrapRE = regexp.MustCompile(`bootstrap admin API key: (cvk_[A-Za-z0-9_-]+)`)
	socksRE     = regexp.MustCompile(`msg="proxy listening".* addr=(\S+)`)
)

// agentStatus is the part of the agent's status.json the test reads.
type agentStatus struct {
	NodeID string `json:"node_id"`
	Peers  []struct {
		FQDN      string   `json:"fqdn"`
		NodeID    string   `json:"node_id"`
		Addresses []string `json:"addresses"`
	} `json:"peers"`
}

// TestSystem runs controller, relay and three agents as separate processes and checks the
// registration of the relay, the mesh between the agents, policy, DNS and controller loss.
func TestSystem(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process system test; skipped with -short")
	}
	ctlBin, relayBin, agentBin := builtBinary(t, "cvlan-controller"), builtBinary(t, "cvlan-relay"), builtBinary(t, "cvlan-agent")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	ctl := startController(t, ctlBin, "127.0.0.1:0")
	nodeAddr, rootCA, api := ctl.nodeAddr, ctl.rootCA, ctl.api()

	// Step 1: a tenant, a region, the tenant's own relay and a relay join token, through the API.
	// (Shared relays, of no tenant, enroll too: nodeplane TestSharedRelayEnrollment.)
	tn, err := api.tenants.CreateTenant(ctx, connect.NewRequest(&v1.CreateTenantRequest{Tenant: &v1.Tenant{Name: "acme"}}))
	if err != nil {
		t.Fatalf("step 1 CreateTenant: %v", err)
	}
	tid := tn.Msg.GetTenant().GetId()
	rg, err := api.regions.CreateRegion(ctx, connect.NewRequest(&v1.CreateRegionRequest{Region: &v1.Region{Name: "lab", Code: "lab"}}))
	if err != nil {
		t.Fatalf("step 1 CreateRegion: %v", err)
	}
	relayAddr := freePort(t)
	rl, err := api.relays.CreateRelay(ctx, connect.NewRequest(&v1.CreateRelayRequest{TenantId: tid, Relay: &v1.Relay{
		Name: "relay-1", RegionId: rg.Msg.GetRegion().GetId(), Addresses: []string{relayAddr},
	}}))
	if err != nil {
		t.Fatalf("step 1 CreateRelay: %v", err)
	}
	relayID := rl.Msg.GetRelay().GetId()
	rt, err := api.tokens.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{TenantId: tid, JoinToken: &v1.JoinToken{
		Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_RELAY, TargetId: relayID,
	}}))
	if err != nil {
		t.Fatalf("step 1 CreateJoinToken(relay): %v", err)
	}

	// Step 2: cvlan-relay up enrolls with it and reports; the relay turns ONLINE with its stats.
	relayState := filepath.Join(t.TempDir(), "relay")
	relayArgs := []string{"up", "--controller", "https://" + nodeAddr, "--controller-ca", rootCA, "--state-dir", relayState,
		"--listen", relayAddr, "--stun-listen", "127.0.0.1:0", "--admin-listen", ""}
	rp := proctest.Start(t, "relay", relayBin, append(relayArgs, "--token", rt.Msg.GetSecret())...)
	var lastSeen time.Time
	online := func(after time.Time) error {
		return proctest.Eventually(30*time.Second, func() error {
			r, err := api.relays.GetRelay(ctx, connect.NewRequest(&v1.GetRelayRequest{TenantId: tid, Id: relayID}))
			if err != nil {
				return err
			}
			rl := r.Msg.GetRelay()
			if rl.GetStatus() != v1.RelayStatus_RELAY_STATUS_ONLINE || rl.GetStats() == nil || !rl.GetLastSeenTime().AsTime().After(after) {
				return fmt.Errorf("relay status %v stats %v last seen %v", rl.GetStatus(), rl.GetStats(), rl.GetLastSeenTime().AsTime())
			}
			lastSeen = rl.GetLastSeenTime().AsTime()
			return nil
		})
	}
	if err := online(time.Time{}); err != nil {
		t.Fatalf("step 2 relay ONLINE with stats via GetRelay: %v", err)
	}
	// A restart reuses the saved identity: no token (it was single-use anyway).
	rp.Stop()
	proctest.Start(t, "relay (restarted)", relayBin, relayArgs...)
	if err := online(lastSeen); err != nil {
		t.Fatalf("step 2 relay restarted from its state dir reports again: %v", err)
	}
	for _, f := range []string{"relay.key", "relay.crt", "root.pem", "identity.json"} {
		if st, err := os.Stat(filepath.Join(relayState, f)); err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("step 2 relay state %s: %v %v", f, st.Mode(), err)
		}
	}
	t.Log("step 2 passed: relay enrolled, ONLINE with stats")

	// Step 3: a cvlan with an allow-all policy, and three agents in netstack mode.
	// The DNS domain is set because a fresh tenant has none, and without a domain the controller
	// gives nodes no names at all (netmap's fqdn is empty), so mesh DNS could not be tested.
	cv, err := api.cvlans.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{TenantId: tid, Cvlan: &v1.Cvlan{Name: "prod", DnsDomain: "acme.test"}}))
	if err != nil {
		t.Fatalf("step 3 CreateCvlan: %v", err)
	}
	cvID := cv.Msg.GetCvlan().GetId()
	any := []*v1.PolicyTarget{{Target: &v1.PolicyTarget_Any{Any: true}}}
	pol, err := api.policies.CreatePolicy(ctx, connect.NewRequest(&v1.CreatePolicyRequest{TenantId: tid, Policy: &v1.Policy{
		Name: "all", Enabled: true, CvlanId: cvID, Rules: []*v1.PolicyRule{{Name: "all", Action: v1.PolicyAction_POLICY_ACTION_ALLOW,
			Protocol: v1.Protocol_PROTOCOL_ANY, Sources: any, Destinations: any}},
	}}))
	if err != nil {
		t.Fatalf("step 3 CreatePolicy: %v", err)
	}
	type agent struct {
		p     *proctest.Proc
		dir   string
		socks string
	}
	var agents []agent
	for i := range 3 {
		jt, err := api.tokens.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{TenantId: tid, JoinToken: &v1.JoinToken{
			Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: cvID,
		}}))
		if err != nil {
			t.Fatalf("step 3 CreateJoinToken(node): %v", err)
		}
		dir := filepath.Join(t.TempDir(), "agent")
		p := proctest.Start(t, fmt.Sprintf("agent-%d", i), agentBin, "up", "--controller", "https://"+nodeAddr, "--token", jt.Msg.GetSecret(),
			"--controller-ca", rootCA, "--state-dir", dir, "--netstack", "--socks5", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0",
			"--listen-ip", "127.0.0.1", "--name", fmt.Sprintf("n%d", i))
		socks := p.WaitFor(t, socksRE, time.Minute)[1]
		agents = append(agents, agent{p, dir, socks})
	}
	err = proctest.Eventually(60*time.Second, func() error {
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
	})
	if err != nil {
		t.Fatalf("step 3 three agents ONLINE via ListNodes: %v", err)
	}
	t.Log("step 3 passed: three agents online")

	// Step 4: every agent sees the relay in its map and both peers; every pair reaches each other by
	// mesh DNS name: SOCKS5 CONNECT to <peer fqdn>:53 (the name resolved by the source agent's
	// resolver) and a DNS query over TCP answered by the destination agent's resolver inside its
	// netstack, so a reply proves DNS on both sides and a working tunnel.
	status := func(a agent) (agentStatus, error) {
		var s agentStatus
		b, err := os.ReadFile(filepath.Join(a.dir, "status.json"))
		if err != nil {
			return s, err
		}
		return s, json.Unmarshal(b, &s)
	}
	err = proctest.Eventually(30*time.Second, func() error {
		for i, a := range agents {
			s, err := status(a)
			if err != nil {
				return err
			}
			if len(s.Peers) != 2 {
				return fmt.Errorf("agent %d has %d peers", i, len(s.Peers))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("step 4 peers in status.json: %v", err)
	}
	reach := func(from agent, fqdn string, timeout time.Duration) error {
		return dnsOverSOCKS(from.socks, fqdn, timeout)
	}
	checkAll := func(step string) {
		t.Helper()
		for i, a := range agents {
			s, _ := status(a)
			for _, p := range s.Peers {
				target := p.FQDN
				if target == "" {
					t.Errorf("%s: agent %d's map has no DNS name for peer %s (mesh DNS cannot work); testing by address", step, i, p.NodeID)
					if len(p.Addresses) == 0 {
						t.Fatalf("%s: peer %s has no address either", step, p.NodeID)
					}
					target, _, _ = strings.Cut(p.Addresses[0], "/")
				}
				if err := proctest.Eventually(20*time.Second, func() error { return reach(a, target, 3*time.Second) }); err != nil {
					t.Fatalf("%s: agent %d cannot reach %s: %v", step, i, target, err)
				}
			}
		}
	}
	checkAll("step 4 reachability by mesh DNS name")
	if !t.Failed() {
		t.Log("step 4 passed: all pairs reach each other by DNS name")
	}

	// Step 5: the relay is in the agents' relay map (the relay URL is in the map the agent keeps).
	relayURL := "https://" + relayAddr + "/relay"
	if err := proctest.Eventually(10*time.Second, func() error {
		for i, a := range agents {
			found := false
			filepath.WalkDir(a.dir, func(path string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					if b, _ := os.ReadFile(path); strings.Contains(string(b), relayAddr) {
						found = true
					}
				}
				return nil
			})
			if !found {
				return fmt.Errorf("agent %d state has no %s", i, relayURL)
			}
		}
		return nil
	}); err != nil {
		t.Errorf("step 5 relay in the agents' relay map: %v", err)
	} else {
		t.Log("step 5 passed: relay address in every agent's saved map")
	}

	// Step 6: a policy that leaves out agent 2 cuts 0 -> 2 within a second; restoring it restores.
	s0, _ := status(agents[0])
	s2, _ := status(agents[2])
	var fqdn2 string
	for _, p := range s0.Peers {
		if p.NodeID == s2.NodeID {
			fqdn2 = p.FQDN
			if fqdn2 == "" && len(p.Addresses) > 0 {
				fqdn2, _, _ = strings.Cut(p.Addresses[0], "/")
			}
		}
	}
	others := []*v1.PolicyTarget{}
	for _, a := range agents[:2] {
		s, _ := status(a)
		others = append(others, &v1.PolicyTarget{Target: &v1.PolicyTarget_NodeId{NodeId: s.NodeID}})
	}
	p := pol.Msg.GetPolicy()
	p.Rules = []*v1.PolicyRule{{Name: "no-n2", Action: v1.PolicyAction_POLICY_ACTION_ALLOW, Protocol: v1.Protocol_PROTOCOL_ANY, Sources: others, Destinations: others}}
	cutAt := time.Now()
	upd, err := api.policies.UpdatePolicy(ctx, connect.NewRequest(&v1.UpdatePolicyRequest{TenantId: tid, Policy: p, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"rules"}}}))
	if err != nil {
		t.Fatalf("step 6 UpdatePolicy: %v", err)
	}
	p = upd.Msg.GetPolicy()
	if err := proctest.Eventually(time.Second, func() error {
		if reach(agents[0], fqdn2, 300*time.Millisecond) == nil {
			return errors.New("still reachable")
		}
		return nil
	}); err != nil {
		t.Errorf("step 6 policy cut 0 -> 2 within 1 s: %v after %v", err, time.Since(cutAt))
	} else {
		t.Logf("step 6 passed: cut observed after %v", time.Since(cutAt))
	}
	p.Rules = []*v1.PolicyRule{{Name: "all", Action: v1.PolicyAction_POLICY_ACTION_ALLOW, Protocol: v1.Protocol_PROTOCOL_ANY, Sources: any, Destinations: any}}
	if _, err := api.policies.UpdatePolicy(ctx, connect.NewRequest(&v1.UpdatePolicyRequest{TenantId: tid, Policy: p, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"rules"}}})); err != nil {
		t.Fatalf("step 6 UpdatePolicy (restore): %v", err)
	}
	checkAll("step 6 restored")

	// Step 7: the controller killed (SIGKILL), traffic keeps flowing.
	ctl.Kill()
	time.Sleep(2 * time.Second)
	checkAll("step 7 after the controller was killed")
	t.Log("step 7 passed: traffic flows without the controller")
}

// dnsOverSOCKS connects through the SOCKS5 proxy at socks to fqdn:53 and asks for fqdn's A record
// over TCP; it succeeds when an answer with at least one record comes back.
//
// With an IP address instead of a name, any DNS reply (even NXDOMAIN) counts: it still proves the
// tunnel.
func dnsOverSOCKS(socks, fqdn string, timeout time.Duration) error {
	c, err := net.DialTimeout("tcp", socks, timeout)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	host := strings.TrimSuffix(fqdn, ".")
	req := []byte{5, 1, 0}
	if _, err := c.Write(req); err != nil {
		return err
	}
	var hello [2]byte
	if _, err := io.ReadFull(c, hello[:]); err != nil || hello[1] != 0 {
		return fmt.Errorf("socks5 hello: %v %v", hello, err)
	}
	ip := net.ParseIP(host).To4()
	conn := append([]byte{5, 1, 0, 3, byte(len(host))}, host...)
	if ip != nil {
		conn = append([]byte{5, 1, 0, 1}, ip...)
	}
	conn = append(conn, 0, 53)
	if _, err := c.Write(conn); err != nil {
		return err
	}
	var rep [10]byte
	if _, err := io.ReadFull(c, rep[:]); err != nil {
		return fmt.Errorf("socks5 connect: %w", err)
	}
	if rep[1] != 0 {
		return fmt.Errorf("socks5 connect to %s:53: reply code %d", host, rep[1])
	}
	q := []byte{0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}
	for _, l := range strings.Split(host, ".") {
		q = append(q, byte(len(l)))
		q = append(q, l...)
	}
	q = append(q, 0, 0, 1, 0, 1)
	msg := binary.BigEndian.AppendUint16(nil, uint16(len(q)))
	if _, err := c.Write(append(msg, q...)); err != nil {
		return err
	}
	var lb [2]byte
	if _, err := io.ReadFull(c, lb[:]); err != nil {
		return fmt.Errorf("dns reply: %w", err)
	}
	resp := make([]byte, binary.BigEndian.Uint16(lb[:]))
	if _, err := io.ReadFull(c, resp); err != nil || len(resp) < 12 {
		return fmt.Errorf("dns reply: %v", err)
	}
	if ip != nil {
		return nil
	}
	if rc := resp[3] & 0xf; rc != 0 || binary.BigEndian.Uint16(resp[6:8]) == 0 {
		return fmt.Errorf("dns reply for %s: rcode %d, %d answers", host, rc, binary.BigEndian.Uint16(resp[6:8]))
	}
	return nil
}
