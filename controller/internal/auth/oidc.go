package auth

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// Paths of the OIDC endpoints on the API port.
const (
	LoginPath    = "/auth/login"
	CallbackPath = "/auth/callback"
	LogoutPath   = "/auth/logout"
)

// flowCookie carries the state, nonce and PKCE verifier of one login between /auth/login and
// /auth/callback. Keeping them in the browser (HttpOnly, Secure, short-lived) instead of in
// memory lets any replica finish a login another replica started.
const flowCookie = "cvlan_oidc_flow"

// OIDCConfig configures the UI login through an OpenID provider.
type OIDCConfig struct {
	// Issuer is the provider's issuer URL (discovery at <issuer>/.well-known/openid-configuration).
	Issuer       string
	ClientID     string
	ClientSecret string
	// RedirectURL is this controller's callback, e.g. "https://cvlan.example.com/auth/callback".
	RedirectURL string
	// ProviderName is shown on the login button.
	ProviderName string
	// TenantID is the tenant new users are created in.
	TenantID string
	// GroupsClaim is the ID-token claim listing the user's IdP groups (default "groups").
	GroupsClaim string
	// RoleForGroup maps IdP group names to roles; a user gets the highest role matched.
	RoleForGroup map[string]domain.Role
	// DefaultRole is the role of a user matching no RoleForGroup entry; empty refuses them.
	DefaultRole domain.Role
	// SessionTTL is the UI session lifetime (default 12h).
	SessionTTL time.Duration
	// HTTPClient talks to the provider (default http.DefaultClient).
	HTTPClient *http.Client
}

// OIDCHandler serves the login, callback and logout endpoints.
type OIDCHandler struct {
	cfg   OIDCConfig
	st    store.Store
	authn *Authenticator
	limit *KeyedLimiter
	log   *slog.Logger

	mu       sync.Mutex
	provider *oidc.Provider
}

// NewOIDCHandler checks cfg; the provider is discovered on the first login, so that a
// controller starts even while the IdP is unreachable.
func NewOIDCHandler(_ context.Context, cfg OIDCConfig, st store.Store, authn *Authenticator, limit *KeyedLimiter, log *slog.Logger) (*OIDCHandler, error) {
	if cfg.Issuer == "" || cfg.ClientID == "" || cfg.RedirectURL == "" || cfg.TenantID == "" {
		return nil, errors.New("oidc: issuer, client id, redirect URL and tenant are required")
	}
	if cfg.GroupsClaim == "" {
		cfg.GroupsClaim = "groups"
	}
	if cfg.SessionTTL == 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = http.DefaultClient
	}
	return &OIDCHandler{cfg: cfg, st: st, authn: authn, limit: limit, log: log}, nil
}

// Mount registers the endpoints on mux.
func (h *OIDCHandler) Mount(mux *http.ServeMux) {
	mux.HandleFunc("GET "+LoginPath, h.login)
	mux.HandleFunc("GET "+CallbackPath, h.callback)
	mux.HandleFunc("POST "+LogoutPath, h.logout)
}

func (h *OIDCHandler) clientCtx(ctx context.Context) context.Context {
	return oidc.ClientContext(ctx, h.cfg.HTTPClient)
}

func (h *OIDCHandler) oauth(ctx context.Context) (*oidc.Provider, *oauth2.Config, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.provider == nil {
		p, err := oidc.NewProvider(h.clientCtx(ctx), h.cfg.Issuer)
		if err != nil {
			return nil, nil, fmt.Errorf("oidc discovery: %w", err)
		}
		h.provider = p
	}
	return h.provider, &oauth2.Config{
		ClientID: h.cfg.ClientID, ClientSecret: h.cfg.ClientSecret, RedirectURL: h.cfg.RedirectURL,
		Endpoint: h.provider.Endpoint(), Scopes: []string{oidc.ScopeOpenID, "email", "profile", "groups"},
	}, nil
}

func (h *OIDCHandler) allow(w http.ResponseWriter, r *http.Request) bool {
	ip := r.RemoteAddr
	if host, _, err := net.SplitHostPort(ip); err == nil {
		ip = host
	}
	if !h.limit.Allow("login:" + ip) {
		http.Error(w, "too many login attempts; retry later", http.StatusTooManyRequests)
		return false
	}
	return true
}

type flow struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	Redirect string `json:"r"`
}

