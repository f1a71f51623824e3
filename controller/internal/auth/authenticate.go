package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// SessionCookie is the name of the UI session cookie.
const SessionCookie = "cvlan_session"

// Authentication errors. The API maps all of them to Unauthenticated, except ErrSuspended
// (PermissionDenied).
var (
	// ErrNoCredentials: the request carries neither a bearer token nor a session cookie.
	ErrNoCredentials = errors.New("no credentials")
	// ErrBadCredentials: the credential is unknown, expired, revoked or malformed.
	ErrBadCredentials = errors.New("invalid credentials")
	// ErrSuspended: the principal's tenant is suspended.
	ErrSuspended = errors.New("tenant suspended")
)

// touchInterval bounds how often an API key's last-use time is written: one write per key per
// minute instead of one per request keeps the (single-writer on SQLite) store free for real work.
const touchInterval = time.Minute

// Authenticator resolves request credentials to a Principal.
type Authenticator struct {
	Store store.Store
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (a *Authenticator) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// Authenticate checks the "Authorization: Bearer cvk_..." header or, failing that, the session
// cookie. It returns ErrNoCredentials when there is neither.
func (a *Authenticator) Authenticate(ctx context.Context, h http.Header) (*Principal, error) {
	if authz := h.Get("Authorization"); authz != "" {
		tok, ok := strings.CutPrefix(authz, "Bearer ")
		if !ok {
			return nil, fmt.Errorf("%w: authorization header is not a bearer token", ErrBadCredentials)
		}
		return a.apiKey(ctx, strings.TrimSpace(tok))
	}
	req := http.Request{Header: h}
	if c, err := req.Cookie(SessionCookie); err == nil && c.Value != "" {
		return a.Session(ctx, c.Value)
	}
	return nil, ErrNoCredentials
}

func (a *Authenticator) apiKey(ctx context.Context, secret string) (*Principal, error) {
	if !HasPrefix(secret, APIKeyPrefix) {
		return nil, fmt.Errorf("%w: not an API key", ErrBadCredentials)
	}
	now := a.now()
	var (
		key    *domain.APIKey
		tenant *domain.Tenant
	)
	err := a.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		if key, err = tx.GetAPIKeyByHash(ctx, HashSecret(secret)); err != nil {
			return err
		}
		tenant, err = tx.GetTenant(ctx, key.TenantID)
		return err
	})
	if errors.Is(err, domain.ErrNotFound) {
		return nil, fmt.Errorf("%w: unknown API key", ErrBadCredentials)
	}
	if err != nil {
		return nil, fmt.Errorf("look up API key: %w", err)
	}
	switch {
	case key.Revoked:
		return nil, fmt.Errorf("%w: API key revoked", ErrBadCredentials)
	case !key.ExpireTime.IsZero() && !now.Before(key.ExpireTime):
		return nil, fmt.Errorf("%w: API key expired", ErrBadCredentials)
	case tenant.Status == domain.TenantSuspended && key.Role != domain.RoleSuperAdmin:
		return nil, ErrSuspended
	}
	if now.Sub(key.LastUsedTime) > touchInterval {
		// Best effort: a failed touch must not fail the request.
		_ = a.Store.Tx(ctx, store.TenantScope(key.TenantID), func(tx store.Tx) error {
			return tx.TouchAPIKey(ctx, key.ID, now)
		})
	}
	p := &Principal{
		Kind: KindAPIKey, ID: key.ID, Name: key.Name, TenantID: key.TenantID, Role: key.Role,
		ExpireTime: key.ExpireTime,
	}
	for _, s := range key.Scopes {
		p.Scopes = append(p.Scopes, Scope(s))
	}
	return p, nil
}

// Session resolves a session secret (the cookie value) to its user.
func (a *Authenticator) Session(ctx context.Context, secret string) (*Principal, error) {
	if !HasPrefix(secret, SessionPrefix) {
		return nil, fmt.Errorf("%w: not a session", ErrBadCredentials)
	}
	var (
		sess   *domain.Session
		user   *domain.User
		tenant *domain.Tenant
	)
	err := a.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		if sess, err = tx.GetSessionByHash(ctx, HashSecret(secret)); err != nil {
			return err
		}
		if user, err = tx.GetUser(ctx, sess.UserID); err != nil {
			return err
		}
		tenant, err = tx.GetTenant(ctx, sess.TenantID)
		return err
	})
	if errors.Is(err, domain.ErrNotFound) {
		return nil, fmt.Errorf("%w: unknown session", ErrBadCredentials)
	}
	if err != nil {
		return nil, fmt.Errorf("look up session: %w", err)
	}
	switch {
	case !a.now().Before(sess.ExpireTime):
		return nil, fmt.Errorf("%w: session expired", ErrBadCredentials)
	case user.Status != domain.UserActive:
		return nil, fmt.Errorf("%w: user disabled", ErrBadCredentials)
	case tenant.Status == domain.TenantSuspended && user.Role != domain.RoleSuperAdmin:
		return nil, ErrSuspended
	}
	name := user.DisplayName
	if name == "" {
		name = user.Name
	}
	return &Principal{
		Kind: KindUser, ID: user.ID, Name: name, Email: user.Email, TenantID: user.TenantID,
		Role: user.Role, ExpireTime: sess.ExpireTime,
	}, nil
}
