package pki

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

func TestEmbeddedCreatesCAFiles(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data") // does not exist yet
	e := newEmbedded(t, data)

	if got := fileMode(t, filepath.Join(data, caDirName)); got != 0o700 {
		t.Errorf("ca dir mode %o, want 700", got)
	}
	for _, f := range []string{rootKeyFile, intermediateKeyFile} {
		if got := fileMode(t, caFile(data, f)); got != 0o600 {
			t.Errorf("%s mode %o, want 600", f, got)
		}
	}
	for _, f := range []string{rootCertFile, intermediateCertFile} {
		if _, err := os.Stat(caFile(data, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	// No leftovers of the create-then-rename dance.
	entries, _ := os.ReadDir(data)
	if len(entries) != 1 {
		t.Errorf("data dir holds %d entries, want only ca/", len(entries))
	}
	root := e.Root()
	if !root.IsCA || root.Subject.CommonName != "CloudVLAN cloudvlan.internal Root CA" {
		t.Errorf("root: IsCA=%v CN=%q", root.IsCA, root.Subject.CommonName)
	}
	if !bytes.Contains(e.RootPEM(), []byte("BEGIN CERTIFICATE")) {
		t.Errorf("RootPEM is not PEM: %q", e.RootPEM())
	}
}

func TestEmbeddedRestartReusesRoot(t *testing.T) {
	data := t.TempDir()
	first, err := NewEmbedded(context.Background(), data, WithLogger(quietLogger()))
	if err != nil {
		t.Fatal(err)
	}
	key := newKey(t)
	chain, err := first.Sign(context.Background(), SignRequest{
		CSR:   hostileCSR(t, key),
		ID:    identity.ID{TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"},
		WGKey: wgKey(1),
	})
	if err != nil {
		t.Fatal(err)
	}
	fp := Fingerprint(first.Root())
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}

	second := newEmbedded(t, data)
	if got := Fingerprint(second.Root()); got != fp {
		t.Fatalf("root changed across restart: %s -> %s", fp, got)
	}
	if !bytes.Equal(first.RootPEM(), second.RootPEM()) {
		t.Fatal("RootPEM changed across restart")
	}
	// A certificate issued before the restart still verifies, and the new
	// authority issues under the same intermediate.
	if _, err := VerifierFor(second).VerifyChain(append([]*x509.Certificate{chain.Leaf}, chain.Intermediates...)); err != nil {
		t.Fatalf("pre-restart certificate refused after restart: %v", err)
	}
	chain2, err := second.Sign(context.Background(), SignRequest{
		CSR: hostileCSR(t, key), ID: identity.ID{TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}, WGKey: wgKey(1),
	})
	if err != nil {
		t.Fatal(err)
	}
	if !chain2.Intermediates[0].Equal(chain.Intermediates[0]) {
		t.Fatal("intermediate changed across restart")
	}
}

func TestEmbeddedKeyPassword(t *testing.T) {
	data := t.TempDir()
	e := newEmbedded(t, data, WithKeyPassword([]byte("correct horse")))
	pemKey, err := os.ReadFile(caFile(data, intermediateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(pemKey, []byte("ENCRYPTED")) {
		t.Fatalf("key file is not encrypted:\n%s", pemKey)
	}
	if _, err := NewEmbedded(context.Background(), data, WithLogger(quietLogger()), WithKeyPassword([]byte("wrong"))); err == nil {
		t.Fatal("NewEmbedded with the wrong password succeeded")
	}
	again := newEmbedded(t, data, WithKeyPassword([]byte("correct horse")))
	if !again.Root().Equal(e.Root()) {
		t.Fatal("root changed")
	}
}

func TestEmbeddedRefusesMismatchedCA(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	newEmbedded(t, a)
	newEmbedded(t, b)
	// Put b's intermediate key next to a's certificates.
	key, err := os.ReadFile(caFile(b, intermediateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(caFile(a, intermediateKeyFile), key, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = NewEmbedded(context.Background(), a, WithLogger(quietLogger()))
	if err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("NewEmbedded with a foreign key = %v, want key mismatch error", err)
	}
}

func TestEmbeddedSign(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	tests := []struct {
		name     string
		req      SignRequest
		wantURIs []string
		wantDNS  []string
		wantCN   string
		wantTTL  time.Duration
	}{
		{
			name:     "node default ttl",
			req:      SignRequest{ID: identity.ID{TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}, WGKey: wgKey(1)},
			wantURIs: []string{"spiffe://cloudvlan.internal/tenant/t1/node/n1", wgURI(wgKey(1))},
			wantCN:   "n1",
			wantTTL:  8 * time.Hour,
		},
		{
			name:     "vrouter short ttl",
			req:      SignRequest{ID: identity.ID{TrustDomain: "cloudvlan.internal", TenantID: "t1", Kind: identity.KindVRouter, ResourceID: "vr1"}, WGKey: wgKey(2), TTL: 5 * time.Second},
			wantURIs: []string{"spiffe://cloudvlan.internal/tenant/t1/vrouter/vr1", wgURI(wgKey(2))},
			wantCN:   "vr1",
			wantTTL:  5 * time.Second,
		},
		{
			name:     "shared relay with hostnames",
			req:      SignRequest{ID: identity.ID{Kind: identity.KindRelay, ResourceID: "fra1"}, DNSNames: []string{"relay-fra1.example.com", "Relay.Example.com"}, TTL: time.Hour},
			wantURIs: []string{"spiffe://cloudvlan.internal/relay/fra1"},
			wantDNS:  []string{"relay-fra1.example.com", "relay.example.com"},
			wantCN:   "fra1",
			wantTTL:  time.Hour,
		},
		{
			name:     "tenant relay",
			req:      SignRequest{ID: identity.ID{TenantID: "t9", Kind: identity.KindRelay, ResourceID: "r1"}},
			wantURIs: []string{"spiffe://cloudvlan.internal/tenant/t9/relay/r1"},
			wantCN:   "r1",
			wantTTL:  8 * time.Hour,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := newKey(t)
			tt.req.CSR = hostileCSR(t, key)
			before := time.Now()
			chain, err := e.Sign(context.Background(), tt.req)
			after := time.Now()
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			leaf := chain.Leaf
			var uris []string
			for _, u := range leaf.URIs {
				uris = append(uris, u.String())
			}
			if !slices.Equal(uris, tt.wantURIs) {
				t.Errorf("URIs = %q, want exactly %q", uris, tt.wantURIs)
			}
			if dns := leaf.DNSNames; !slices.Equal(dns, tt.wantDNS) {
				t.Errorf("DNSNames = %q, want %q", dns, tt.wantDNS)
			}
			if len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Errorf("unexpected SANs: %v %v", leaf.IPAddresses, leaf.EmailAddresses)
			}
			if leaf.Subject.CommonName != tt.wantCN {
				t.Errorf("CN = %q, want %q", leaf.Subject.CommonName, tt.wantCN)
			}
			if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}) {
				t.Errorf("ExtKeyUsage = %v", leaf.ExtKeyUsage)
			}
			if leaf.IsCA || leaf.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("IsCA=%v KeyUsage=%v", leaf.IsCA, leaf.KeyUsage)
			}
			if !publicKeysEqual(leaf.PublicKey, key.Public()) {
				t.Error("certificate key is not the CSR's key")
			}
			// x509 times have one-second resolution.
			lo, hi := before.Add(tt.wantTTL).Truncate(time.Second), after.Add(tt.wantTTL)
			if leaf.NotAfter.Before(lo) || leaf.NotAfter.After(hi) {
				t.Errorf("NotAfter %s not in [%s, %s]", leaf.NotAfter, lo, hi)
			}
			if !leaf.NotBefore.Before(before) {
				t.Errorf("NotBefore %s is not backdated before %s", leaf.NotBefore, before)
			}
			if len(chain.Intermediates) != 1 || chain.Intermediates[0].Equal(e.Root()) {
				t.Fatalf("chain has %d intermediates; want the intermediate only", len(chain.Intermediates))
			}
			inter := x509.NewCertPool()
			inter.AddCert(chain.Intermediates[0])
			for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth} {
				if _, err := leaf.Verify(x509.VerifyOptions{Roots: e.Roots(), Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
					t.Errorf("Verify(%v): %v", usage, err)
				}
			}
			// The identity reads back through the shared parser.
			id, k, err := identity.FromCertificate(leaf)
			if err != nil {
				t.Fatalf("FromCertificate: %v", err)
			}
			if id.String() != tt.wantURIs[0] {
				t.Errorf("identity %s", id)
			}
			if tt.req.WGKey != nil && !bytes.Equal(k[:], tt.req.WGKey) {
				t.Errorf("wgkey %x, want %x", k, tt.req.WGKey)
			}
			if !strings.Contains(string(chain.PEM()), "BEGIN CERTIFICATE") || len(chain.DER()) != 2 {
				t.Errorf("PEM/DER encodings wrong")
			}
		})
	}
}

func badSignatureCSR(t *testing.T) *x509.CertificateRequest {
	key := newKey(t)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	// Sign one request, then present it with another key: the structure is
	// valid, the self-signature is not.
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	other := csrFor(t, newKey(t), &x509.CertificateRequest{})
	csr.Signature = other.Signature
	return csr
}

func TestEmbeddedSignErrors(t *testing.T) {
	e := newEmbedded(t, t.TempDir(), WithMaxTTL(24*time.Hour))
	node := identity.ID{TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}
	good := csrFor(t, newKey(t), &x509.CertificateRequest{})
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		req     SignRequest
		wantErr error
	}{
		{"nil csr", SignRequest{ID: node, WGKey: wgKey(1)}, ErrInvalidCSR},
		{"bad csr signature", SignRequest{CSR: badSignatureCSR(t), ID: node, WGKey: wgKey(1)}, ErrCSRSignature},
		{"rsa key", SignRequest{CSR: csrFor(t, rsaKey, &x509.CertificateRequest{}), ID: node, WGKey: wgKey(1)}, ErrUnsupportedKey},
		{"p521 key", SignRequest{CSR: csrFor(t, p521, &x509.CertificateRequest{}), ID: node, WGKey: wgKey(1)}, ErrUnsupportedKey},
		{"node without wgkey", SignRequest{CSR: good, ID: node}, ErrInvalidIdentity},
		{"short wgkey", SignRequest{CSR: good, ID: node, WGKey: make([]byte, 31)}, ErrInvalidIdentity},
		{"zero wgkey", SignRequest{CSR: good, ID: node, WGKey: make([]byte, 32)}, ErrInvalidIdentity},
		{"other trust domain", SignRequest{CSR: good, ID: identity.ID{TrustDomain: "evil.example", TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}, WGKey: wgKey(1)}, ErrInvalidIdentity},
		{"unknown kind", SignRequest{CSR: good, ID: identity.ID{TenantID: "t1", Kind: "admin", ResourceID: "n1"}, WGKey: wgKey(1)}, ErrInvalidIdentity},
		{"node without tenant", SignRequest{CSR: good, ID: identity.ID{Kind: identity.KindNode, ResourceID: "n1"}, WGKey: wgKey(1)}, ErrInvalidIdentity},
		{"ttl too long", SignRequest{CSR: good, ID: node, WGKey: wgKey(1), TTL: 25 * time.Hour}, ErrInvalidTTL},
		{"ttl negative", SignRequest{CSR: good, ID: node, WGKey: wgKey(1), TTL: -time.Second}, ErrInvalidTTL},
		{"ttl sub-second", SignRequest{CSR: good, ID: node, WGKey: wgKey(1), TTL: time.Millisecond}, ErrInvalidTTL},
		{"dns name shaped like a uri", SignRequest{CSR: good, ID: identity.ID{Kind: identity.KindRelay, ResourceID: "r"}, DNSNames: []string{"spiffe:x"}}, ErrInvalidName},
		{"empty dns name", SignRequest{CSR: good, ID: identity.ID{Kind: identity.KindRelay, ResourceID: "r"}, DNSNames: []string{""}}, ErrInvalidName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := e.Sign(context.Background(), tt.req)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Sign error = %v, want %v", err, tt.wantErr)
			}
			if chain.Leaf != nil {
				t.Fatal("certificate returned with an error")
			}
		})
	}
}

