// Package identity reads the relay-relevant identity from a verified
// certificate's URI SANs, following the fixed CloudVLAN conventions:
//
//	spiffe://<td>/tenant/<tenant>/node/<id>      + urn:cloudvlan:wgkey:<hex>
//	spiffe://<td>/tenant/<tenant>/vrouter/<id>   + urn:cloudvlan:wgkey:<hex>
//	spiffe://<td>/relay/<id>                      (shared relay)
//	spiffe://<td>/tenant/<tenant>/relay/<id>      (a tenant's own relay)
//
// It mirrors controller/identity on purpose: the relay module stays free of
// the controller module's dependency tree.
package identity

import (
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// Kind is the workload type named by a certificate.
type Kind string

// Kinds the relay distinguishes.
const (
	KindNode    Kind = "node"
	KindVRouter Kind = "vrouter"
	KindRelay   Kind = "relay"
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

const wgKeyPrefix = "urn:cloudvlan:wgkey:"

// FromCertificate extracts the identity in trust domain td from cert, whose
// chain the caller has already verified.
func FromCertificate(cert *x509.Certificate, td string) (Identity, error) {
	var (
		id      Identity
		nIDs    int
		nKeys   int
		hasPath bool
	)
	if cert == nil {
		return id, fmt.Errorf("%w: no certificate", ErrInvalid)
	}
	for _, u := range cert.URIs {
		s := u.String()
		switch {
		case strings.EqualFold(u.Scheme, "spiffe"):
			nIDs++
			if u.Host != td {
				return id, fmt.Errorf("%w: trust domain %q, want %q", ErrInvalid, u.Host, td)
			}
			seg := strings.Split(strings.TrimPrefix(u.Path, "/"), "/")
			switch {
			case len(seg) == 2 && seg[0] == "relay":
				id.Kind, id.ID = KindRelay, seg[1]
			case len(seg) == 4 && seg[0] == "tenant":
				id.Tenant, id.ID = seg[1], seg[3]
				switch Kind(seg[2]) {
				case KindNode, KindVRouter, KindRelay:
					id.Kind = Kind(seg[2])
				default:
					return id, fmt.Errorf("%w: unknown kind in %q", ErrInvalid, s)
				}
			default:
				return id, fmt.Errorf("%w: SPIFFE path %q", ErrInvalid, u.Path)
			}
			for _, p := range seg {
				if p == "" {
					return id, fmt.Errorf("%w: empty segment in %q", ErrInvalid, s)
				}
			}
			hasPath = true
		case strings.HasPrefix(s, wgKeyPrefix):
			nKeys++
			h := s[len(wgKeyPrefix):]
			if len(h) != 64 || strings.ToLower(h) != h {
				return id, fmt.Errorf("%w: wgkey %q", ErrInvalid, h)
			}
			if _, err := hex.Decode(id.WGKey[:], []byte(h)); err != nil {
				return id, fmt.Errorf("%w: wgkey: %v", ErrInvalid, err)
			}
		}
	}
	switch {
	case nIDs != 1 || !hasPath:
		return Identity{}, fmt.Errorf("%w: %d SPIFFE IDs", ErrInvalid, nIDs)
	case nKeys > 1:
		return Identity{}, fmt.Errorf("%w: %d wgkey URNs", ErrInvalid, nKeys)
	case id.IsClient() && nKeys != 1:
		return Identity{}, fmt.Errorf("%w: %s certificate without wgkey", ErrInvalid, id.Kind)
	case id.Kind == KindRelay:
		id.WGKey = [32]byte{}
	}
	return id, nil
}
