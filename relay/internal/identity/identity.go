// Package identity reads the relay-relevant identity from a verified certificate. Parsing is
// controller/identity's (the module that defines node identities, ADR 002 and 003); this package adds
// what the relay decides with it: the expected trust domain and whether the holder is a client.
//
//	spiffe://<td>/tenant/<tenant>/node/<id>      + urn:cloudvlan:wgkey:<hex>
//	spiffe://<td>/tenant/<tenant>/vrouter/<id>   + urn:cloudvlan:wgkey:<hex>
//	spiffe://<td>/relay/<id>                      (shared relay)
//	spiffe://<td>/tenant/<tenant>/relay/<id>      (a tenant's own relay)
package identity

import (
	"crypto/x509"
	"errors"
	"fmt"

	cid "github.com/cloudvlan/cloudvlan/controller/identity"
)

// Kind is the workload type named by a certificate.
type Kind = cid.Kind

// Kinds the relay distinguishes.
const (
	KindNode    = cid.KindNode
	KindVRouter = cid.KindVRouter
	KindRelay   = cid.KindRelay
)

// ErrInvalid is wrapped by every error of FromCertificate.
var ErrInvalid = errors.New("identity: certificate identity not acceptable")

// Identity is who a certificate says its holder is.
type Identity struct {
	Kind   Kind
	Tenant string // empty for a shared relay
	ID     string
	// WGKey is the WireGuard public key; zero for relays.
	WGKey [32]byte
}

// IsClient reports whether the identity may use the relay as a client
// (it is addressed by a WireGuard key).
func (i Identity) IsClient() bool { return i.Kind == KindNode || i.Kind == KindVRouter }

// FromCertificate extracts the identity in trust domain td from cert, whose
// chain the caller has already verified.
func FromCertificate(cert *x509.Certificate, td string) (Identity, error) {
	id, key, err := cid.FromCertificate(cert)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if id.TrustDomain != td {
		return Identity{}, fmt.Errorf("%w: trust domain %q, want %q", ErrInvalid, id.TrustDomain, td)
	}
	out := Identity{Kind: id.Kind, Tenant: id.TenantID, ID: id.ResourceID, WGKey: key}
	if out.Kind == KindRelay {
		// A relay's certificate may carry a key (enrollment requires one); the relay never routes by it.
		out.WGKey = [32]byte{}
	}
	return out, nil
}
