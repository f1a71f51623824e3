// Package testpki builds a real certificate hierarchy for tests (root -> intermediate -> leaves) that
// follows CloudVLAN's identity conventions, so tests run real mTLS without the controller's CA.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

// CA is a root and an intermediate.
type CA struct {
	Root         *x509.Certificate
	Intermediate *x509.Certificate
	interKey     *ecdsa.PrivateKey
	mu           sync.Mutex
	serial       int64
}

// New creates a root and an intermediate CA.
func New() (*CA, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rootT := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootT, rootT, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	root, _ := x509.ParseCertificate(rootDER)
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	interT := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "test intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, MaxPathLenZero: true,
	}
	interDER, err := x509.CreateCertificate(rand.Reader, interT, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, err
	}
	inter, _ := x509.ParseCertificate(interDER)
	return &CA{Root: root, Intermediate: inter, interKey: interKey, serial: 10}, nil
}

// Pool returns a pool holding the root.
func (c *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.Root)
	return p
}

// Leaf describes a certificate to issue.
type Leaf struct {
	// ID is the SPIFFE identity (zero for a server-only certificate).
	ID identity.ID
	// WGKey is the WireGuard public key (zero for none).
	WGKey [32]byte
	// DNSNames and IPs are server SANs.
	DNSNames []string
	IPs      []net.IP
	// Validity is the lifetime from now (default 1 h).
	Validity time.Duration
}

// Issue signs pub for l and returns the chain (leaf, intermediate) in DER.
func (c *CA) Issue(pub crypto.PublicKey, l Leaf) ([][]byte, error) {
	c.mu.Lock()
	c.serial++
	serial := c.serial
	c.mu.Unlock()
	if l.Validity == 0 {
		l.Validity = time.Hour
	}
	now := time.Now()
	t := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		NotBefore:    now.Add(-time.Second), NotAfter: now.Add(l.Validity),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		DNSNames:    l.DNSNames, IPAddresses: l.IPs,
	}
	if !l.ID.IsZero() {
		t.Subject.CommonName = l.ID.ResourceID
		t.URIs = []*url.URL{l.ID.URI()}
	}
	if l.WGKey != ([32]byte{}) {
		t.URIs = append(t.URIs, identity.WGKeyURI(l.WGKey))
	}
	der, err := x509.CreateCertificate(rand.Reader, t, c.Intermediate, pub, c.interKey)
	if err != nil {
		return nil, fmt.Errorf("testpki: issue: %w", err)
	}
	return [][]byte{der, c.Intermediate.Raw}, nil
}

// IssueCSR signs a PKCS#10 request for l (ignoring the request's own names, as the controller does).
func (c *CA) IssueCSR(csrDER []byte, l Leaf) ([][]byte, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("testpki: parse CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("testpki: CSR signature: %w", err)
	}
	return c.Issue(csr.PublicKey, l)
}

// ServerCert returns a TLS server certificate for loopback and the extra addresses.
func (c *CA) ServerCert(extra ...net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	chain, err := c.Issue(&key.PublicKey, Leaf{DNSNames: []string{"localhost"}, IPs: append([]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}, extra...)})
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key}, nil
}
