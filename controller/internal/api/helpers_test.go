package api

import (
	"encoding/base64"

	"context"
	"golang.org/x/crypto/curve25519"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"connectrpc.com/connect"
	"golang.org/x/time/rate"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/sqlite"
)

// storeKinds are the store implementations every store-backed test runs against.
var storeKinds = []string{"sqlite", "postgres"}

var quiet = slog.New(slog.DiscardHandler)

func openStore(t testing.TB, kind string) store.Store {
	t.Helper()
	if kind == "postgres" {
		d := pgCluster.NewDatabase(t)
		st, err := postgres.Open(context.Background(), postgres.Config{DSN: d.App, MigrationDSN: d.Owner, Logger: quiet})
		if err != nil {
			t.Fatalf("open postgres store: %v", err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	}
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: filepath.Join(t.TempDir(), "cvlan.db"), Logger: quiet})
	if err != nil {
		t.Fatalf("open %s store: %v", kind, err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// env is a controller API served over real HTTP/2 with TLS in memory.
type env struct {
	st     store.Store
	srv    *httptest.Server
	api    *API
	admin  string // bootstrap super_admin key
	sysTID string
	dbDir  string
}

type revocations struct{ ch chan string }

func (r *revocations) RevokeNode(_ context.Context, _, nodeID string) error {
	select {
	case r.ch <- nodeID:
	default:
	}
	return nil
}

func newEnv(t testing.TB, kind string, opts ...Option) *env {
	t.Helper()
	st := openStore(t, kind)
	return newEnvWith(t, st, nil, opts...)
}

func newEnvWith(t testing.TB, st store.Store, deps *Deps, opts ...Option) *env {
	t.Helper()
	ctx := context.Background()
	secret, created, err := auth.Bootstrap(ctx, st)
	if err != nil || !created {
		t.Fatalf("bootstrap: %v %v", created, err)
	}
	sys, err := auth.SystemTenantID(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	d := Deps{Store: st, Logger: quiet}
	if deps != nil {
		d = *deps
		d.Store, d.Logger = st, quiet
	}
	a, err := Mount(mux, d, opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); a.Close() })
	return &env{st: st, srv: srv, api: a, admin: secret, sysTID: sys}
}

// bearer adds an Authorization header to every call.
func bearer(key string) connect.ClientOption {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			if key != "" {
				req.Header().Set("Authorization", "Bearer "+key)
			}
			return next(ctx, req)
		}
	}), streamBearer{key})
}

type streamBearer struct{ key string }

func (b streamBearer) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return next }
func (b streamBearer) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return func(ctx context.Context, spec connect.Spec) connect.StreamingClientConn {
		conn := next(ctx, spec)
		if b.key != "" {
			conn.RequestHeader().Set("Authorization", "Bearer "+b.key)
		}
		return conn
	}
}
func (b streamBearer) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return next
}

// clients are the generated clients of one caller over one protocol.
type clients struct {
	tenant cloudvlanv1connect.TenantServiceClient
	cvlan  cloudvlanv1connect.CvlanServiceClient
	node   cloudvlanv1connect.NodeServiceClient
	user   cloudvlanv1connect.UserServiceClient
	group  cloudvlanv1connect.GroupServiceClient
	tag    cloudvlanv1connect.TagServiceClient
	policy cloudvlanv1connect.PolicyServiceClient
	region cloudvlanv1connect.RegionServiceClient
	relay  cloudvlanv1connect.RelayServiceClient
	vr     cloudvlanv1connect.VRouterServiceClient
	disc   cloudvlanv1connect.DiscoveryServerServiceClient
	key    cloudvlanv1connect.ApiKeyServiceClient
	token  cloudvlanv1connect.JoinTokenServiceClient
	audit  cloudvlanv1connect.AuditLogServiceClient
	auth   cloudvlanv1connect.AuthServiceClient
	events cloudvlanv1connect.EventServiceClient
}

