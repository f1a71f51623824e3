package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"connectrpc.com/grpcreflect"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
)

// grpcurlBinary returns bin/tools/grpcurl (built by `make tools`).
func grpcurlBinary(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", "..", "bin", "tools", "grpcurl"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("grpcurl not built: run `make tools` first (make test does): %v", err)
	}
	return p
}

// TestGrpcurlFlow drives the API in-process with the real grpcurl binary over gRPC with TLS and
// server reflection, authenticated by the bootstrap API key: create a tenant, a cvlan, a group, a
// policy and a join token, then list the audit log. (controller/e2e runs the same flow against
// the built cvlan-controller.)
func TestGrpcurlFlow(t *testing.T) {
	grpcurl := grpcurlBinary(t)
	st := openStore(t, "sqlite")
	secret, created, err := auth.Bootstrap(context.Background(), st)
	if err != nil || !created {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	a, err := Mount(mux, Deps{Store: st, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	reflector := grpcreflect.NewStaticReflector(allServiceNames()...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); a.Close() })
	addr := srv.Listener.Addr().String()

	call := func(method string, req any) map[string]any {
		t.Helper()
		body, _ := json.Marshal(req)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		out, err := exec.CommandContext(ctx, grpcurl, "-insecure", "-H", "authorization: Bearer "+secret,
			"-d", string(body), addr, "cloudvlan.v1."+method).CombinedOutput()
		if err != nil {
			t.Fatalf("grpcurl %s: %v\n%s", method, err, out)
		}
		var m map[string]any
		if err := json.Unmarshal(out, &m); err != nil {
			t.Fatalf("grpcurl %s printed %s", method, out)
		}
		return m
	}
	runGrpcurlFlow(t, call)
}

// runGrpcurlFlow is the scenario of issue 3's end-to-end test.
func runGrpcurlFlow(t *testing.T, call func(method string, req any) map[string]any) {
	t.Helper()
	tn := call("TenantService/CreateTenant", map[string]any{"tenant": map[string]any{"name": "acme"}})["tenant"].(map[string]any)
	tid := tn["id"].(string)
	cv := call("CvlanService/CreateCvlan", map[string]any{"tenantId": tid, "cvlan": map[string]any{"name": "prod"}})["cvlan"].(map[string]any)
	if cv["ipv4Cidr"] != "100.64.0.0/10" {
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
}

func allServiceNames() []string {
	var out []string
	for _, fd := range allFiles() {
		for i := 0; i < fd.Services().Len(); i++ {
			out = append(out, string(fd.Services().Get(i).FullName()))
		}
	}
	return out
}
