package policy

import "net/netip"

// HashFilter returns a 64-bit FNV-1a-style hash of a packet filter's canonical
// encoding. The engine keeps only this hash per node (not the filter), to tell
// whether a recomputed filter differs from the one the node already has.
func HashFilter(rules []FilterRule) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	// FNV-1a over 64-bit words rather than bytes: the filter of a node in a
	// large group hashes thousands of prefixes per change.
	put := func(v uint64) {
		h ^= v
		h *= prime
	}
	prefixes := func(ps []netip.Prefix) {
		put(uint64(len(ps)))
		for _, p := range ps {
			b := p.Addr().As16()
			put(uint64(b[0])<<56 | uint64(b[1])<<48 | uint64(b[2])<<40 | uint64(b[3])<<32 |
				uint64(b[4])<<24 | uint64(b[5])<<16 | uint64(b[6])<<8 | uint64(b[7]))
			put(uint64(b[8])<<56 | uint64(b[9])<<48 | uint64(b[10])<<40 | uint64(b[11])<<32 |
				uint64(b[12])<<24 | uint64(b[13])<<16 | uint64(b[14])<<8 | uint64(b[15]))
			put(uint64(p.Bits())<<1 | boolBit(p.Addr().Is4()))
		}
	}
	put(uint64(len(rules)))
	for _, r := range rules {
		put(uint64(r.Action)<<8 | uint64(r.Protocol))
		prefixes(r.Sources)
		prefixes(r.Destinations)
		put(uint64(len(r.Ports)))
		for _, p := range r.Ports {
			put(uint64(p.First)<<16 | uint64(p.Last))
		}
	}
	return h
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
