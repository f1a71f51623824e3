// Package ipam is the pure address arithmetic behind overlay address allocation: the size of a
// prefix, the Nth address in it, the index of an address, the usable index range of an IPv4 pool
// (network and broadcast excluded) and the generation of RFC 4193 ULA prefixes.
//
// It keeps no state: the store owns which indices are taken and serialises allocation per cvlan.
// Addresses are identified by their offset ("index") from the prefix's first address, so that an
// IPv4 address and the IPv6 address of the same node can share one index.
package ipam

import (
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/netip"
)

// DefaultIPv4 is the overlay IPv4 prefix used when a cvlan does not name one (RFC 6598 shared
// address space, like other mesh VPNs, so it rarely collides with LAN ranges).
var DefaultIPv4 = netip.MustParsePrefix("100.64.0.0/10")

// ErrOutOfRange reports an index or address outside the prefix.
var ErrOutOfRange = errors.New("ipam: outside the prefix")

// Size returns the number of addresses in p (2^(bits-len)), saturated at 2^63-1 so that IPv6
// prefixes fit an int64.
func Size(p netip.Prefix) int64 {
	host := p.Addr().BitLen() - p.Bits()
	if host >= 63 {
		return 1<<63 - 1
	}
	return int64(1) << host
}

// Nth returns the address at offset i from the first address of p.
func Nth(p netip.Prefix, i int64) (netip.Addr, error) {
	p = p.Masked()
	if i < 0 || i >= Size(p) {
		return netip.Addr{}, fmt.Errorf("%w: index %d of %s", ErrOutOfRange, i, p)
	}
	b := p.Addr().AsSlice()
	n := new(big.Int).SetBytes(b)
	n.Add(n, big.NewInt(i))
	out := n.FillBytes(make([]byte, len(b)))
	a, _ := netip.AddrFromSlice(out)
	return a, nil
}

// Index returns the offset of a from the first address of p.
func Index(p netip.Prefix, a netip.Addr) (int64, error) {
	p = p.Masked()
	a = a.Unmap()
	if !p.Contains(a) {
		return 0, fmt.Errorf("%w: %s not in %s", ErrOutOfRange, a, p)
	}
	base := new(big.Int).SetBytes(p.Addr().AsSlice())
	n := new(big.Int).SetBytes(a.AsSlice())
	n.Sub(n, base)
	if !n.IsInt64() {
		return 0, fmt.Errorf("%w: %s is too far into %s", ErrOutOfRange, a, p)
	}
	return n.Int64(), nil
}

// UsableRange returns the first and last index (inclusive) that may be handed to nodes. For IPv4
// prefixes shorter than /31 the network address (index 0) and the broadcast address (the last) are
// excluded; /31 and /32 use every address (RFC 3021). For IPv6 index 0 (the subnet-router anycast
// address) is excluded.
func UsableRange(p netip.Prefix) (first, last int64) {
	size := Size(p)
	if p.Addr().Is4() {
		if p.Bits() >= 31 {
			return 0, size - 1
		}
		return 1, size - 2
	}
	return 1, size - 1
}

// Usable returns how many indices UsableRange covers.
func Usable(p netip.Prefix) int64 {
	first, last := UsableRange(p)
	return last - first + 1
}

// ParseIPv4 parses an overlay IPv4 prefix, returning DefaultIPv4 when s is empty. The prefix must
// be canonical (no host bits set) so that the stored form is unambiguous.
func ParseIPv4(s string) (netip.Prefix, error) {
	if s == "" {
		return DefaultIPv4, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipam: ipv4 prefix %q: %w", s, err)
	}
	if !p.Addr().Is4() {
		return netip.Prefix{}, fmt.Errorf("ipam: %q is not an IPv4 prefix", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("ipam: %q has host bits set (did you mean %s?)", s, p.Masked())
	}
	if p.Bits() > 30 {
		return netip.Prefix{}, fmt.Errorf("ipam: %q leaves no room for nodes (at most /30)", s)
	}
	return p, nil
}

// ParseIPv6 parses an overlay IPv6 prefix; it must be a canonical ULA prefix (fc00::/7) large
// enough to hold one address for every usable IPv4 index of v4, because a node's IPv6 address uses
// the same index as its IPv4 address.
func ParseIPv6(s string, v4 netip.Prefix) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipam: ipv6 prefix %q: %w", s, err)
	}
	if !p.Addr().Is6() || p.Addr().Is4In6() {
		return netip.Prefix{}, fmt.Errorf("ipam: %q is not an IPv6 prefix", s)
	}
	if p.Masked() != p {
		return netip.Prefix{}, fmt.Errorf("ipam: %q has host bits set (did you mean %s?)", s, p.Masked())
	}
	if !ulaSpace.Contains(p.Addr()) {
		return netip.Prefix{}, fmt.Errorf("ipam: %q is not a ULA prefix (fc00::/7)", s)
	}
	if 128-p.Bits() < 32-v4.Bits() {
		return netip.Prefix{}, fmt.Errorf("ipam: %q is smaller than the IPv4 pool %s", s, v4)
	}
	return p, nil
}

var ulaSpace = netip.MustParsePrefix("fc00::/7")

// GenerateULA returns a random /48 in fd00::/8 (RFC 4193 section 3.2: the L bit set and a 40-bit
// random global ID). rand should be crypto/rand.Reader; tests pass a deterministic reader.
func GenerateULA(rand io.Reader) (netip.Prefix, error) {
	var b [16]byte
	b[0] = 0xfd
	if _, err := io.ReadFull(rand, b[1:6]); err != nil {
		return netip.Prefix{}, fmt.Errorf("ipam: random global id: %w", err)
	}
	return netip.PrefixFrom(netip.AddrFrom16(b), 48), nil
}