func randString() string {
	var b [24]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

var localPath = regexp.MustCompile(`^/[^/\\]`)

func (h *OIDCHandler) login(w http.ResponseWriter, r *http.Request) {
	if !h.allow(w, r) {
		return
	}
	_, oc, err := h.oauth(r.Context())
	if err != nil {
		h.log.ErrorContext(r.Context(), "oidc login", "err", err)
		http.Error(w, "identity provider unavailable", http.StatusBadGateway)
		return
	}
	f := flow{State: randString(), Nonce: randString(), Verifier: oauth2.GenerateVerifier(), Redirect: "/"}
	// Only local paths: an open redirect would let a phishing link bounce through us.
	if rd := r.URL.Query().Get("redirect"); localPath.MatchString(rd) || rd == "/" {
		f.Redirect = rd
	}
	raw, _ := json.Marshal(f)
	http.SetCookie(w, &http.Cookie{
		Name: flowCookie, Value: base64.RawURLEncoding.EncodeToString(raw), Path: "/auth/",
		MaxAge: 600, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode,
	})
	http.Redirect(w, r, oc.AuthCodeURL(f.State, oidc.Nonce(f.Nonce), oauth2.S256ChallengeOption(f.Verifier)), http.StatusFound)
}

func (h *OIDCHandler) callback(w http.ResponseWriter, r *http.Request) {
	if !h.allow(w, r) {
		return
	}
	ctx := r.Context()
	fail := func(code int, msg string, err error) {
		h.log.WarnContext(ctx, "oidc callback", "msg", msg, "err", err)
		http.Error(w, msg, code)
	}
	c, err := r.Cookie(flowCookie)
	if err != nil {
		fail(http.StatusBadRequest, "login flow expired; start again", err)
		return
	}
	raw, err := base64.RawURLEncoding.DecodeString(c.Value)
	var f flow
	if err == nil {
		err = json.Unmarshal(raw, &f)
	}
	if err != nil || f.State == "" || r.URL.Query().Get("state") != f.State {
		fail(http.StatusBadRequest, "login state mismatch", err)
		return
	}
	http.SetCookie(w, &http.Cookie{Name: flowCookie, Path: "/auth/", MaxAge: -1, HttpOnly: true, Secure: true})
	if e := r.URL.Query().Get("error"); e != "" {
		fail(http.StatusUnauthorized, "identity provider refused the login: "+e, nil)
		return
	}
	p, oc, err := h.oauth(ctx)
	if err != nil {
		fail(http.StatusBadGateway, "identity provider unavailable", err)
		return
	}
	tok, err := oc.Exchange(h.clientCtx(ctx), r.URL.Query().Get("code"), oauth2.VerifierOption(f.Verifier))
	if err != nil {
		fail(http.StatusUnauthorized, "code exchange failed", err)
		return
	}
	rawID, _ := tok.Extra("id_token").(string)
	idt, err := p.Verifier(&oidc.Config{ClientID: h.cfg.ClientID}).Verify(h.clientCtx(ctx), rawID)
	if err != nil {
		fail(http.StatusUnauthorized, "invalid id token", err)
		return
	}
	if idt.Nonce != f.Nonce {
		fail(http.StatusUnauthorized, "id token nonce mismatch", nil)
		return
	}
	var claims map[string]any
	if err := idt.Claims(&claims); err != nil {
		fail(http.StatusUnauthorized, "unreadable id token claims", err)
		return
	}
	secret, err := h.signIn(ctx, idt.Issuer, idt.Subject, claims, r)
	if errors.Is(err, errNoRole) {
		fail(http.StatusForbidden, "your identity provider groups grant no role here", err)
		return
	}
	if err != nil {
		fail(http.StatusInternalServerError, "sign-in failed", err)
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: secret, Path: "/", MaxAge: int(h.cfg.SessionTTL.Seconds()),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode,
	})
	http.Redirect(w, r, f.Redirect, http.StatusFound)
}

var errNoRole = errors.New("no role")

func claimString(c map[string]any, k string) string {
	s, _ := c[k].(string)
	return s
}

func claimStrings(c map[string]any, k string) []string {
	var out []string
	switch v := c[k].(type) {
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	case string:
		out = strings.Fields(v)
	}
	return out
}

// RoleFor returns the highest role the IdP groups grant, or DefaultRole.
func (cfg OIDCConfig) RoleFor(groups []string) domain.Role {
	best := cfg.DefaultRole
	for _, g := range groups {
		if r, ok := cfg.RoleForGroup[g]; ok && rank(r) > rank(best) {
			best = r
		}
	}
	return best
}

var labelRE = regexp.MustCompile(`[^a-z0-9-]+`)

func userName(email, subject string) string {
	base := strings.ToLower(strings.SplitN(email, "@", 2)[0])
	if base == "" {
		base = strings.ToLower(subject)
	}
	base = strings.Trim(labelRE.ReplaceAllString(base, "-"), "-")
	if len(base) > 40 {
		base = base[:40]
	}
	if base == "" {
		base = "user"
	}
	return base + "-" + strings.ToLower(randString()[:6])
}

