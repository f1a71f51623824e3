package policy

import "slices"

// coverage is the traffic a set of rules matches, split by protocol class, so that
// "is anything left of the allowed traffic once denies are removed" can be answered
// exactly for a pair of nodes.
type coverage struct {
	tcp, udp    []PortRange // normalised: sorted, merged
	icmp, other bool
}

var allPorts = []PortRange{{0, 65535}}

func ruleCoverage(proto Protocol, ports []PortRange) coverage {
	p := ports
	if len(p) == 0 {
		p = allPorts
	}
	switch proto {
	case ProtoTCP:
		return coverage{tcp: p}
	case ProtoUDP:
		return coverage{udp: p}
	case ProtoICMP:
		return coverage{icmp: true}
	}
	if len(ports) > 0 {
		return coverage{tcp: p, udp: p}
	}
	return coverage{tcp: p, udp: p, icmp: true, other: true}
}

func (c *coverage) add(o coverage) {
	c.tcp = mergeRanges(c.tcp, o.tcp)
	c.udp = mergeRanges(c.udp, o.udp)
	c.icmp = c.icmp || o.icmp
	c.other = c.other || o.other
}

func (c coverage) empty() bool {
	return len(c.tcp) == 0 && len(c.udp) == 0 && !c.icmp && !c.other
}

// exceeds reports whether c matches some traffic that deny does not.
func (c coverage) exceeds(deny coverage) bool {
	return (c.icmp && !deny.icmp) || (c.other && !deny.other) ||
		!rangesWithin(c.tcp, deny.tcp) || !rangesWithin(c.udp, deny.udp)
}

// normRanges sorts and merges ranges (adjacent ranges are joined).
func normRanges(rs []PortRange) []PortRange {
	if len(rs) == 0 {
		return nil
	}
	out := slices.Clone(rs)
	slices.SortFunc(out, func(a, b PortRange) int { return int(a.First) - int(b.First) })
	n := 0
	for _, r := range out[1:] {
		cur := &out[n]
		if uint32(r.First) <= uint32(cur.Last)+1 {
			if r.Last > cur.Last {
				cur.Last = r.Last
			}
			continue
		}
		n++
		out[n] = r
	}
	return out[:n+1]
}

func mergeRanges(a, b []PortRange) []PortRange {
	if len(b) == 0 {
		return a
	}
	if len(a) == 0 {
		return b
	}
	return normRanges(append(slices.Clone(a), b...))
}

// rangesWithin reports whether every port of a lies in b; b must be normalised.
func rangesWithin(a, b []PortRange) bool {
	for _, r := range a {
		i, _ := slices.BinarySearchFunc(b, r.First, func(x PortRange, p uint16) int {
			if x.Last < p {
				return -1
			}
			if x.First > p {
				return 1
			}
			return 0
		})
		if i >= len(b) || b[i].First > r.First || b[i].Last < r.Last {
			return false
		}
	}
	return true
}

// contains reports whether one packet (protocol, destination port) is covered;
// ProtoAny stands for a protocol other than TCP, UDP and ICMP.
func (c coverage) contains(proto Protocol, port uint16) bool {
	in := func(rs []PortRange) bool {
		for _, r := range rs {
			if port >= r.First && port <= r.Last {
				return true
			}
		}
		return false
	}
	switch proto {
	case ProtoTCP:
		return in(c.tcp)
	case ProtoUDP:
		return in(c.udp)
	case ProtoICMP:
		return c.icmp
	}
	return c.other
}
