// Package api serves the user-facing cloudvlan.v1 services with connect-go (Connect, gRPC and
// gRPC-Web on one handler). Handlers are thin adapters between the generated messages and the
// domain types; every mutation runs in one store transaction together with its audit row.
// Cross-cutting work (authentication, authorization, validation, logging, recovery, rate
// limits) is done by the interceptors of package interceptor, configured here.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"

	"github.com/cloudvlan/cloudvlan/controller/internal/api/interceptor"
	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// NodeRevoker is told, after the transaction committed, that a node was deleted or quarantined,
// so that the node plane closes its streams and refuses its certificate at once. The node plane
// (cmd wiring) implements it; nil means no node plane.
type NodeRevoker interface {
	RevokeNode(ctx context.Context, tenantID, nodeID string) error
}

// Deps are what the API needs from the rest of the controller.
type Deps struct {
	Store store.Store
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Revoker may be nil.
	Revoker NodeRevoker
	// OIDC configures the UI login; nil disables it (API keys only).
	OIDC *auth.OIDCConfig
}

// Option tunes Mount.
type Option func(*options)

type options struct {
	heartbeat     time.Duration
	createLimit   rate.Limit
	createBurst   int
	loginLimit    rate.Limit
	loginBurst    int
	handlerOpts   []connect.HandlerOption
	eventBuffer   int
	feedPollEvery time.Duration
}

// WithHeartbeat sets the WatchEvents heartbeat interval (default 15s).
func WithHeartbeat(d time.Duration) Option { return func(o *options) { o.heartbeat = d } }

// WithCreateRateLimit sets the per-principal rate of CreateJoinToken and CreateApiKey (default
// 1/s with a burst of 20).
func WithCreateRateLimit(r rate.Limit, burst int) Option {
	return func(o *options) { o.createLimit, o.createBurst = r, burst }
}

// WithLoginRateLimit sets the per-IP rate of OIDC login attempts (default 1/s, burst 10).
func WithLoginRateLimit(r rate.Limit, burst int) Option {
	return func(o *options) { o.loginLimit, o.loginBurst = r, burst }
}

// WithHandlerOptions adds connect handler options (e.g. compression, read limits).
func WithHandlerOptions(opts ...connect.HandlerOption) Option {
	return func(o *options) { o.handlerOpts = append(o.handlerOpts, opts...) }
}

// API is the mounted user-facing API.
type API struct {
	srv *server
}

// Close stops the event feed follower (WatchEvents streams end).
func (a *API) Close() { a.srv.hub.close() }

// Mount mounts every cloudvlan.v1 service and the OIDC endpoints (/auth/login, /auth/callback,
// /auth/logout) on mux. Reflection, health and the UI are mounted by the caller.
func Mount(mux *http.ServeMux, deps Deps, opts ...Option) (*API, error) {
	o := options{
		heartbeat: 15 * time.Second, createLimit: 1, createBurst: 20, loginLimit: 1, loginBurst: 10,
		eventBuffer: 256, feedPollEvery: 2 * time.Second,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if deps.Store == nil {
		return nil, errors.New("api: Deps.Store is nil")
	}
	log := deps.Logger
	if log == nil {
		log = slog.Default()
	}
	validator, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("api: protovalidate: %w", err)
	}
	s := &server{st: deps.Store, log: log, revoker: deps.Revoker, now: time.Now, heartbeat: o.heartbeat, validator: validator}
	s.hub = newHub(deps.Store, log, o.eventBuffer, o.feedPollEvery)
	authn := &auth.Authenticator{Store: deps.Store}
	if deps.OIDC != nil {
		s.oidc = deps.OIDC
		h, err := auth.NewOIDCHandler(context.Background(), *deps.OIDC, deps.Store, authn,
			auth.NewKeyedLimiter(o.loginLimit, o.loginBurst), log)
		if err != nil {
			return nil, fmt.Errorf("api: %w", err)
		}
		h.Mount(mux)
	}
	createLimiter := auth.NewKeyedLimiter(o.createLimit, o.createBurst)
	ints := connect.WithInterceptors(
		interceptor.Log(log), // outermost: it also stamps the request id on errors from Recover
		interceptor.Recover(log),
		interceptor.Auth(authn, AuthzTable()),
		interceptor.RateLimit(createLimiter,
			cloudvlanv1connect.JoinTokenServiceCreateJoinTokenProcedure,
			cloudvlanv1connect.ApiKeyServiceCreateApiKeyProcedure),
		interceptor.Validate(validator),
	)
	hopts := append([]connect.HandlerOption{ints}, o.handlerOpts...)
	for _, mount := range []func() (string, http.Handler){
		func() (string, http.Handler) { return cloudvlanv1connect.NewTenantServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewCvlanServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewNodeServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewUserServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewGroupServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewTagServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewPolicyServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewRegionServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewRelayServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewVRouterServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewDiscoveryServerServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewApiKeyServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewJoinTokenServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewAuditLogServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewAuthServiceHandler(s, hopts...) },
		func() (string, http.Handler) { return cloudvlanv1connect.NewEventServiceHandler(s, hopts...) },
	} {
		mux.Handle(mount())
	}
	return &API{srv: s}, nil
}

