package auth

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/sqlite"
)

func TestNewSecret(t *testing.T) {
	seen := map[string]bool{}
	for range 100 {
		s, label, hash, err := NewSecret(APIKeyPrefix)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(s, "cvk_") || len(s) != 4+43 || label != s[:8] || string(hash) != string(HashSecret(s)) || len(hash) != 32 {
			t.Fatalf("secret %q label %q", s, label)
		}
		if seen[s] {
			t.Fatal("secret repeated")
		}
		seen[s] = true
	}
}

func TestRoles(t *testing.T) {
	for _, c := range []struct {
		have, want domain.Role
		ok         bool
	}{
		{domain.RoleSuperAdmin, domain.RoleViewer, true},
		{domain.RoleTenantAdmin, domain.RoleSuperAdmin, false},
		{domain.RoleOperator, domain.RoleOperator, true},
		{domain.RoleViewer, domain.RoleOperator, false},
		{"", domain.RoleViewer, false},
		{"root", "", false},
	} {
		if got := AtLeast(c.have, c.want); got != c.ok {
			t.Errorf("AtLeast(%q, %q) = %v", c.have, c.want, got)
		}
	}
	cfg := OIDCConfig{DefaultRole: domain.RoleViewer, RoleForGroup: map[string]domain.Role{"ops": domain.RoleOperator, "admins": domain.RoleTenantAdmin}}
	for groups, want := range map[string]domain.Role{"": domain.RoleViewer, "ops": domain.RoleOperator, "ops admins x": domain.RoleTenantAdmin} {
		if got := cfg.RoleFor(strings.Fields(groups)); got != want {
			t.Errorf("RoleFor(%q) = %s, want %s", groups, got, want)
		}
	}
	if (OIDCConfig{}).RoleFor([]string{"x"}) != "" {
		t.Error("no default role and no match must give no role")
	}
}

func TestKeyedLimiter(t *testing.T) {
	l := NewKeyedLimiter(rate.Every(time.Hour), 2)
	if !l.Allow("a") || !l.Allow("a") || l.Allow("a") {
		t.Fatal("burst of 2 not enforced")
	}
	if !l.Allow("b") {
		t.Fatal("keys must not share a bucket")
	}
}

func TestAuthenticate(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(t.TempDir(), "db")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	secret, created, err := Bootstrap(ctx, st)
	if err != nil || !created {
		t.Fatal(created, err)
	}
	if s, again, err := Bootstrap(ctx, st); err != nil || again || s != "" {
		t.Fatalf("second bootstrap: %q %v %v", s, again, err)
	}
	now := time.Now()
	a := &Authenticator{Store: st, Now: func() time.Time { return now }}
	h := http.Header{}
	if _, err := a.Authenticate(ctx, h); !errors.Is(err, ErrNoCredentials) {
		t.Fatalf("no credentials: %v", err)
	}
	h.Set("Authorization", "Bearer "+secret)
	p, err := a.Authenticate(ctx, h)
	if err != nil || p.Role != domain.RoleSuperAdmin || p.Kind != KindAPIKey || !p.HasScope(ScopeAdmin) {
		t.Fatalf("bootstrap key: %+v %v", p, err)
	}
	// An expired key of a suspended tenant, and a session.
	sys, err := SystemTenantID(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	exp, _, hash, _ := NewSecret(APIKeyPrefix)
	ssec, _, shash, _ := NewSecret(SessionPrefix)
	err = st.Tx(ctx, store.TenantScope(sys), func(tx store.Tx) error {
		if err := tx.CreateAPIKey(ctx, &domain.APIKey{TenantID: sys, Name: "old", Prefix: exp[:8], Hash: hash, Role: domain.RoleViewer, Scopes: []string{"read"}, ExpireTime: now.Add(-time.Second)}); err != nil {
			return err
		}
		u := &domain.User{TenantID: sys, Name: "ann", Email: "ann@example.com", Role: domain.RoleOperator, Status: domain.UserActive}
		if err := tx.CreateUser(ctx, u); err != nil {
			return err
		}
		return tx.CreateSession(ctx, &domain.Session{TenantID: sys, UserID: u.ID, Hash: shash, ExpireTime: now.Add(time.Hour)})
	})
	if err != nil {
		t.Fatal(err)
	}
	h.Set("Authorization", "Bearer "+exp)
	if _, err := a.Authenticate(ctx, h); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("expired key: %v", err)
	}
	h.Set("Authorization", "Basic abc")
	if _, err := a.Authenticate(ctx, h); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("basic auth: %v", err)
	}
	h.Del("Authorization")
	h.Set("Cookie", SessionCookie+"="+ssec)
	p, err = a.Authenticate(ctx, h)
	if err != nil || p.Kind != KindUser || p.Role != domain.RoleOperator || p.Email != "ann@example.com" || p.HasScope(ScopeAdmin) != true {
		t.Fatalf("session: %+v %v", p, err)
	}
	a.Now = func() time.Time { return now.Add(2 * time.Hour) }
	if _, err := a.Authenticate(ctx, h); !errors.Is(err, ErrBadCredentials) {
		t.Fatalf("expired session: %v", err)
	}
}
