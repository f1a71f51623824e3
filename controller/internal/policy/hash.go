package policy

import (
	"encoding/binary"
	"hash/fnv"
	"net/netip"
)

// HashFilter returns a 64-bit FNV-1a hash of a packet filter's canonical
// encoding. The engine keeps only this hash per node (not the filter), to tell
// whether a recomputed filter differs from the one the node already has.
func HashFilter(rules []FilterRule) uint64 {
	h := fnv.New64a()
	var buf [8]byte
	put := func(v uint64) {
		binary.LittleEndian.PutUint64(buf[:], v)
		h.Write(buf[:])
	}
	prefixes := func(ps []netip.Prefix) {
		put(uint64(len(ps)))
		for _, p := range ps {
			b := p.Addr().As16()
			h.Write(b[:])
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
	return h.Sum64()
}

func boolBit(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}
