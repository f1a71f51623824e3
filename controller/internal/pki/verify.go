package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

// Errors of Verifier, matched with errors.Is; the node port maps them all to
// Unauthenticated.
var (
	// ErrNoClientCertificate: the caller presented no certificate.
	ErrNoClientCertificate = errors.New("pki: no client certificate")
	// ErrCertificateExpired: the certificate is outside its validity
	// window now (connections outlive certificates, so this is checked per
	// call, not only at the handshake).
	ErrCertificateExpired = errors.New("pki: client certificate expired or not yet valid")
	// ErrUntrusted: the chain does not verify against our roots.
	ErrUntrusted = errors.New("pki: client certificate not issued by this CA")
	// ErrForeignIdentity: the certificate's identity is malformed or in
	// another trust domain.
	ErrForeignIdentity = errors.New("pki: client certificate identity not accepted")
)

// Peer is a verified caller.
type Peer struct {
	// ID is the identity from the certificate's SPIFFE URI SAN.
	ID identity.ID
	// WGKey is the WireGuard key from the wgkey URN; zero if none.
	WGKey [32]byte
	// Serial is the leaf's serial number in decimal, as revocation lists
	// and step-ca's database key it.
	Serial string
	// NotAfter is the end of the certificate's validity.
	NotAfter time.Time
	// Leaf is the verified certificate.
	Leaf *x509.Certificate
}

// RenewRequest returns the SignRequest for the next certificate of this
// peer: same identity, WireGuard key and DNS names, with a new CSR (a new
// key is the point of renewing). Set WGKey on the result to rotate the key.
func (p Peer) RenewRequest(csr *x509.CertificateRequest, ttl time.Duration) SignRequest {
	req := SignRequest{CSR: csr, ID: p.ID, TTL: ttl}
	if p.WGKey != ([32]byte{}) {
		req.WGKey = append([]byte(nil), p.WGKey[:]...)
	}
	if p.Leaf != nil {
		req.DNSNames = append(req.DNSNames, p.Leaf.DNSNames...)
		for _, ip := range p.Leaf.IPAddresses {
			req.DNSNames = append(req.DNSNames, ip.String())
		}
	}
	return req
}

// Verifier checks client certificate chains against the CA's roots. It is
// what the node port calls per RPC: the TLS handshake already verified the
// chain once, but a stream may outlive its certificate, and identity checks
// (trust domain, SAN shape) are ours, not crypto/tls's.
type Verifier struct {
	roots         *x509.CertPool
	intermediates func() []*x509.Certificate // known issuers a chain may omit; nil: none
	trustDomain   string
	now           func() time.Time
}

// NewVerifier returns a Verifier for certificates chaining to roots and
// naming identities in trustDomain.
func NewVerifier(roots *x509.CertPool, trustDomain string) *Verifier {
	return &Verifier{roots: roots, trustDomain: trustDomain, now: time.Now}
}

// VerifierFor returns the Verifier for an Authority's certificates. Chains
// may omit the authority's intermediates.
func VerifierFor(a Authority) *Verifier {
	v := NewVerifier(a.Roots(), a.TrustDomain())
	v.intermediates = a.Intermediates
	return v
}

// VerifyChain verifies a presented chain (leaf first, as in
// tls.ConnectionState.PeerCertificates) at the current time and returns the
// caller's identity.
func (v *Verifier) VerifyChain(chain []*x509.Certificate) (Peer, error) {
	if len(chain) == 0 || chain[0] == nil {
		return Peer{}, ErrNoClientCertificate
	}
	leaf := chain[0]
	now := v.now()
	// Checked before Verify so an expired certificate gets its own error
	// instead of a generic chain failure.
	if now.Before(leaf.NotBefore) || now.After(leaf.NotAfter) {
		return Peer{}, fmt.Errorf("%w: valid %s to %s, now %s", ErrCertificateExpired,
			leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	inter := x509.NewCertPool()
	if v.intermediates != nil {
		for _, c := range v.intermediates() {
			inter.AddCert(c)
		}
	}
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         v.roots,
		Intermediates: inter,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		var inv x509.CertificateInvalidError
		if errors.As(err, &inv) && inv.Reason == x509.Expired {
			return Peer{}, fmt.Errorf("%w: %w", ErrCertificateExpired, err)
		}
		return Peer{}, fmt.Errorf("%w: %w", ErrUntrusted, err)
	}
	id, key, err := identity.FromCertificate(leaf)
	if err != nil {
		return Peer{}, fmt.Errorf("%w: %w", ErrForeignIdentity, err)
	}
	if id.TrustDomain != v.trustDomain {
		return Peer{}, fmt.Errorf("%w: trust domain %q, want %q", ErrForeignIdentity, id.TrustDomain, v.trustDomain)
	}
	return Peer{ID: id, WGKey: key, Serial: leaf.SerialNumber.String(), NotAfter: leaf.NotAfter, Leaf: leaf}, nil
}

// VerifyConnection verifies the client certificate of a TLS connection, e.g.
// from peer.Peer.AuthInfo (credentials.TLSInfo.State) in gRPC or
// http.Request.TLS in Connect handlers.
func (v *Verifier) VerifyConnection(cs *tls.ConnectionState) (Peer, error) {
	if cs == nil {
		return Peer{}, fmt.Errorf("%w: not a TLS connection", ErrNoClientCertificate)
	}
	return v.VerifyChain(cs.PeerCertificates)
}