// server implements every cloudvlan.v1 handler interface.
type server struct {
	st        store.Store
	log       *slog.Logger
	revoker   NodeRevoker
	oidc      *auth.OIDCConfig
	now       func() time.Time
	heartbeat time.Duration
	hub       *hub
	validator protovalidate.Validator

	sysMu     sync.Mutex
	sysTenant string
}

// systemTenant returns the id of the tenant that holds deployment-wide resources (regions,
// shared relays); see auth.SystemTenantName.
func (s *server) systemTenant(ctx context.Context) (string, error) {
	s.sysMu.Lock()
	defer s.sysMu.Unlock()
	if s.sysTenant != "" {
		return s.sysTenant, nil
	}
	id, err := auth.SystemTenantID(ctx, s.st)
	if err != nil {
		return "", fmt.Errorf("%w: no system tenant (was auth.Bootstrap run?): %v", domain.ErrFailedPrecondition, err)
	}
	s.sysTenant = id
	return id, nil
}

// principal returns the caller (never nil past the Auth interceptor on non-public procedures).
func principal(ctx context.Context) (*auth.Principal, error) {
	p := auth.PrincipalFrom(ctx)
	if p == nil {
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("no principal"))
	}
	return p, nil
}

// tenantOf resolves a request's tenant_id: empty means the caller's own tenant. The Auth
// interceptor already refused other tenants for callers who are not super_admin; this check
// repeats it so that a handler called without the interceptor cannot leak.
func (s *server) tenantOf(ctx context.Context, requested string) (store.Scope, error) {
	p, err := principal(ctx)
	if err != nil {
		return store.Scope{}, err
	}
	if requested == "" || requested == p.TenantID {
		return store.TenantScope(p.TenantID), nil
	}
	if !p.IsSuperAdmin() {
		return store.Scope{}, connect.NewError(connect.CodeNotFound, errors.New("tenant not found"))
	}
	return store.TenantScope(requested), nil
}

// read runs fn in a read transaction and maps its error.
func (s *server) read(ctx context.Context, scope store.Scope, fn func(store.Tx) error) error {
	return s.toConnect(ctx, s.st.ReadTx(ctx, scope, fn))
}

// write runs fn in a read-write transaction and maps its error. fn writes the audit row with
// s.audit, so that mutation and audit commit together or not at all.
func (s *server) write(ctx context.Context, scope store.Scope, fn func(store.Tx) error) error {
	return s.toConnect(ctx, s.st.Tx(ctx, scope, fn))
}

// parseEtag returns the version an etag names; "" is 0 (an unconditional write).
func parseEtag(e string) (int64, error) {
	if e == "" {
		return 0, nil
	}
	v, err := strconv.ParseInt(strings.TrimPrefix(e, "v"), 10, 64)
	if err != nil || v <= 0 || !strings.HasPrefix(e, "v") {
		return 0, invalid("malformed etag %q", e)
	}
	return v, nil
}

// checkEtag fails with Aborted when a set etag does not name the current version.
func checkEtag(e string, m domain.Meta) (int64, error) {
	v, err := parseEtag(e)
	if err != nil {
		return 0, err
	}
	if v != 0 && v != m.Version {
		return 0, connect.NewError(connect.CodeAborted, fmt.Errorf("%w: etag %s is stale (current %s)", domain.ErrConflict, e, etag(m)))
	}
	return v, nil
}

// listOpts converts paging fields.
func listOpts(size int32, token string) store.ListOptions {
	return store.ListOptions{PageSize: int(size), PageToken: token, WithTotal: true}
}

// afterCommit notifies the node plane that a node's identity must be revoked.
func (s *server) revokeNode(ctx context.Context, tenantID, nodeID string) {
	if s.revoker == nil {
		return
	}
	if err := s.revoker.RevokeNode(context.WithoutCancel(ctx), tenantID, nodeID); err != nil {
		s.log.ErrorContext(ctx, "revoke node identity", "tenant", tenantID, "node", nodeID, "err", err)
	}
}
