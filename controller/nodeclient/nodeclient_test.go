package nodeclient_test

import (
	"context"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	"github.com/cloudvlan/cloudvlan/controller/nodeclient/nodeclienttest"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var vrouterID = &nodev1.NodeIdentity{Kind: nodev1.IdentityKind_IDENTITY_KIND_VROUTER, ResourceId: "v1", NodeId: "n1", TenantId: "t1",
	SpiffeId: "spiffe://td/tenant/t1/vrouter/v1"}

func TestEnrollSaveLoadRenew(t *testing.T) {
	f := nodeclienttest.Start(t, time.Hour, vrouterID, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	good := nodeclient.EnrollOptions{Target: f.Addr, Token: nodeclienttest.Token, Kind: nodev1.IdentityKind_IDENTITY_KIND_VROUTER, KeepWireGuardKey: true, RootCAs: f.Roots}
	tests := []struct {
		name string
		edit func(*nodeclient.EnrollOptions)
		want string
	}{
		// Without the controller's CA the first call must fail: no token to an unverified server.
		{"unverified controller", func(o *nodeclient.EnrollOptions) { o.RootCAs = nil }, "certificate"},
		{"bad token", func(o *nodeclient.EnrollOptions) { o.Token = "cvj_badtokenbadtokenbad" }, "unknown join token"},
		{"other kind", func(o *nodeclient.EnrollOptions) { o.Kind = nodev1.IdentityKind_IDENTITY_KIND_RELAY }, "not a relay"},
		{"bad target", func(o *nodeclient.EnrollOptions) { o.Target = "nohostport" }, "controller address"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.edit(&o)
			if _, err := nodeclient.Enroll(ctx, o); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	st, err := nodeclient.Enroll(ctx, good)
	if err != nil {
		t.Fatal(err)
	}
	if h := f.KindHeader(); len(h) != 1 || h[0] != "vrouter" || st.ResourceID != "v1" || st.NodeID != "n1" || len(st.WireGuardKey) != 32 {
		t.Fatalf("kind header %v state %+v", h, st.Identity)
	}
	store := nodeclient.Store{Dir: filepath.Join(t.TempDir(), "state"), Name: "vrouter"}
	if err := store.Save(st); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(store.Dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", fi.Mode())
	}
	for _, n := range []string{"vrouter.key", "vrouter.crt", "root.pem", "identity.json", "wireguard.key"} {
		if fi, err := os.Stat(filepath.Join(store.Dir, n)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", n, fi, err)
		}
	}
	loaded, err := store.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Key.Equal(st.Key) || loaded.ResourceID != "v1" || loaded.Kind != "vrouter" || len(loaded.ControlEndpoints) != 1 || string(loaded.WireGuardKey) != string(st.WireGuardKey) {
		t.Fatalf("loaded %+v", loaded.Identity)
	}
	if _, err := (nodeclient.Store{Dir: t.TempDir(), Name: "vrouter"}).Load(); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("empty dir: %v", err)
	}
	creds, err := nodeclient.NewCredentials(loaded)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := nodeclient.Dial(f.Addr, loaded, creds, store, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	before, _ := creds.Certificate()
	if err := cl.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := creds.Certificate()
	if after.Leaf.SerialNumber.Cmp(before.Leaf.SerialNumber) == 0 || after.PrivateKey == before.PrivateKey {
		t.Fatal("renewal did not change certificate and key")
	}
	reloaded, err := store.Load()
	if err != nil || !reloaded.Key.Equal(after.PrivateKey) || cl.State().Key != after.PrivateKey {
		t.Fatalf("renewed state not saved: %v", err)
	}
}

// A relay's identity.json written before nodeclient existed (relay_id, no kind) still loads.
func TestLoadLegacyRelayState(t *testing.T) {
	f := nodeclienttest.Start(t, time.Hour, &nodev1.NodeIdentity{Kind: nodev1.IdentityKind_IDENTITY_KIND_RELAY, ResourceId: "r1", SpiffeId: "spiffe://td/relay/r1"}, nil)
	st, err := nodeclient.Enroll(context.Background(), nodeclient.EnrollOptions{Target: f.Addr, Token: nodeclienttest.Token, Kind: nodev1.IdentityKind_IDENTITY_KIND_RELAY, RootCAs: f.Roots})
	if err != nil {
		t.Fatal(err)
	}
	store := nodeclient.Store{Dir: t.TempDir(), Name: "relay"}
	if err := store.Save(st); err != nil {
		t.Fatal(err)
	}
	if st.WireGuardKey != nil {
		t.Fatal("a relay keeps no WireGuard key")
	}
	legacy := `{"relay_id": "r1", "spiffe_id": "spiffe://td/relay/r1", "control_endpoints": ["127.0.0.1:1"]}`
	if err := os.WriteFile(filepath.Join(store.Dir, "identity.json"), []byte(legacy), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := store.Load()
	if err != nil || got.Kind != "relay" || got.ResourceID != "r1" {
		t.Fatalf("legacy load: %+v %v", got, err)
	}
}

func TestOpen(t *testing.T) {
	f := nodeclienttest.Start(t, time.Hour, vrouterID, nil)
	ctx := context.Background()
	caFile := filepath.Join(t.TempDir(), "root.pem")
	store := nodeclient.Store{Dir: t.TempDir(), Name: "vrouter"}
	if err := os.WriteFile(caFile, pemCert(f), 0o600); err != nil {
		t.Fatal(err)
	}
	base := nodeclient.OpenOptions{Store: store, Controller: "https://" + f.Addr, ControllerCA: caFile, Kind: nodev1.IdentityKind_IDENTITY_KIND_VROUTER}
	tests := []struct {
		name string
		edit func(*nodeclient.OpenOptions)
		want string
	}{
		{"no token", func(o *nodeclient.OpenOptions) {}, "join token"},
		{"no controller", func(o *nodeclient.OpenOptions) { o.Token, o.Controller = nodeclienttest.Token, "" }, "--controller is required"},
		{"missing CA file", func(o *nodeclient.OpenOptions) { o.Token, o.ControllerCA = nodeclienttest.Token, "/nonexistent" }, "--controller-ca"},
		{"CA file not PEM", func(o *nodeclient.OpenOptions) { o.Token, o.ControllerCA = nodeclienttest.Token, "/etc/hostname" }, "no PEM"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			tc.edit(&o)
			if cl, err := nodeclient.Open(ctx, o); err == nil || !strings.Contains(err.Error(), tc.want) {
				if cl != nil {
					cl.Close()
				}
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
	o := base
	o.Token = nodeclienttest.Token
	cl, err := nodeclient.Open(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	cl.Close()
	// The second start needs neither token nor controller: both come from the state.
	cl, err = nodeclient.Open(ctx, nodeclient.OpenOptions{Store: store, Kind: nodev1.IdentityKind_IDENTITY_KIND_VROUTER})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	cl.Close()
	// A relay must not start from a vrouter's state.
	if _, err := nodeclient.Open(ctx, nodeclient.OpenOptions{Store: store, Kind: nodev1.IdentityKind_IDENTITY_KIND_RELAY}); err == nil || !strings.Contains(err.Error(), "not a relay's") {
		t.Fatalf("relay from vrouter state: %v", err)
	}
}

func TestTarget(t *testing.T) {
	tests := []struct{ in, want, err string }{
		{"https://ctl.example:9444", "ctl.example:9444", ""},
		{"https://ctl.example", "ctl.example:8444", ""},
		{"ctl.example", "ctl.example:8444", ""},
		{"10.0.0.1:1", "10.0.0.1:1", ""},
		{"https://", "", "no host"},
		{"", "", "empty"},
	}
	for _, tc := range tests {
		got, err := nodeclient.Target(tc.in)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("Target(%q) = %q, %v; want %q, %q", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestRetryStopsOnPermanent(t *testing.T) {
	cl := nodeclienttest.Start(t, time.Hour, vrouterID, nil).Client(t, nodev1.IdentityKind_IDENTITY_KIND_VROUTER)
	cl.MinBackoff, cl.MaxBackoff = time.Millisecond, 4*time.Millisecond
	calls := 0
	gone := errors.New("gone")
	err := cl.Retry(context.Background(), "test", func(context.Context) error {
		if calls++; calls < 3 {
			return errors.New("transient")
		}
		return nodeclient.Permanent(gone)
	})
	if !errors.Is(err, gone) || calls != 3 {
		t.Fatalf("Retry = %v after %d calls", err, calls)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := cl.Retry(ctx, "test", func(context.Context) error { return gone }); err != nil {
		t.Fatalf("Retry with a done context = %v", err)
	}
}

func TestRunRenewalRenewsAtTwoThirds(t *testing.T) {
	f := nodeclienttest.Start(t, 3*time.Second, vrouterID, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := f.Client(t, nodev1.IdentityKind_IDENTITY_KIND_VROUTER)
	creds := cl.Credentials()
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); cl.RunRenewal(rctx) }()
	// Certificates live 4 s (back-dated 1 s): renewals are due about every 2.7 s.
	deadline := time.Now().Add(15 * time.Second)
	for f.Renewed() < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("%d renewals", f.Renewed())
		}
		time.Sleep(50 * time.Millisecond)
	}
	rcancel()
	<-done
	if n := f.Renewed(); n > 4 {
		t.Fatalf("%d renewals: renewing long before two thirds of the lifetime", n)
	}
	if c, _ := creds.Certificate(); time.Until(c.Leaf.NotAfter) <= 0 {
		t.Fatal("using an expired certificate")
	}
}

func pemCert(f *nodeclienttest.Controller) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Root().Raw})
}
