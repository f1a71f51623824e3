package nodeplane

import (
	"crypto/x509"
	"testing"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

type storeTx = store.Tx

func storeAll() store.Scope { return store.AllTenants() }

func parseCSR(t testing.TB, der []byte) *x509.CertificateRequest {
	t.Helper()
	c, err := x509.ParseCertificateRequest(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func identityOf(t testing.TB, a *agent) identity.ID {
	t.Helper()
	id, _, err := identity.FromCertificate(a.cert.Load().Leaf)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
