package identity

import (
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
)

// Errors returned by FromCertificate for certificates whose URI SANs do not
// follow the conventions.
var (
	// ErrNoID: the certificate has no SPIFFE URI SAN.
	ErrNoID = errors.New("identity: certificate has no SPIFFE ID")
	// ErrMultipleIDs: the certificate has more than one SPIFFE URI SAN.
	ErrMultipleIDs = errors.New("identity: certificate has more than one SPIFFE ID")
	// ErrMissingWGKey: a node or vrouter certificate has no wgkey URN.
	ErrMissingWGKey = errors.New("identity: certificate has no wgkey URN")
	// ErrMultipleWGKeys: the certificate has more than one wgkey URN.
	ErrMultipleWGKeys = errors.New("identity: certificate has more than one wgkey URN")
	// ErrUnexpectedURI: the certificate has a URI SAN that is neither a
	// SPIFFE ID nor a wgkey URN; our CA never issues those.
	ErrUnexpectedURI = errors.New("identity: unexpected URI SAN")
)

// FromCertificate reads the identity from a certificate's URI SANs: exactly
// one SPIFFE ID and, for nodes and vrouters, exactly one wgkey URN (a relay may
// carry one too). The key is zero when the certificate carries none.
//
// It checks the form only; whether the certificate is trusted, unexpired and
// in the expected trust domain is for the caller's chain verification.
func FromCertificate(cert *x509.Certificate) (ID, [32]byte, error) {
	var (
		id             ID
		key            [32]byte
		nIDs, nWGKeys  int
		errID, errWGKy error
	)
	if cert == nil {
		return ID{}, key, fmt.Errorf("%w: nil certificate", ErrNoID)
	}
	for _, u := range cert.URIs {
		switch {
		case strings.EqualFold(u.Scheme, "spiffe"):
			nIDs++
			id, errID = Parse(u)
		case IsWGKeyURI(u):
			nWGKeys++
			key, errWGKy = ParseWGKeyURI(u)
		default:
			return ID{}, [32]byte{}, fmt.Errorf("%w: %q", ErrUnexpectedURI, u.String())
		}
	}
	switch {
	case nIDs == 0:
		return ID{}, [32]byte{}, ErrNoID
	case nIDs > 1:
		return ID{}, [32]byte{}, fmt.Errorf("%w: %d", ErrMultipleIDs, nIDs)
	case errID != nil:
		return ID{}, [32]byte{}, errID
	case nWGKeys > 1:
		return ID{}, [32]byte{}, fmt.Errorf("%w: %d", ErrMultipleWGKeys, nWGKeys)
	case errWGKy != nil:
		return ID{}, [32]byte{}, errWGKy
	case nWGKeys == 0 && id.Kind.NeedsWGKey():
		return ID{}, [32]byte{}, fmt.Errorf("%w: required for kind %s (%s)", ErrMissingWGKey, id.Kind, id)
	}
	return id, key, nil
}