func (e *env) clients(key string, grpc bool) *clients {
	c, u := e.srv.Client(), e.srv.URL
	opts := []connect.ClientOption{bearer(key)}
	if grpc {
		opts = append(opts, connect.WithGRPC())
	}
	return &clients{
		tenant: cloudvlanv1connect.NewTenantServiceClient(c, u, opts...),
		cvlan:  cloudvlanv1connect.NewCvlanServiceClient(c, u, opts...),
		node:   cloudvlanv1connect.NewNodeServiceClient(c, u, opts...),
		user:   cloudvlanv1connect.NewUserServiceClient(c, u, opts...),
		group:  cloudvlanv1connect.NewGroupServiceClient(c, u, opts...),
		tag:    cloudvlanv1connect.NewTagServiceClient(c, u, opts...),
		policy: cloudvlanv1connect.NewPolicyServiceClient(c, u, opts...),
		region: cloudvlanv1connect.NewRegionServiceClient(c, u, opts...),
		relay:  cloudvlanv1connect.NewRelayServiceClient(c, u, opts...),
		vr:     cloudvlanv1connect.NewVRouterServiceClient(c, u, opts...),
		disc:   cloudvlanv1connect.NewDiscoveryServerServiceClient(c, u, opts...),
		key:    cloudvlanv1connect.NewApiKeyServiceClient(c, u, opts...),
		token:  cloudvlanv1connect.NewJoinTokenServiceClient(c, u, opts...),
		audit:  cloudvlanv1connect.NewAuditLogServiceClient(c, u, opts...),
		auth:   cloudvlanv1connect.NewAuthServiceClient(c, u, opts...),
		events: cloudvlanv1connect.NewEventServiceClient(c, u, opts...),
	}
}

// keyFor creates an API key with role in tenant (every scope) and returns its secret.
func (e *env) keyFor(t testing.TB, tenantID string, role domain.Role) string {
	t.Helper()
	secret, label, hash, err := auth.NewSecret(auth.APIKeyPrefix)
	if err != nil {
		t.Fatal(err)
	}
	err = e.st.Tx(context.Background(), store.TenantScope(tenantID), func(tx store.Tx) error {
		return tx.CreateAPIKey(context.Background(), &domain.APIKey{
			TenantID: tenantID, Name: "k-" + string(label[4:]) + "-" + string(role[:3]), Prefix: label, Hash: hash, Role: role,
			Scopes: []string{"read", "write", "admin"},
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return secret
}

// newTenant creates a tenant through the API as the bootstrap admin.
func (e *env) newTenant(t testing.TB, name string) string {
	t.Helper()
	r, err := e.clients(e.admin, false).tenant.CreateTenant(context.Background(), connect.NewRequest(&v1.CreateTenantRequest{Tenant: &v1.Tenant{Name: name}}))
	if err != nil {
		t.Fatalf("create tenant %s: %v", name, err)
	}
	return r.Msg.GetTenant().GetId()
}

var noLimit = WithCreateRateLimit(rate.Inf, 1)

func code(err error) connect.Code {
	if err == nil {
		return 0
	}
	return connect.CodeOf(err)
}

func openStoreAt(t testing.TB, path string) store.Store {
	t.Helper()
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: path, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// newEnvFrom serves an already bootstrapped store again (a controller restart).
func newEnvFrom(t testing.TB, st store.Store, prev *env, deps *Deps, opts ...Option) *env {
	t.Helper()
	mux := http.NewServeMux()
	d := Deps{Store: st, Logger: quiet}
	if deps != nil {
		d = *deps
		d.Store, d.Logger = st, quiet
	}
	a, err := Mount(mux, d, opts...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(func() { srv.Close(); a.Close() })
	return &env{st: st, srv: srv, api: a, admin: prev.admin, sysTID: prev.sysTID}
}

func publicOf(priv string) (string, error) {
	k, err := base64.StdEncoding.DecodeString(priv)
	if err != nil {
		return "", err
	}
	p, err := curve25519.X25519(k, curve25519.Basepoint)
	if err != nil {
		return "", err
	}
	return base64.StdEncoding.EncodeToString(p), nil
}
