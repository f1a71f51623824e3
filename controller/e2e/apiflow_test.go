package e2e

import (
	"encoding/json"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

var bootstrapRE = regexp.MustCompile(`bootstrap admin API key: (cvk_[A-Za-z0-9_-]+)`)

// bootstrapKey waits for the one-time bootstrap line in the controller's output.
func bootstrapKey(t *testing.T, p *controllerProc) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if m := bootstrapRE.FindStringSubmatch(p.log.String()); m != nil {
			return m[1]
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("controller did not print `bootstrap admin API key: cvk_...`:\n%s", p.log.String())
	return ""
}

// TestGrpcurlAPIFlow starts the built controller and drives it with the real grpcurl binary and
// the bootstrap API key: create a tenant, a cvlan, a group, a policy and a join token, then list
// the audit log. A restart on the same data directory must not print the key again.
func TestGrpcurlAPIFlow(t *testing.T) {
	dataDir := t.TempDir()
	p := startController(t, "--data-dir", dataDir)
	key := bootstrapKey(t, p)
	grpcurl := binary(t, "grpcurl")
	call := func(method string, req any) map[string]any {
		t.Helper()
		body, _ := json.Marshal(req)
		out, err := run(t, 30*time.Second, grpcurl, "-insecure", "-H", "authorization: Bearer "+key,
			"-d", string(body), p.addr("api"), "cloudvlan.v1."+method)
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", method, err, out)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(out), &m); err != nil {
			t.Fatalf("grpcurl %s printed %s", method, out)
		}
		return m
	}
	tn := call("TenantService/CreateTenant", map[string]any{"tenant": map[string]any{"name": "acme"}})["tenant"].(map[string]any)
	tid := tn["id"].(string)
	cv := call("CvlanService/CreateCvlan", map[string]any{"tenantId": tid, "cvlan": map[string]any{"name": "prod"}})["cvlan"].(map[string]any)
	if cv["ipv4Cidr"] != "100.64.0.0/10" || !strings.HasPrefix(cv["ipv6Cidr"].(string), "fd") {
		t.Fatalf("cvlan %v", cv)
	}
	g := call("GroupService/CreateGroup", map[string]any{"tenantId": tid, "group": map[string]any{"name": "devs"}})["group"].(map[string]any)
	call("PolicyService/CreatePolicy", map[string]any{"tenantId": tid, "policy": map[string]any{
		"name": "devs-ssh", "enabled": true, "rules": []any{map[string]any{
			"action": "POLICY_ACTION_ALLOW", "protocol": "PROTOCOL_TCP", "ports": []any{map[string]any{"first": 22}},
			"sources": []any{map[string]any{"groupId": g["id"]}}, "destinations": []any{map[string]any{"any": true}},
		}},
	}})
	jt := call("JoinTokenService/CreateJoinToken", map[string]any{"tenantId": tid, "joinToken": map[string]any{"kind": "JOIN_TOKEN_KIND_NODE", "cvlanId": cv["id"]}})
	if s, _ := jt["secret"].(string); !strings.HasPrefix(s, "cvj_") {
		t.Fatalf("join token %v", jt)
	}
	logs := call("AuditLogService/ListAuditLogs", map[string]any{"tenantId": tid})["auditLogs"].([]any)
	var actions []string
	for _, l := range logs {
		actions = append(actions, l.(map[string]any)["action"].(string))
	}
	if strings.Join(actions, ",") != "join_token.create,policy.create,group.create,cvlan.create,tenant.create" {
		t.Fatalf("audit log actions %v", actions)
	}
	// Without a key: Unauthenticated.
	out, err := run(t, 30*time.Second, grpcurl, "-insecure", "-d", "{}", p.addr("api"), "cloudvlan.v1.TenantService/ListTenants")
	if err == nil || !strings.Contains(out, "Unauthenticated") {
		t.Fatalf("call without a key: %v\n%s", err, out)
	}

	// Restart on the same data directory: the key is not printed again, and still works.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
		p.done <- nil
	case <-time.After(20 * time.Second):
		t.Fatal("controller did not stop")
	}
	p2 := startController(t, "--data-dir", dataDir)
	if strings.Contains(p2.log.String(), "bootstrap admin API key") {
		t.Fatalf("bootstrap key printed again on restart:\n%s", p2.log.String())
	}
	out, err = run(t, 30*time.Second, grpcurl, "-insecure", "-H", "authorization: Bearer "+key, "-d", "{}", p2.addr("api"), "cloudvlan.v1.TenantService/ListTenants")
	if err != nil || !strings.Contains(out, "acme") {
		t.Fatalf("bootstrap key after restart: %v\n%s", err, out)
	}
}
