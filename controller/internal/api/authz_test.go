package api

import (
	"context"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// expectedMinRole is the authorization policy of issue 3 written out independently of
// AuthzTable: viewer reads, operator manages nodes and join tokens, tenant_admin everything else
// of its tenant, super_admin tenants and regions. "" means public.
func expectedMinRole(service, method string) domain.Role {
	read := isRead(method)
	switch {
	case service == "AuthService" && method == "GetAuthConfig":
		return ""
	case service == "ApiKeyService":
		return domain.RoleTenantAdmin
	case read:
		return domain.RoleViewer
	case service == "TenantService" && method == "UpdateTenant":
		return domain.RoleTenantAdmin
	case service == "TenantService", service == "RegionService":
		return domain.RoleSuperAdmin
	case service == "NodeService", service == "JoinTokenService":
		return domain.RoleOperator
	}
	return domain.RoleTenantAdmin
}

// TestAuthorizationEveryRPCEveryRole calls every RPC of cloudvlan.v1 (enumerated from the
// descriptors, so none is missed) as every role and as an anonymous caller. An allowed call gets
// past the interceptor (it then fails validation or succeeds: any code but PermissionDenied and
// Unauthenticated); a denied one gets PermissionDenied; anonymous gets Unauthenticated.
func TestAuthorizationEveryRPCEveryRole(t *testing.T) {
	e := newEnv(t, "sqlite", noLimit)
	tid := e.newTenant(t, "acme")
	callers := map[string]struct {
		key  string
		role domain.Role
	}{
		"anonymous":    {"", ""},
		"viewer":       {e.keyFor(t, tid, domain.RoleViewer), domain.RoleViewer},
		"operator":     {e.keyFor(t, tid, domain.RoleOperator), domain.RoleOperator},
		"tenant_admin": {e.keyFor(t, tid, domain.RoleTenantAdmin), domain.RoleTenantAdmin},
		"super_admin":  {e.admin, domain.RoleSuperAdmin},
	}
	n := 0
	for _, fd := range allFiles() {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				proc := "/" + string(sd.FullName()) + "/" + string(md.Name())
				n++
				for name, c := range callers {
					want := expectedMinRole(string(sd.Name()), string(md.Name()))
					t.Run(strings.TrimPrefix(proc, "/cloudvlan.v1.")+"/"+name, func(t *testing.T) {
						got := callRaw(t, e, proc, md.IsStreamingServer(), c.key)
						switch {
						case want == "":
							if got == connect.CodeUnauthenticated || got == connect.CodePermissionDenied {
								t.Fatalf("public procedure refused: %v", got)
							}
						case c.key == "":
							if got != connect.CodeUnauthenticated {
								t.Fatalf("anonymous call: got %v, want Unauthenticated", got)
							}
						case auth.AtLeast(c.role, want):
							if got == connect.CodeUnauthenticated || got == connect.CodePermissionDenied {
								t.Fatalf("%s (needs %s) refused: %v", name, want, got)
							}
						default:
							if got != connect.CodePermissionDenied {
								t.Fatalf("%s (needs %s): got %v, want PermissionDenied", name, want, got)
							}
						}
					})
				}
			}
		}
	}
	if n < 80 {
		t.Fatalf("only %d RPCs enumerated", n)
	}
}

// callRaw calls proc with an empty request message and returns the resulting code (0 for OK).
func callRaw(t *testing.T, e *env, proc string, stream bool, key string) connect.Code {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := connect.NewClient[emptypb.Empty, emptypb.Empty](e.srv.Client(), e.srv.URL+proc, bearer(key))
	if !stream {
		_, err := c.CallUnary(ctx, connect.NewRequest(&emptypb.Empty{}))
		return code(err)
	}
	s, err := c.CallServerStream(ctx, connect.NewRequest(&emptypb.Empty{}))
	if err != nil {
		return code(err)
	}
	defer s.Close()
	if s.Receive() {
		return 0
	}
	return code(s.Err())
}
