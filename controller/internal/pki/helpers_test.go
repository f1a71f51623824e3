package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

func TestMain(m *testing.M) {
	// glog (pulled in by a step-ca dependency) starts its flush daemon in
	// init; it is not ours to stop.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"))
}

// hostileCSR returns a CSR whose subject and SANs claim an identity the
// node must not get, to prove the certificate's names come from the request
// identity only.
func hostileCSR(t testing.TB, key crypto.Signer) *x509.CertificateRequest {
	t.Helper()
	evil, _ := url.Parse("spiffe://cloudvlan.internal/tenant/other/node/admin")
	return csrFor(t, key, &x509.CertificateRequest{
		Subject:  pkix.Name{CommonName: "admin"},
		DNSNames: []string{"evil.example.com"},
		URIs:     []*url.URL{evil},
	})
}

func csrFor(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) *x509.CertificateRequest {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return csr
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func wgKey(b byte) []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = b ^ byte(i)
	}
	return k
}

func wgURI(b []byte) string {
	k, err := identity.WGKeyFromBytes(b)
	if err != nil {
		panic(err)
	}
	return identity.WGKeyURI(k).String()
}

func newEmbedded(t testing.TB, dir string, opts ...Option) *Embedded {
	t.Helper()
	opts = append([]Option{WithLogger(quietLogger())}, opts...)
	e, err := NewEmbedded(context.Background(), dir, opts...)
	if err != nil {
		t.Fatalf("NewEmbedded: %v", err)
	}
	t.Cleanup(func() { _ = e.Close() })
	return e
}

func fileMode(t testing.TB, path string) os.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func caFile(dataDir, name string) string { return filepath.Join(dataDir, caDirName, name) }
