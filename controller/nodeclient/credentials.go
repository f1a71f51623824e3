package nodeclient

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

// Credentials hold the current certificate. They are the relay
// server's CertificateSource (asked on every handshake, so a renewal takes
// effect on the next connection) and the client certificate towards the
// controller.
type Credentials struct {
	cert  atomic.Pointer[tls.Certificate]
	roots *x509.CertPool
}

// NewCredentials returns credentials serving st's certificate.
func NewCredentials(st *State) (*Credentials, error) {
	c := &Credentials{roots: x509.NewCertPool()}
	c.roots.AddCert(st.Root)
	if err := c.set(st.Key, st.Chain); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *Credentials) set(key *ecdsa.PrivateKey, chain [][]byte) error {
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return fmt.Errorf("nodeclient: parse certificate: %w", err)
	}
	c.cert.Store(&tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf})
	return nil
}

// Certificate returns the current certificate (server.CertificateSource).
func (c *Credentials) Certificate() (*tls.Certificate, error) { return c.cert.Load(), nil }

// Roots returns a pool holding the controller's root CA.
func (c *Credentials) Roots() *x509.CertPool { return c.roots }

// RenewAt is when the current certificate should be renewed: two thirds
// into its lifetime, which leaves a third for retries if the controller
// is away.
func (c *Credentials) RenewAt() time.Time {
	l := c.cert.Load().Leaf
	return l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) * 2 / 3)
}

// NotAfter is when the current certificate expires.
func (c *Credentials) NotAfter() time.Time { return c.cert.Load().Leaf.NotAfter }

// clientTLS is the mTLS configuration towards the controller.
func (c *Credentials) clientTLS(serverName string) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13, RootCAs: c.roots, ServerName: serverName,
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return identity.ClientCertificate(cri, c.cert.Load()), nil
		},
	}
}