// signIn finds or creates the user, syncs their role and IdP-fed group memberships, creates a
// session and returns its secret, all in one transaction with its audit rows.
func (h *OIDCHandler) signIn(ctx context.Context, issuer, subject string, claims map[string]any, r *http.Request) (string, error) {
	groups := claimStrings(claims, h.cfg.GroupsClaim)
	role := h.cfg.RoleFor(groups)
	if !ValidRole(role) {
		return "", errNoRole
	}
	secret, _, hash, err := NewSecret(SessionPrefix)
	if err != nil {
		return "", err
	}
	var existing *domain.User
	err = h.st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		u, err := tx.GetUserByOIDC(ctx, issuer, subject)
		if errors.Is(err, domain.ErrNotFound) {
			return nil
		}
		existing = u
		return err
	})
	if err != nil {
		return "", err
	}
	tenant := h.cfg.TenantID
	if existing != nil {
		tenant = existing.TenantID
	}
	now := time.Now().UTC()
	err = h.st.Tx(ctx, store.TenantScope(tenant), func(tx store.Tx) error {
		audit := func(action, rtype, id string, before, after any) error {
			b, _ := json.Marshal(before)
			a, _ := json.Marshal(after)
			if before == nil {
				b = nil
			}
			if after == nil {
				a = nil
			}
			return tx.AppendAudit(ctx, &domain.AuditEntry{
				ActorType: domain.ActorUser, ActorName: claimString(claims, "email"), Action: action,
				ResourceType: rtype, ResourceID: id, Before: b, After: a, PeerAddress: r.RemoteAddr,
			})
		}
		var u *domain.User
		if existing != nil {
			cur, err := tx.GetUser(ctx, existing.ID)
			if err != nil {
				return err
			}
			if cur.Status != domain.UserActive {
				return fmt.Errorf("%w: user disabled", errNoRole)
			}
			before := *cur
			cur.Role, cur.LastLoginTime = role, now
			if n := claimString(claims, "name"); n != "" {
				cur.DisplayName = n
			}
			cur.Version = 0
			if err := tx.UpdateUser(ctx, cur); err != nil {
				return err
			}
			u = cur
			if before.Role != cur.Role {
				if err := audit("user.update", domain.ResourceUser, u.ID, before, u); err != nil {
					return err
				}
			}
		} else {
			u = &domain.User{
				TenantID: tenant, Name: userName(claimString(claims, "email"), subject),
				Email: claimString(claims, "email"), DisplayName: claimString(claims, "name"), Role: role,
				Status: domain.UserActive, OIDCIssuer: issuer, OIDCSubject: subject, LastLoginTime: now,
			}
			if err := tx.CreateUser(ctx, u); err != nil {
				return err
			}
			if err := audit("user.create", domain.ResourceUser, u.ID, nil, u); err != nil {
				return err
			}
		}
		if err := h.syncGroups(ctx, tx, u.ID, groups, audit); err != nil {
			return err
		}
		sess := &domain.Session{
			TenantID: tenant, UserID: u.ID, Hash: hash, ExpireTime: now.Add(h.cfg.SessionTTL),
			UserAgent: r.UserAgent(), PeerAddress: r.RemoteAddr,
		}
		if err := tx.CreateSession(ctx, sess); err != nil {
			return err
		}
		return audit("session.create", domain.ResourceSession, sess.ID, nil, map[string]any{"user_id": u.ID, "expire_time": sess.ExpireTime})
	})
	if err != nil {
		return "", err
	}
	return secret, nil
}

// syncGroups makes the user a member of exactly those IdP-fed groups (groups with
// IdPGroupNames) whose names intersect the user's IdP groups; manual groups are left alone.
func (h *OIDCHandler) syncGroups(ctx context.Context, tx store.Tx, userID string, idpGroups []string, audit func(string, string, string, any, any) error) error {
	tok := ""
	for {
		p, err := tx.ListGroups(ctx, store.GroupFilter{}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
		if err != nil {
			return err
		}
		for _, g := range p.Items {
			if len(g.IdPGroupNames) == 0 {
				continue
			}
			want := slices.ContainsFunc(g.IdPGroupNames, func(n string) bool { return slices.Contains(idpGroups, n) })
			me := domain.GroupMember{UserID: userID}
			has := slices.Contains(g.Members, me)
			if want == has {
				continue
			}
			before := *g
			before.Members = slices.Clone(g.Members)
			if want {
				g.Members = append(g.Members, me)
			} else {
				g.Members = slices.DeleteFunc(g.Members, func(m domain.GroupMember) bool { return m == me })
			}
			g.Version = 0
			if err := tx.UpdateGroup(ctx, g); err != nil {
				return err
			}
			if err := audit("group.sync_idp_members", domain.ResourceGroup, g.ID, before, g); err != nil {
				return err
			}
		}
		if p.NextPageToken == "" {
			return nil
		}
		tok = p.NextPageToken
	}
}

func (h *OIDCHandler) logout(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if c, err := r.Cookie(SessionCookie); err == nil && c.Value != "" {
		var sess *domain.Session
		err := h.st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) (err error) {
			sess, err = tx.GetSessionByHash(ctx, HashSecret(c.Value))
			return err
		})
		if err == nil {
			err = h.st.Tx(ctx, store.TenantScope(sess.TenantID), func(tx store.Tx) error {
				if err := tx.DeleteSession(ctx, sess.ID, 0); err != nil {
					return err
				}
				return tx.AppendAudit(ctx, &domain.AuditEntry{
					ActorType: domain.ActorUser, ActorID: sess.UserID, Action: "session.delete",
					ResourceType: domain.ResourceSession, ResourceID: sess.ID, PeerAddress: r.RemoteAddr,
				})
			})
		}
		if err != nil && !errors.Is(err, domain.ErrNotFound) {
			h.log.WarnContext(ctx, "logout", "err", err)
		}
	}
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Path: "/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteLaxMode})
	w.WriteHeader(http.StatusNoContent)
}
