package api

import (
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Register the cloudvlan.v1 descriptors.
	_ "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/api/interceptor"
	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// serviceRule is the default for one service's mutating RPCs; reads (Get, List, Watch, Export,
// Validate, WhoAmI) need viewer and the read scope everywhere except where overridden.
type serviceRule struct {
	write domain.Role
	scope auth.Scope
	// readRole overrides viewer for reads.
	readRole domain.Role
}

var serviceRules = map[string]serviceRule{
	"TenantService":          {write: domain.RoleSuperAdmin, scope: auth.ScopeAdmin},
	"CvlanService":           {write: domain.RoleTenantAdmin, scope: auth.ScopeWrite},
	"NodeService":            {write: domain.RoleOperator, scope: auth.ScopeWrite},
	"UserService":            {write: domain.RoleTenantAdmin, scope: auth.ScopeAdmin},
	"GroupService":           {write: domain.RoleTenantAdmin, scope: auth.ScopeWrite},
	"TagService":             {write: domain.RoleTenantAdmin, scope: auth.ScopeWrite},
	"PolicyService":          {write: domain.RoleTenantAdmin, scope: auth.ScopeWrite},
	"RegionService":          {write: domain.RoleSuperAdmin, scope: auth.ScopeAdmin},
	"RelayService":           {write: domain.RoleTenantAdmin, scope: auth.ScopeWrite},
	"VRouterService":         {write: domain.RoleTenantAdmin, scope: auth.ScopeWrite},
	"DiscoveryServerService": {write: domain.RoleTenantAdmin, scope: auth.ScopeWrite},
	"ApiKeyService":          {write: domain.RoleTenantAdmin, scope: auth.ScopeAdmin, readRole: domain.RoleTenantAdmin},
	"JoinTokenService":       {write: domain.RoleOperator, scope: auth.ScopeWrite},
	"AuditLogService":        {},
	"AuthService":            {},
	"EventService":           {},
}

// overrides are the procedures whose rule differs from their service's default.
var overrides = map[string]interceptor.Rule{
	// The sign-in page needs it before anyone signed in.
	"/cloudvlan.v1.AuthService/GetAuthConfig": {Public: true},
	// A tenant_admin may change its own tenant's settings; the handler refuses status and
	// capacity changes by callers who are not super_admin.
	"/cloudvlan.v1.TenantService/UpdateTenant": {MinRole: domain.RoleTenantAdmin, Scope: auth.ScopeAdmin, TenantScoped: true},
}

func isRead(method string) bool {
	for _, p := range []string{"Get", "List", "Watch", "Export", "Validate", "WhoAmI"} {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	return false
}

// AuthzTable returns the authorization rule of every procedure of cloudvlan.v1, built from the
// service descriptors so that a new RPC is covered (and tested) the moment it is generated:
// viewer reads; operator manages nodes and join tokens; tenant_admin everything else in its
// tenant; super_admin tenants and regions (and, checked in the handler, shared relays).
func AuthzTable() interceptor.Table {
	t := interceptor.Table{}
	for _, fd := range allFiles() {
		svcs := fd.Services()
		for i := 0; i < svcs.Len(); i++ {
			sd := svcs.Get(i)
			sr, ok := serviceRules[string(sd.Name())]
			if !ok {
				continue // unknown service: denied by default
			}
			ms := sd.Methods()
			for j := 0; j < ms.Len(); j++ {
				md := ms.Get(j)
				proc := "/" + string(sd.FullName()) + "/" + string(md.Name())
				rule := interceptor.Rule{MinRole: sr.write, Scope: sr.scope, TenantScoped: true}
				if isRead(string(md.Name())) {
					rule.MinRole, rule.Scope = domain.RoleViewer, auth.ScopeRead
					if sr.readRole != "" {
						rule.MinRole = sr.readRole
					}
				}
				if o, ok := overrides[proc]; ok {
					rule = o
				}
				t[proc] = rule
			}
		}
	}
	return t
}

// allFiles lists the descriptors of every file of package cloudvlan.v1.
func allFiles() []protoreflect.FileDescriptor {
	var out []protoreflect.FileDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("cloudvlan.v1", func(fd protoreflect.FileDescriptor) bool {
		out = append(out, fd)
		return true
	})
	return out
}
