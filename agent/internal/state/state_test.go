package state

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/cloudvlan/cloudvlan/agent/internal/testpki"
	"github.com/cloudvlan/cloudvlan/controller/identity"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func TestRoundTripAndPermissions(t *testing.T) {
	base := t.TempDir()
	path := filepath.Join(base, "agent")
	// A pre-existing, too-open directory must be tightened.
	if err := os.Mkdir(path, 0o755); err != nil {
		t.Fatal(err)
	}
	d, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.LoadEnrollment(); err != ErrNotEnrolled {
		t.Fatalf("LoadEnrollment on empty dir: %v, want ErrNotEnrolled", err)
	}
	if m, err := d.LoadNetworkMap(); err != nil || m != nil {
		t.Fatalf("LoadNetworkMap on empty dir: %v %v", m, err)
	}
	ca, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var wg [32]byte
	rand.Read(wg[:])
	chain, err := ca.Issue(&key.PublicKey, testpki.Leaf{ID: identity.ID{TrustDomain: "t.test", TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}, WGKey: wg})
	if err != nil {
		t.Fatal(err)
	}
	e := &Enrollment{WireGuardKey: wg, TLSKey: key, Chain: chain, RootCA: ca.Root.Raw,
		Identity: &nodev1.NodeIdentity{NodeId: "n1", TenantId: "t1", Ipv4Address: "100.64.0.1"}, ControlEndpoints: []string{"127.0.0.1:8444"}}
	if err := d.SaveEnrollment(e); err != nil {
		t.Fatal(err)
	}
	m := &nodev1.NetworkMap{Version: 7, Peers: []*nodev1.Peer{{NodeId: "p"}}}
	if err := d.SaveNetworkMap(m); err != nil {
		t.Fatal(err)
	}

	got, err := d.LoadEnrollment()
	if err != nil {
		t.Fatal(err)
	}
	if got.WireGuardKey != wg || !got.TLSKey.Equal(key) || len(got.Chain) != 2 || !proto.Equal(got.Identity, e.Identity) ||
		string(got.RootCA) != string(ca.Root.Raw) || len(got.ControlEndpoints) != 1 {
		t.Fatalf("loaded enrollment differs: %+v", got)
	}
	gm, err := d.LoadNetworkMap()
	if err != nil || !proto.Equal(gm, m) {
		t.Fatalf("loaded map %v, %v", gm, err)
	}

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(path)
	if len(ents) < 6 {
		t.Fatalf("want at least 6 files, have %d", len(ents))
	}
	for _, ent := range ents {
		fi, _ := ent.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", ent.Name(), fi.Mode().Perm())
		}
	}

	// A renewal that wrote a new key but not its certificate is detected.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err := d.SaveTLS(other, chain); err != nil {
		t.Fatal(err)
	}
	if _, err := d.LoadEnrollment(); err == nil {
		t.Fatal("mismatched key and certificate were accepted")
	}
}
