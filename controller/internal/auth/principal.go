// Package auth authenticates callers of the user-facing API: API keys ("cvk_" secrets stored as
// SHA-256 hashes), UI sessions created by the OIDC login, the bootstrap admin key, and the role
// model every authorization decision is taken from.
package auth

import (
	"context"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// Kind says how a principal authenticated.
type Kind string

// Principal kinds.
const (
	KindUser   Kind = "user"
	KindAPIKey Kind = "api_key"
)

// Scope limits what an API key may do within its role.
type Scope string

// API key scopes (stored in domain.APIKey.Scopes).
const (
	ScopeRead  Scope = "read"
	ScopeWrite Scope = "write"
	ScopeAdmin Scope = "admin"
)

// Principal is an authenticated caller.
type Principal struct {
	Kind Kind
	// ID is the user or API key id.
	ID string
	// Name is the user's display name or the key's name.
	Name string
	// Email is the user's email (empty for keys).
	Email    string
	TenantID string
	Role     domain.Role
	// Scopes limit an API key; nil for users, who have every scope of their role.
	Scopes     []Scope
	ExpireTime time.Time
}

// HasScope reports whether the principal may act within scope s.
func (p *Principal) HasScope(s Scope) bool {
	if p.Kind != KindAPIKey {
		return true
	}
	for _, have := range p.Scopes {
		if have == s {
			return true
		}
	}
	return false
}

// IsSuperAdmin reports whether the principal may act on every tenant.
func (p *Principal) IsSuperAdmin() bool { return p.Role == domain.RoleSuperAdmin }

// ActorType is the audit actor type of the principal.
func (p *Principal) ActorType() domain.ActorType {
	if p.Kind == KindUser {
		return domain.ActorUser
	}
	return domain.ActorAPIKey
}

type principalKey struct{}

// WithPrincipal returns a context carrying p.
func WithPrincipal(ctx context.Context, p *Principal) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// PrincipalFrom returns the principal of ctx, or nil for an unauthenticated call.
func PrincipalFrom(ctx context.Context) *Principal {
	p, _ := ctx.Value(principalKey{}).(*Principal)
	return p
}

// rank orders roles; higher is more privileged. Unknown roles rank 0 (no rights).
func rank(r domain.Role) int {
	switch r {
	case domain.RoleSuperAdmin:
		return 4
	case domain.RoleTenantAdmin:
		return 3
	case domain.RoleOperator:
		return 2
	case domain.RoleViewer:
		return 1
	}
	return 0
}

// AtLeast reports whether role have grants everything role want grants.
func AtLeast(have, want domain.Role) bool { return rank(have) > 0 && rank(have) >= rank(want) }

// ValidRole reports whether r is one of the four roles.
func ValidRole(r domain.Role) bool { return rank(r) > 0 }
