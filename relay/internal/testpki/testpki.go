// Package testpki builds a throw-away CA (root -> intermediate -> leaf, the
// chain shape CloudVLAN's step-ca issues) with node and relay certificates
// that follow the identity conventions. It is for tests and benchmarks.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// CA is a root and an intermediate that signs leaves.
type CA struct {
	TrustDomain string
	root        *x509.Certificate
	inter       *x509.Certificate
	interKey    *ecdsa.PrivateKey
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return n
}

// New creates a CA for trust domain td.
func New(td string) (*CA, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testpki: root key: %w", err)
	}
	now := time.Now()
	rootTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("testpki: root: %w", err)
	}
	root, _ := x509.ParseCertificate(der)
	interKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("testpki: intermediate key: %w", err)
	}
	interTmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: "test intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, MaxPathLenZero: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err = x509.CreateCertificate(rand.Reader, interTmpl, root, &interKey.PublicKey, rootKey)
	if err != nil {
		return nil, fmt.Errorf("testpki: intermediate: %w", err)
	}
	inter, _ := x509.ParseCertificate(der)
	return &CA{TrustDomain: td, root: root, inter: inter, interKey: interKey}, nil
}

// Roots returns a pool holding the root.
func (ca *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.root)
	return p
}

// RootPEM-free callers may use Root directly.
func (ca *CA) Root() *x509.Certificate { return ca.root }

// Leaf issues a leaf with the given URI SANs; relays also get loopback names.
func (ca *CA) Leaf(cn string, uris []string, loopback bool) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testpki: leaf key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(), Subject: pkix.Name{CommonName: cn},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(8 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			return tls.Certificate{}, fmt.Errorf("testpki: uri %q: %w", s, err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	if loopback {
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.inter, &key.PublicKey, ca.interKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("testpki: leaf: %w", err)
	}
	leaf, _ := x509.ParseCertificate(der)
	return tls.Certificate{Certificate: [][]byte{der, ca.inter.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// Node issues a node certificate for tenant/node with WireGuard key wg.
func (ca *CA) Node(tenant, node string, wg [32]byte) (tls.Certificate, error) {
	return ca.Leaf(node, []string{
		fmt.Sprintf("spiffe://%s/tenant/%s/node/%s", ca.TrustDomain, tenant, node),
		"urn:cloudvlan:wgkey:" + hex.EncodeToString(wg[:]),
	}, false)
}

// Relay issues a relay certificate; tenant "" makes a shared relay.
func (ca *CA) Relay(tenant, id string) (tls.Certificate, error) {
	u := fmt.Sprintf("spiffe://%s/relay/%s", ca.TrustDomain, id)
	if tenant != "" {
		u = fmt.Sprintf("spiffe://%s/tenant/%s/relay/%s", ca.TrustDomain, tenant, id)
	}
	return ca.Leaf(id, []string{u}, true)
}

// ClientTLS returns a client configuration presenting cert and trusting the root.
func (ca *CA) ClientTLS(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		RootCAs:      ca.Roots(),
		Certificates: []tls.Certificate{cert},
	}
}

// Save writes the root and the intermediate (certificate and key) as PEM
// into dir, so that other processes of a benchmark can issue leaves.
func (ca *CA) Save(dir string) error {
	keyDER, err := x509.MarshalECPrivateKey(ca.interKey)
	if err != nil {
		return fmt.Errorf("testpki: marshal key: %w", err)
	}
	files := map[string]*pem.Block{
		"root.pem":      {Type: "CERTIFICATE", Bytes: ca.root.Raw},
		"inter.pem":     {Type: "CERTIFICATE", Bytes: ca.inter.Raw},
		"inter-key.pem": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(b), 0o600); err != nil {
			return fmt.Errorf("testpki: %w", err)
		}
	}
	return nil
}

// Load reads a CA written by Save.
func Load(dir, td string) (*CA, error) {
	read := func(name string) ([]byte, error) {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("testpki: %w", err)
		}
		p, _ := pem.Decode(b)
		if p == nil {
			return nil, fmt.Errorf("testpki: %s: no PEM block", name)
		}
		return p.Bytes, nil
	}
	rootDER, err := read("root.pem")
	if err != nil {
		return nil, err
	}
	interDER, err := read("inter.pem")
	if err != nil {
		return nil, err
	}
	keyDER, err := read("inter-key.pem")
	if err != nil {
		return nil, err
	}
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return nil, fmt.Errorf("testpki: root: %w", err)
	}
	inter, err := x509.ParseCertificate(interDER)
	if err != nil {
		return nil, fmt.Errorf("testpki: intermediate: %w", err)
	}
	key, err := x509.ParseECPrivateKey(keyDER)
	if err != nil {
		return nil, fmt.Errorf("testpki: key: %w", err)
	}
	return &CA{TrustDomain: td, root: root, inter: inter, interKey: key}, nil
}
