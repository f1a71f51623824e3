package identity

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// WGKeyURNPrefix starts the URI SAN that carries a WireGuard public key.
const WGKeyURNPrefix = "urn:cloudvlan:wgkey:"

// ErrWGKey: a wgkey URN is malformed (wrong length, not lowercase hex) or the
// key is all zeros.
var ErrWGKey = errors.New("identity: invalid wgkey URN")

// WGKeyURI returns the URI SAN carrying key:
// urn:cloudvlan:wgkey:<64 lowercase hex characters>.
func WGKeyURI(key [32]byte) *url.URL {
	return &url.URL{Scheme: "urn", Opaque: "cloudvlan:wgkey:" + hex.EncodeToString(key[:])}
}

// IsWGKeyURI reports whether u claims to be a wgkey URN (it may still be
// malformed; ParseWGKeyURI says).
func IsWGKeyURI(u *url.URL) bool {
	return u != nil && strings.EqualFold(u.Scheme, "urn") &&
		strings.HasPrefix(strings.ToLower(u.Opaque), "cloudvlan:wgkey:")
}

// ParseWGKeyURI extracts the WireGuard public key from a wgkey URN. Only the
// canonical spelling (lowercase scheme, prefix and hex) is accepted, so every
// key has exactly one URI.
func ParseWGKeyURI(u *url.URL) ([32]byte, error) {
	var key [32]byte
	if u == nil {
		return key, fmt.Errorf("%w: nil URI", ErrWGKey)
	}
	s := u.String()
	if !strings.HasPrefix(s, WGKeyURNPrefix) {
		return key, fmt.Errorf("%w: %q does not start with %q", ErrWGKey, s, WGKeyURNPrefix)
	}
	h := s[len(WGKeyURNPrefix):]
	if len(h) != 64 {
		return key, fmt.Errorf("%w: %d hex characters, want 64", ErrWGKey, len(h))
	}
	for i := 0; i < len(h); i++ {
		c := h[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return key, fmt.Errorf("%w: character %q at %d (want lowercase hex)", ErrWGKey, c, i)
		}
	}
	if _, err := hex.Decode(key[:], []byte(h)); err != nil {
		return key, fmt.Errorf("%w: %w", ErrWGKey, err)
	}
	if key == ([32]byte{}) {
		return key, fmt.Errorf("%w: all-zero key", ErrWGKey)
	}
	return key, nil
}

// WGKeyFromBytes converts a 32-byte slice (as carried in protobuf messages)
// into a key, refusing other lengths and the all-zero key.
func WGKeyFromBytes(b []byte) ([32]byte, error) {
	var key [32]byte
	if len(b) != 32 {
		return key, fmt.Errorf("%w: %d bytes, want 32", ErrWGKey, len(b))
	}
	copy(key[:], b)
	if key == ([32]byte{}) {
		return key, fmt.Errorf("%w: all-zero key", ErrWGKey)
	}
	return key, nil
}
