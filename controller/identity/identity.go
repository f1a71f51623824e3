// Package identity formats and parses the identities CloudVLAN puts into
// certificates: a SPIFFE ID naming the workload (node, relay or vrouter) and,
// for WireGuard speakers, a URN carrying the WireGuard public key.
//
// The conventions are fixed and shared by the controller, agent, relay and
// vrouter, so this package depends on the standard library only:
//
//	spiffe://<trust-domain>/tenant/<tenant-id>/node/<node-id>
//	spiffe://<trust-domain>/tenant/<tenant-id>/vrouter/<vrouter-id>
//	spiffe://<trust-domain>/tenant/<tenant-id>/relay/<relay-id>   (a tenant's own relay)
//	spiffe://<trust-domain>/relay/<relay-id>                      (a relay shared by all tenants)
//	urn:cloudvlan:wgkey:<64 lowercase hex characters>
package identity

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// DefaultTrustDomain is the SPIFFE trust domain used when none is configured.
const DefaultTrustDomain = "cloudvlan.internal"

// Kind is the type of workload an ID names.
type Kind string

// The workload kinds. Their string values are the path segments used in the
// SPIFFE ID, so they must never change.
const (
	KindNode    Kind = "node"
	KindRelay   Kind = "relay"
	KindVRouter Kind = "vrouter"
)

// Valid reports whether k is one of the known kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindNode, KindRelay, KindVRouter:
		return true
	}
	return false
}

// NeedsTenant reports whether IDs of this kind always belong to a tenant.
// Only relays may be shared by all tenants.
func (k Kind) NeedsTenant() bool { return k == KindNode || k == KindVRouter }

// NeedsWGKey reports whether certificates of this kind must carry the
// WireGuard key URN: nodes and vrouters are WireGuard peers, relays only
// forward ciphertext.
func (k Kind) NeedsWGKey() bool { return k == KindNode || k == KindVRouter }

// Errors returned by Parse, Validate and FromCertificate. They are wrapped
// with the offending value, so callers match them with errors.Is and show
// err.Error() to humans.
var (
	// ErrNotSPIFFE: the URI's scheme is not "spiffe".
	ErrNotSPIFFE = errors.New("identity: not a spiffe URI")
	// ErrTrustDomain: the trust domain is empty or has characters SPIFFE forbids.
	ErrTrustDomain = errors.New("identity: invalid trust domain")
	// ErrPath: the path does not have one of the accepted shapes.
	ErrPath = errors.New("identity: malformed SPIFFE ID path")
	// ErrKind: the kind segment is not node, relay or vrouter.
	ErrKind = errors.New("identity: unknown workload kind")
	// ErrSegment: a tenant or resource ID is empty or has forbidden characters.
	ErrSegment = errors.New("identity: invalid ID segment")
	// ErrTenantRequired: a node or vrouter ID has no tenant.
	ErrTenantRequired = errors.New("identity: kind requires a tenant")
	// ErrURIComponents: the URI has a user, port, query or fragment.
	ErrURIComponents = errors.New("identity: SPIFFE ID must not have user info, port, query or fragment")
)

// ID is the identity of one workload, the content of its SPIFFE URI SAN.
type ID struct {
	// TrustDomain is the SPIFFE trust domain, e.g. "cloudvlan.internal".
	TrustDomain string
	// TenantID is the owning tenant; empty only for shared relays.
	TenantID string
	// Kind is the workload kind.
	Kind Kind
	// ResourceID is the node, relay or vrouter ID.
	ResourceID string
}

// IsZero reports whether id is the zero ID.
func (id ID) IsZero() bool { return id == ID{} }

// Validate checks every field against the conventions and returns a wrapped
// sentinel error naming the first problem.
func (id ID) Validate() error {
	if err := validateTrustDomain(id.TrustDomain); err != nil {
		return err
	}
	if !id.Kind.Valid() {
		return fmt.Errorf("%w: %q", ErrKind, string(id.Kind))
	}
	if id.TenantID == "" {
		if id.Kind.NeedsTenant() {
			return fmt.Errorf("%w: %s", ErrTenantRequired, id.Kind)
		}
	} else if err := validateSegment("tenant id", id.TenantID); err != nil {
		return err
	}
	return validateSegment(string(id.Kind)+" id", id.ResourceID)
}

