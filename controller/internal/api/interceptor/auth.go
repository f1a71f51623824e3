package interceptor

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// Rule is the authorization rule of one procedure.
type Rule struct {
	// Public procedures need no principal (AuthService.GetAuthConfig).
	Public bool
	// MinRole is the least role allowed to call the procedure.
	MinRole domain.Role
	// Scope is the API-key scope the procedure needs.
	Scope auth.Scope
	// TenantScoped procedures take a tenant_id field; only super_admin may name a tenant other
	// than its own (others get NotFound: another tenant does not exist for them).
	TenantScoped bool
}

// Table maps every procedure ("/cloudvlan.v1.NodeService/GetNode") to its rule. A procedure
// missing from the table is denied: the default is closed.
type Table map[string]Rule

// Authenticator resolves request headers to a principal (auth.Authenticator implements it).
type Authenticator interface {
	Authenticate(ctx context.Context, h http.Header) (*auth.Principal, error)
}

// Auth authenticates the caller and authorizes the call from table, in one place for every RPC:
// Unauthenticated without valid credentials, PermissionDenied below the procedure's role or
// outside the API key's scopes, NotFound for another tenant's tenant_id.
func Auth(authn Authenticator, table Table) connect.Interceptor {
	return around(func(ctx context.Context, ci callInfo, msg any, next func(context.Context) error) error {
		rule, ok := table[ci.procedure]
		if !ok {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s is not authorized for anyone", ci.procedure))
		}
		p, err := authn.Authenticate(ctx, ci.header)
		switch {
		case err == nil:
			ctx = auth.WithPrincipal(ctx, p)
		case rule.Public && errors.Is(err, auth.ErrNoCredentials):
			return next(ctx)
		case errors.Is(err, auth.ErrSuspended):
			return connect.NewError(connect.CodePermissionDenied, err)
		case errors.Is(err, auth.ErrNoCredentials), errors.Is(err, auth.ErrBadCredentials):
			return connect.NewError(connect.CodeUnauthenticated, err)
		default:
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("authenticate: %w", err))
		}
		if rule.Public {
			return next(ctx)
		}
		if !auth.AtLeast(p.Role, rule.MinRole) {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s needs role %s", ci.procedure, rule.MinRole))
		}
		if !p.HasScope(rule.Scope) {
			return connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s needs API key scope %s", ci.procedure, rule.Scope))
		}
		if rule.TenantScoped && !p.IsSuperAdmin() {
			if m, ok := msg.(proto.Message); ok {
				if t := tenantField(m); t != "" && t != p.TenantID {
					return connect.NewError(connect.CodeNotFound, errors.New("tenant not found"))
				}
			}
		}
		return next(ctx)
	})
}

// tenantField returns the request's tenant_id, if it has one.
func tenantField(m proto.Message) string {
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("tenant_id")
	if fd == nil || fd.Kind() != protoreflect.StringKind {
		return ""
	}
	return r.Get(fd).String()
}
