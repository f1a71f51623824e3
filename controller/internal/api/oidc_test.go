package api

import (
	"context"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"

	"connectrpc.com/connect"
	"github.com/zitadel/oidc/v3/example/server/exampleop"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// idpStorage is the zitadel example provider's in-memory storage plus the claims our login
// reads from the ID token: email, name and the IdP groups.
type idpStorage struct {
	*storage.Storage
	groups map[string][]string // user id -> IdP groups
}

func (s *idpStorage) SetUserinfoFromRequest(ctx context.Context, ui *oidc.UserInfo, tr op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, ui, tr, append(scopes, oidc.ScopeEmail, oidc.ScopeProfile)); err != nil {
		return err
	}
	ui.AppendClaims("groups", s.groups[tr.GetSubject()])
	return nil
}

// recorder keeps the Set-Cookie headers the controller sent.
type recorder struct {
	rt   http.RoundTripper
	host string
	mu   sync.Mutex
	set  []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := r.rt.RoundTrip(req)
	if err == nil && req.URL.Host == r.host {
		r.mu.Lock()
		r.set = append(r.set, resp.Header.Values("Set-Cookie")...)
		r.mu.Unlock()
	}
	return resp, err
}

// TestOIDCLogin runs the authorization-code flow with PKCE against a real OpenID provider (the
// zitadel op package) on loopback: the login creates the user with the role its IdP groups
// map to, adds it to the groups fed by those IdP groups, and sets an HttpOnly, Secure,
// SameSite=Lax session cookie that authenticates API calls until logout.
func TestOIDCLogin(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, "sqlite")
	secret, _, err := auth.Bootstrap(ctx, st)
	if err != nil {
		t.Fatal(err)
	}

	// The controller, with its address known before it starts (the IdP needs the callback URL).
	mux := http.NewServeMux()
	ctrl := httptest.NewUnstartedServer(mux)
	ctrl.EnableHTTP2 = true
	ctrlURL := "https://" + ctrl.Listener.Addr().String()

	// The OpenID provider.
	idpMux := http.NewServeMux()
	idp := httptest.NewServer(idpMux)
	t.Cleanup(idp.Close)
	storage.RegisterClients(storage.WebClient("cloudvlan", "s3cret", ctrlURL+auth.CallbackPath))
	users := storage.NewUserStore(idp.URL)
	ids := &idpStorage{Storage: storage.NewStorage(users), groups: map[string][]string{"id1": {"engineering", "net-admins"}}}
	idpMux.Handle("/", exampleop.SetupServer(idp.URL, ids, nil, false))

	// A tenant, and a group fed by the IdP group "engineering".
	tmp := newEnvFrom(t, st, &env{admin: secret}, nil)
	tid := tmp.newTenant(t, "acme")
	ta := tmp.clients(tmp.keyFor(t, tid, domain.RoleTenantAdmin), false)
	g, err := ta.group.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Group: &v1.Group{Name: "devs", IdpGroupNames: []string{"engineering"}}}))
	if err != nil {
		t.Fatal(err)
	}
	other, err := ta.group.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Group: &v1.Group{Name: "ops", IdpGroupNames: []string{"operations"}}}))
	if err != nil {
		t.Fatal(err)
	}

	a, err := Mount(mux, Deps{Store: st, Logger: quiet, OIDC: &auth.OIDCConfig{
		Issuer: idp.URL, ClientID: "cloudvlan", ClientSecret: "s3cret", RedirectURL: ctrlURL + auth.CallbackPath,
		ProviderName: "Test IdP", TenantID: tid, DefaultRole: domain.RoleViewer,
		RoleForGroup: map[string]domain.Role{"net-admins": domain.RoleTenantAdmin},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctrl.StartTLS()
	t.Cleanup(func() { ctrl.Close(); a.Close() })

	jar, _ := cookiejar.New(nil)
	rec := &recorder{rt: ctrl.Client().Transport, host: ctrl.Listener.Addr().String()}
	browser := &http.Client{Transport: rec, Jar: jar}

	cfg, err := cloudvlanv1connect.NewAuthServiceClient(browser, ctrlURL).GetAuthConfig(ctx, connect.NewRequest(&v1.GetAuthConfigRequest{}))
	if err != nil || !cfg.Msg.GetOidcEnabled() || cfg.Msg.GetLoginUrlPath() != auth.LoginPath || cfg.Msg.GetOidcIssuer() != idp.URL {
		t.Fatalf("auth config %v %v", cfg, err)
	}

	// Start the login: controller -> IdP login page.
	resp, err := browser.Get(ctrlURL + auth.LoginPath + "?redirect=/nodes")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	reqID := resp.Request.URL.Query().Get("authRequestID")
	if resp.StatusCode != http.StatusOK || reqID == "" {
		t.Fatalf("login page: %d %s", resp.StatusCode, resp.Request.URL)
	}
	// The authorization request carried a PKCE challenge.
	ar, err := ids.AuthRequestByID(ctx, reqID)
	if err != nil || ar.GetCodeChallenge() == nil || ar.GetCodeChallenge().Method != oidc.CodeChallengeMethodS256 {
		t.Fatalf("auth request without S256 PKCE: %v %v", ar, err)
	}
	// Sign in at the IdP: it redirects to our callback, which sets the session and redirects on.
	u, _ := url.Parse(idp.URL + "/login/username")
	resp, err = browser.PostForm(u.String(), url.Values{"username": {"test-user@127.0.0.1"}, "password": {"verysecure"}, "id": {reqID}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/nodes" || resp.Request.URL.Host != ctrl.Listener.Addr().String() {
		t.Fatalf("after login landed on %s (%d)", resp.Request.URL, resp.StatusCode)
	}
	var sessionCookie string
	for _, c := range rec.set {
		if strings.HasPrefix(c, auth.SessionCookie+"=") && !strings.Contains(c, "Max-Age=0") {
			sessionCookie = c
		}
	}
	for _, attr := range []string{"HttpOnly", "Secure", "SameSite=Lax"} {
		if !strings.Contains(sessionCookie, attr) {
			t.Fatalf("session cookie %q lacks %s", sessionCookie, attr)
		}
	}

	// The session authenticates API calls as the new user with the mapped role.
	who, err := cloudvlanv1connect.NewAuthServiceClient(browser, ctrlURL).WhoAmI(ctx, connect.NewRequest(&v1.WhoAmIRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	if who.Msg.GetKind() != v1.PrincipalKind_PRINCIPAL_KIND_USER || who.Msg.GetRole() != v1.UserRole_USER_ROLE_TENANT_ADMIN ||
		who.Msg.GetTenantId() != tid || who.Msg.GetEmail() != "test-user@zitadel.ch" {
		t.Fatalf("whoami %v", who.Msg)
	}
	// Group mapping: a member of "devs" (fed by "engineering"), not of "ops".
	for _, c := range []struct {
		id   string
		want bool
	}{{g.Msg.GetGroup().GetId(), true}, {other.Msg.GetGroup().GetId(), false}} {
		gr, err := ta.group.GetGroup(ctx, connect.NewRequest(&v1.GetGroupRequest{Id: c.id}))
		if err != nil {
			t.Fatal(err)
		}
		member := false
		for _, m := range gr.Msg.GetGroup().GetMembers() {
			member = member || m.GetUserId() == who.Msg.GetPrincipalId()
		}
		if member != c.want {
			t.Fatalf("group %s membership %v, want %v", gr.Msg.GetGroup().GetName(), member, c.want)
		}
	}
	al, err := ta.audit.ListAuditLogs(ctx, connect.NewRequest(&v1.ListAuditLogsRequest{ActorType: v1.ActorType_ACTOR_TYPE_USER}))
	if err != nil || len(al.Msg.GetAuditLogs()) != 3 || al.Msg.GetAuditLogs()[2].GetAction() != "user.create" || al.Msg.GetAuditLogs()[1].GetAction() != "group.sync_idp_members" {
		t.Fatalf("login audit %v %v", al, err)
	}

	// Logout ends the session.
	req, _ := http.NewRequest(http.MethodPost, ctrlURL+auth.LogoutPath, nil)
	resp, err = browser.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if _, err := cloudvlanv1connect.NewAuthServiceClient(browser, ctrlURL).WhoAmI(ctx, connect.NewRequest(&v1.WhoAmIRequest{})); code(err) != connect.CodeUnauthenticated {
		t.Fatalf("after logout: %v", err)
	}

	// A callback whose state does not match the login's cookie is refused.
	resp, err = browser.Get(ctrlURL + auth.CallbackPath + "?code=x&state=forged")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("forged callback: %d", resp.StatusCode)
	}
}