func TestEmbeddedSignEd25519(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := e.Sign(context.Background(), SignRequest{
		CSR: csrFor(t, priv, &x509.CertificateRequest{}),
		ID:  identity.ID{TenantID: "t", Kind: identity.KindNode, ResourceID: "n"}, WGKey: wgKey(3),
	})
	if err != nil {
		t.Fatal(err)
	}
	if chain.Leaf.PublicKeyAlgorithm != x509.Ed25519 {
		t.Fatalf("key algorithm %v", chain.Leaf.PublicKeyAlgorithm)
	}
}

func TestEmbeddedCertificateExpires(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	chain, err := e.Sign(context.Background(), SignRequest{
		CSR: csrFor(t, newKey(t), &x509.CertificateRequest{}),
		ID:  identity.ID{TenantID: "t", Kind: identity.KindNode, ResourceID: "n"}, WGKey: wgKey(4),
		TTL: 2 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	v := VerifierFor(e)
	presented := append([]*x509.Certificate{chain.Leaf}, chain.Intermediates...)
	peer, err := v.VerifyChain(presented)
	if err != nil {
		t.Fatalf("fresh certificate refused: %v", err)
	}
	if peer.ID.ResourceID != "n" || peer.NotAfter != chain.Leaf.NotAfter {
		t.Fatalf("peer = %+v", peer)
	}
	// Wait until past NotAfter (which is at one-second resolution), with
	// margin for a slow machine: the check is "after", not "how long".
	time.Sleep(time.Until(chain.Leaf.NotAfter) + 1100*time.Millisecond)
	if _, err := v.VerifyChain(presented); !errors.Is(err, ErrCertificateExpired) {
		t.Fatalf("expired certificate: VerifyChain = %v, want ErrCertificateExpired", err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(chain.Intermediates[0])
	if _, err := chain.Leaf.Verify(x509.VerifyOptions{Roots: e.Roots(), Intermediates: inter}); err == nil {
		t.Fatal("crypto/x509 accepted the expired certificate")
	}
}

func TestEmbeddedSignServer(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	csr := hostileCSR(t, newKey(t))
	chain, err := e.SignServer(context.Background(), csr, []string{"ctl.example.com", "10.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain.Leaf
	if len(leaf.URIs) != 0 || !slices.Equal(leaf.DNSNames, []string{"ctl.example.com"}) || len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != "10.0.0.1" {
		t.Fatalf("server SANs: %v %v %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses)
	}
	if !slices.Equal(leaf.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Fatalf("server ExtKeyUsage = %v, want serverAuth only", leaf.ExtKeyUsage)
	}
	if _, err := e.SignServer(context.Background(), csr, nil, 0); !errors.Is(err, ErrInvalidName) {
		t.Fatalf("SignServer without names = %v", err)
	}
}

func TestEmbeddedRefusesIncompleteCA(t *testing.T) {
	for _, missing := range []string{rootCertFile, intermediateCertFile, intermediateKeyFile} {
		t.Run(missing, func(t *testing.T) {
			data := t.TempDir()
			newEmbedded(t, data)
			if err := os.Remove(caFile(data, missing)); err != nil {
				t.Fatal(err)
			}
			// Regenerating would silently change the root and strand every
			// enrolled node, so a damaged CA is an error, not a fresh start.
			_, err := NewEmbedded(context.Background(), data, WithLogger(quietLogger()))
			if err == nil || !strings.Contains(err.Error(), missing) {
				t.Fatalf("NewEmbedded without %s = %v, want an error naming it", missing, err)
			}
		})
	}
}

func TestEmbeddedConcurrentSignAndRenew(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	v := VerifierFor(e)
	ctx := context.Background()
	const workers, each = 8, 10
	// CSRs are made up front: t.Fatal must not run on these goroutines.
	csrs := make([][]*x509.CertificateRequest, workers)
	for w := range csrs {
		for range each + 1 {
			csrs[w] = append(csrs[w], csrFor(t, newKey(t), &x509.CertificateRequest{}))
		}
	}
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			var err error
			defer func() { errs <- err }()
			id := identity.ID{TenantID: "t", Kind: identity.KindRelay, ResourceID: fmt.Sprintf("r%d", w)}
			req := SignRequest{CSR: csrs[w][0], ID: id, WGKey: wgKey(byte(w + 1)), DNSNames: []string{"relay.example.com", "10.1.1.1"}}
			for i := range each {
				var chain Chain
				if chain, err = e.Sign(ctx, req); err != nil {
					return
				}
				var peer Peer
				if peer, err = v.VerifyChain(append([]*x509.Certificate{chain.Leaf}, chain.Intermediates...)); err != nil {
					return
				}
				if peer.ID.ResourceID != id.ResourceID || peer.WGKey[0] != byte(w+1) {
					err = fmt.Errorf("got identity %s key %x, want %s", peer.ID, peer.WGKey, id)
					return
				}
				// Renewal keeps identity, key and names.
				req = peer.RenewRequest(csrs[w][i+1], time.Hour)
			}
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

func TestRenewRequest(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	first, err := e.Sign(context.Background(), SignRequest{
		CSR: csrFor(t, newKey(t), &x509.CertificateRequest{}),
		ID:  identity.ID{Kind: identity.KindRelay, ResourceID: "r1"}, DNSNames: []string{"r1.example.com", "::1"},
	})
	if err != nil {
		t.Fatal(err)
	}
	peer, err := VerifierFor(e).VerifyChain([]*x509.Certificate{first.Leaf, first.Intermediates[0]})
	if err != nil {
		t.Fatal(err)
	}
	req := peer.RenewRequest(csrFor(t, newKey(t), &x509.CertificateRequest{}), 0)
	if req.WGKey != nil {
		t.Fatalf("relay without a key got WGKey %x", req.WGKey)
	}
	next, err := e.Sign(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if next.Leaf.URIs[0].String() != first.Leaf.URIs[0].String() || !slices.Equal(next.Leaf.DNSNames, first.Leaf.DNSNames) ||
		len(next.Leaf.IPAddresses) != 1 || !next.Leaf.IPAddresses[0].Equal(first.Leaf.IPAddresses[0]) {
		t.Fatalf("renewed certificate names differ: %v %v %v", next.Leaf.URIs, next.Leaf.DNSNames, next.Leaf.IPAddresses)
	}
}

func TestNewPicksEmbedded(t *testing.T) {
	data := t.TempDir()
	a, err := New(context.Background(), data, nil, WithLogger(quietLogger()), WithTrustDomain("example.org"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	if _, ok := a.(*Embedded); !ok || a.TrustDomain() != "example.org" {
		t.Fatalf("New(nil external) = %T with trust domain %q", a, a.TrustDomain())
	}
	if _, err := os.Stat(caFile(data, rootCertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := New(context.Background(), data, nil, WithTrustDomain("Bad Domain")); err == nil {
		t.Fatal("New accepted an invalid trust domain")
	}
}