// URI returns the SPIFFE ID as a URL. It does not validate; call Validate
// first for IDs that did not come from Parse.
func (id ID) URI() *url.URL {
	path := "/" + string(id.Kind) + "/" + id.ResourceID
	if id.TenantID != "" {
		path = "/tenant/" + id.TenantID + path
	}
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: path}
}

// String returns the SPIFFE ID in its textual form.
func (id ID) String() string { return id.URI().String() }

// Parse parses a SPIFFE URI into an ID, accepting only the shapes listed in
// the package documentation.
func Parse(u *url.URL) (ID, error) {
	if u == nil {
		return ID{}, fmt.Errorf("%w: nil URI", ErrNotSPIFFE)
	}
	if u.Scheme != "spiffe" {
		return ID{}, fmt.Errorf("%w: scheme %q in %q", ErrNotSPIFFE, u.Scheme, u.String())
	}
	if u.Opaque != "" {
		return ID{}, fmt.Errorf("%w: %q has no authority (want spiffe://<trust-domain>/...)", ErrTrustDomain, u.String())
	}
	if u.User != nil || u.Port() != "" || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" {
		return ID{}, fmt.Errorf("%w: %q", ErrURIComponents, u.String())
	}
	// RawPath is set when the path had escapes; SPIFFE IDs never contain
	// percent-encoding, and accepting it would give two spellings of one ID.
	if u.RawPath != "" || strings.Contains(u.Path, "%") {
		return ID{}, fmt.Errorf("%w: percent-encoding in %q", ErrPath, u.String())
	}
	if err := validateTrustDomain(u.Host); err != nil {
		return ID{}, err
	}
	id := ID{TrustDomain: u.Host}
	if !strings.HasPrefix(u.Path, "/") {
		return ID{}, fmt.Errorf("%w: empty path in %q", ErrPath, u.String())
	}
	segs := strings.Split(u.Path[1:], "/")
	switch len(segs) {
	case 2: // <kind>/<id>: only shared relays
		id.Kind, id.ResourceID = Kind(segs[0]), segs[1]
	case 4: // tenant/<tenant>/<kind>/<id>
		if segs[0] != "tenant" {
			return ID{}, fmt.Errorf("%w: %q: want /tenant/<tenant-id>/<kind>/<id>", ErrPath, u.Path)
		}
		id.TenantID, id.Kind, id.ResourceID = segs[1], Kind(segs[2]), segs[3]
		if id.TenantID == "" {
			return ID{}, fmt.Errorf("%w: empty tenant id in %q", ErrSegment, u.Path)
		}
	default:
		return ID{}, fmt.Errorf("%w: %q: want /tenant/<tenant-id>/<kind>/<id> or /relay/<id>", ErrPath, u.Path)
	}
	if err := id.Validate(); err != nil {
		return ID{}, fmt.Errorf("%w (in %q)", err, u.String())
	}
	return id, nil
}

// ParseString parses the textual form of a SPIFFE ID.
func ParseString(s string) (ID, error) {
	u, err := url.Parse(s)
	if err != nil {
		return ID{}, fmt.Errorf("%w: %w", ErrNotSPIFFE, err)
	}
	return Parse(u)
}

// validateTrustDomain applies the SPIFFE rule: lowercase letters, digits,
// dots, dashes and underscores.
func validateTrustDomain(td string) error {
	if td == "" {
		return fmt.Errorf("%w: empty", ErrTrustDomain)
	}
	if len(td) > 255 {
		return fmt.Errorf("%w: longer than 255 characters", ErrTrustDomain)
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: %q has character %q (allowed: a-z 0-9 . - _)", ErrTrustDomain, td, c)
		}
	}
	return nil
}

// validateSegment applies the SPIFFE path segment rule: letters, digits,
// dots, dashes and underscores, and not "." or "..".
func validateSegment(what, s string) error {
	if s == "" {
		return fmt.Errorf("%w: empty %s", ErrSegment, what)
	}
	if s == "." || s == ".." {
		return fmt.Errorf("%w: %s %q", ErrSegment, what, s)
	}
	if len(s) > 128 {
		return fmt.Errorf("%w: %s longer than 128 characters", ErrSegment, what)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_') {
			return fmt.Errorf("%w: %s %q has character %q (allowed: A-Z a-z 0-9 . - _)", ErrSegment, what, s, c)
		}
	}
	return nil
}
