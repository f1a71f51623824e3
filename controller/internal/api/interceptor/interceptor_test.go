package interceptor

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"go.uber.org/goleak"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fakeAuthn struct{}

func (fakeAuthn) Authenticate(_ context.Context, h http.Header) (*auth.Principal, error) {
	switch h.Get("Authorization") {
	case "":
		return nil, auth.ErrNoCredentials
	case "Bearer viewer":
		return &auth.Principal{Kind: auth.KindAPIKey, ID: "k1", TenantID: "t1", Role: domain.RoleViewer, Scopes: []auth.Scope{auth.ScopeRead}}, nil
	}
	return nil, auth.ErrBadCredentials
}

// panicky answers GetAuthConfig and panics in WhoAmI.
type panicky struct {
	cloudvlanv1connect.UnimplementedAuthServiceHandler
}

func (panicky) GetAuthConfig(context.Context, *connect.Request[v1.GetAuthConfigRequest]) (*connect.Response[v1.GetAuthConfigResponse], error) {
	return connect.NewResponse(&v1.GetAuthConfigResponse{LoginUrlPath: "/auth/login"}), nil
}

func (panicky) WhoAmI(context.Context, *connect.Request[v1.WhoAmIRequest]) (*connect.Response[v1.WhoAmIResponse], error) {
	panic("boom")
}

func TestChain(t *testing.T) {
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	table := Table{
		cloudvlanv1connect.AuthServiceGetAuthConfigProcedure: {Public: true},
		cloudvlanv1connect.AuthServiceWhoAmIProcedure:        {MinRole: domain.RoleViewer, Scope: auth.ScopeRead},
		// CvlanService is deliberately absent: closed by default.
	}
	mux := http.NewServeMux()
	mux.Handle(cloudvlanv1connect.NewAuthServiceHandler(panicky{}, connect.WithInterceptors(Log(log), Recover(log), Auth(fakeAuthn{}, table), Validate(v))))
	mux.Handle(cloudvlanv1connect.NewCvlanServiceHandler(cloudvlanv1connect.UnimplementedCvlanServiceHandler{}, connect.WithInterceptors(Log(log), Recover(log), Auth(fakeAuthn{}, table), Validate(v))))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	for _, grpc := range []bool{false, true} {
		var opts []connect.ClientOption
		if grpc {
			opts = append(opts, connect.WithGRPC())
		}
		c := cloudvlanv1connect.NewAuthServiceClient(srv.Client(), srv.URL, opts...)
		ctx := context.Background()
		r, err := c.GetAuthConfig(ctx, connect.NewRequest(&v1.GetAuthConfigRequest{}))
		if err != nil || r.Header().Get(RequestIDHeader) == "" {
			t.Fatalf("public call: %v, request id %q", err, r.Header().Get(RequestIDHeader))
		}
		if _, err := c.WhoAmI(ctx, connect.NewRequest(&v1.WhoAmIRequest{})); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("anonymous: %v", err)
		}
		bad := connect.NewRequest(&v1.WhoAmIRequest{})
		bad.Header().Set("Authorization", "Bearer nope")
		if _, err := c.WhoAmI(ctx, bad); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Fatalf("bad key: %v", err)
		}
		ok := connect.NewRequest(&v1.WhoAmIRequest{})
		ok.Header().Set("Authorization", "Bearer viewer")
		_, err = c.WhoAmI(ctx, ok)
		var ce *connect.Error
		if connect.CodeOf(err) != connect.CodeInternal {
			t.Fatalf("panic: %v", err)
		}
		if asErr(err, &ce); ce.Meta().Get(RequestIDHeader) == "" {
			t.Fatal("error without request id")
		}
		// Not in the table: denied for everyone.
		cv := cloudvlanv1connect.NewCvlanServiceClient(srv.Client(), srv.URL, opts...)
		req := connect.NewRequest(&v1.ListCvlansRequest{})
		req.Header().Set("Authorization", "Bearer viewer")
		if _, err := cv.ListCvlans(ctx, req); connect.CodeOf(err) != connect.CodePermissionDenied {
			t.Fatalf("procedure outside the table: %v", err)
		}
	}
}

func asErr(err error, ce **connect.Error) {
	if e, ok := err.(*connect.Error); ok {
		*ce = e
	}
}

func TestTenantScopedRule(t *testing.T) {
	// A non-super_admin naming another tenant gets NotFound before the handler runs.
	table := Table{cloudvlanv1connect.CvlanServiceListCvlansProcedure: {MinRole: domain.RoleViewer, Scope: auth.ScopeRead, TenantScoped: true}}
	called := 0
	h := handlerFunc(func() { called++ })
	mux := http.NewServeMux()
	mux.Handle(cloudvlanv1connect.NewCvlanServiceHandler(h, connect.WithInterceptors(Auth(fakeAuthn{}, table))))
	srv := httptest.NewUnstartedServer(mux)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	t.Cleanup(srv.Close)
	c := cloudvlanv1connect.NewCvlanServiceClient(srv.Client(), srv.URL)
	for tenant, want := range map[string]connect.Code{"": 0, "t1": 0, "t2": connect.CodeNotFound} {
		req := connect.NewRequest(&v1.ListCvlansRequest{TenantId: tenant})
		req.Header().Set("Authorization", "Bearer viewer")
		_, err := c.ListCvlans(context.Background(), req)
		if got := connect.CodeOf(err); (err == nil && want != 0) || (err != nil && got != want) {
			t.Errorf("tenant %q: %v, want %v", tenant, err, want)
		}
	}
	if called != 2 {
		t.Fatalf("handler ran %d times, want 2", called)
	}
}

type handlerFunc func()

func (f handlerFunc) GetCvlan(context.Context, *connect.Request[v1.GetCvlanRequest]) (*connect.Response[v1.GetCvlanResponse], error) {
	return nil, nil
}
func (f handlerFunc) ListCvlans(context.Context, *connect.Request[v1.ListCvlansRequest]) (*connect.Response[v1.ListCvlansResponse], error) {
	f()
	return connect.NewResponse(&v1.ListCvlansResponse{}), nil
}
func (f handlerFunc) CreateCvlan(context.Context, *connect.Request[v1.CreateCvlanRequest]) (*connect.Response[v1.CreateCvlanResponse], error) {
	return nil, nil
}
func (f handlerFunc) UpdateCvlan(context.Context, *connect.Request[v1.UpdateCvlanRequest]) (*connect.Response[v1.UpdateCvlanResponse], error) {
	return nil, nil
}
func (f handlerFunc) DeleteCvlan(context.Context, *connect.Request[v1.DeleteCvlanRequest]) (*connect.Response[v1.DeleteCvlanResponse], error) {
	return nil, nil
}
func (f handlerFunc) GetCvlanStats(context.Context, *connect.Request[v1.GetCvlanStatsRequest]) (*connect.Response[v1.GetCvlanStatsResponse], error) {
	return nil, nil
}
