package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

// The property tests compare the index against a brute-force reference that
// shares no code with it: it samples concrete packets (protocol, port) at every
// port boundary the rules mention and evaluates every rule for every pair.

type point struct {
	proto Protocol // ProtoTCP, ProtoUDP, ProtoICMP, or 99 for "other"
	port  uint16
}

func refPoints(rules []Rule) []point {
	ports := []uint16{0, 65535}
	for _, r := range rules {
		for _, p := range r.Ports {
			ports = append(ports, p.First, p.Last)
			if p.First > 0 {
				ports = append(ports, p.First-1)
			}
			if p.Last < 65535 {
				ports = append(ports, p.Last+1)
			}
		}
	}
	var out []point
	for _, p := range ports {
		out = append(out, point{ProtoTCP, p}, point{ProtoUDP, p})
	}
	return append(out, point{ProtoICMP, 0}, point{99, 0})
}

func refRuleMatchesPoint(r Rule, pt point) bool {
	inPorts := func() bool {
		if len(r.Ports) == 0 {
			return true
		}
		for _, p := range r.Ports {
			if pt.port >= p.First && pt.port <= p.Last {
				return true
			}
		}
		return false
	}
	switch r.Protocol {
	case ProtoAny:
		if len(r.Ports) == 0 {
			return true
		}
		return (pt.proto == ProtoTCP || pt.proto == ProtoUDP) && inPorts()
	case ProtoICMP:
		return pt.proto == ProtoICMP
	default:
		return pt.proto == r.Protocol && inPorts()
	}
}

func refMatch(n NodeAttrs, ts []Target) bool {
	for _, t := range ts {
		switch t.Kind {
		case KindAny:
			return true
		case KindNode:
			if n.ID == t.ID {
				return true
			}
		case KindUser:
			if n.UserID == t.ID {
				return true
			}
		case KindGroup:
			if slices.Contains(n.GroupIDs, t.ID) {
				return true
			}
		case KindTag:
			if slices.Contains(n.Tags, t.ID) {
				return true
			}
		case KindCIDR:
			for _, a := range n.Addresses {
				if t.Prefix.Contains(a) {
					return true
				}
			}
			for _, r := range n.Routes {
				if r.Overlaps(t.Prefix) {
					return true
				}
			}
		}
	}
	return false
}

func activeRules(ps []Policy) []Rule {
	var out []Rule
	for _, p := range ps {
		if p.Enabled {
			out = append(out, p.Rules...)
		}
	}
	return out
}

// refAllowed reports whether some packet from a to b is allowed.
func refAllowed(rules []Rule, a, b NodeAttrs) bool {
	for _, pt := range refPoints(rules) {
		allowed, denied := false, false
		for _, r := range rules {
			if refMatch(a, r.Sources) && refMatch(b, r.Destinations) && refRuleMatchesPoint(r, pt) {
				if r.Action == ActionAllow {
					allowed = true
				} else {
					denied = true
				}
			}
		}
		if allowed && !denied {
			return true
		}
	}
	return false
}

func refPeers(ps []Policy, nodes []NodeAttrs, n NodeAttrs) []string {
	rules := activeRules(ps)
	var out []string
	for _, m := range nodes {
		if m.ID != n.ID && (refAllowed(rules, n, m) || refAllowed(rules, m, n)) {
			out = append(out, m.ID)
		}
	}
	slices.Sort(out)
	return out
}

var (
	randTags   = []string{"t0", "t1", "t2", "t3"}
	randUsers  = []string{"u0", "u1", "u2"}
	randGroups = []string{"g0", "g1", "g2"}
	randCIDRs  = []string{"10.0.0.0/8", "10.1.0.0/16", "100.64.0.0/10", "100.64.0.5/32", "192.168.0.0/16", "fd7a::/64"}
	randPorts  = []PortRange{{22, 22}, {80, 80}, {443, 443}, {1, 1024}, {8000, 8080}, {0, 65535}}
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func subset[T any](r *rand.Rand, xs []T, p float64) []T {
	var out []T
	for _, x := range xs {
		if r.Float64() < p {
			out = append(out, x)
		}
	}
	return out
}

func randNode(r *rand.Rand, i int) NodeAttrs {
	n := NodeAttrs{
		ID:        fmt.Sprintf("n%02d", i),
		Tags:      subset(r, randTags, 0.3),
		GroupIDs:  subset(r, randGroups, 0.3),
		Addresses: []netip.Addr{netip.AddrFrom4([4]byte{100, 64, byte(r.IntN(2)), byte(i)}), netip.MustParseAddr(fmt.Sprintf("fd7a::%x", i))},
	}
	if r.IntN(3) > 0 {
		n.UserID = pick(r, randUsers)
	}
	if r.IntN(5) == 0 {
		n.Routes = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(3)), byte(i), 0}), 24)}
	}
	return n
}

func randTarget(r *rand.Rand, nodes int) Target {
	switch r.IntN(12) {
	case 0:
		return Any()
	case 1, 2:
		return User(pick(r, randUsers))
	case 3, 4:
		return Group(pick(r, randGroups))
	case 5, 6, 7:
		return Tag(pick(r, randTags))
	case 8, 9:
		return Node(fmt.Sprintf("n%02d", r.IntN(nodes)))
	default:
		return CIDR(netip.MustParsePrefix(pick(r, randCIDRs)))
	}
}

func randPolicies(r *rand.Rand, nodes int) []Policy {
	var ps []Policy
	for i := range 1 + r.IntN(4) {
		p := Policy{ID: fmt.Sprintf("p%d", i), Enabled: r.IntN(6) > 0, Priority: r.IntN(3)}
		for range 1 + r.IntN(3) {
			rule := Rule{Action: ActionAllow, Protocol: Protocol(r.IntN(4))}
			if r.IntN(4) == 0 {
				rule.Action = ActionDeny
			}
			for range 1 + r.IntN(2) {
				rule.Sources = append(rule.Sources, randTarget(r, nodes))
				rule.Destinations = append(rule.Destinations, randTarget(r, nodes))
			}
			if rule.Protocol != ProtoICMP && r.IntN(2) == 0 {
				rule.Ports = subset(r, randPorts, 0.3)
			}
			p.Rules = append(p.Rules, rule)
		}
		ps = append(ps, p)
	}
	return ps
}

func sorted(xs []string) []string {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	return xs
}

func minus(a, b []string) []string {
	var out []string
	for _, x := range a {
		if !slices.Contains(b, x) {
			out = append(out, x)
		}
	}
	return sorted(out)
}

func filters(c *Compiled, d *Directory, nodes []NodeAttrs) map[string]uint64 {
	out := make(map[string]uint64)
	for _, n := range nodes {
		out[n.ID] = HashFilter(c.Filter(d, n))
	}
	return out
}

func TestPropertyAgainstReference(t *testing.T) {
	const rounds, nodeCount = 100, 24
	r := rand.New(rand.NewPCG(1, 2))
	for round := range rounds {
		nodes := make([]NodeAttrs, nodeCount)
		for i := range nodes {
			nodes[i] = randNode(r, i)
		}
		ps0, ps1 := randPolicies(r, nodeCount), randPolicies(r, nodeCount)
		c0, err := Compile(ps0, "")
		if err != nil {
			t.Fatal(err)
		}
		c1, err := Compile(ps1, "")
		if err != nil {
			t.Fatal(err)
		}
		d := newDir(c0, nodes)
		d.Track(c1.CIDRs())
		ctx := func() string { return fmt.Sprintf("round %d\nold %+v\nnew %+v", round, ps0, ps1) }

		// Peers equals the reference, and PeerDiff equals the set difference.
		f0, f1 := filters(c0, d, nodes), filters(c1, d, nodes)
		affected := Affected(d, c0, c1)
		for _, n := range nodes {
			want0, want1 := refPeers(ps0, nodes, n), refPeers(ps1, nodes, n)
			if got := sorted(c0.Peers(d, n)); !slices.Equal(got, want0) {
				t.Fatalf("%s\nPeers(%s) = %v, want %v", ctx(), n.ID, got, want0)
			}
			add, rem := PeerDiff(d, c0, n, c1, n)
			if !slices.Equal(sorted(add), minus(want1, want0)) || !slices.Equal(sorted(rem), minus(want0, want1)) {
				t.Fatalf("%s\nPeerDiff(%s) = +%v -%v, want +%v -%v", ctx(), n.ID, add, rem, minus(want1, want0), minus(want0, want1))
			}
			limit := 1 + r.IntN(4)
			la, lr, ok := PeerDiffLimit(d, c0, n, c1, n, limit)
			total := len(minus(want1, want0)) + len(minus(want0, want1))
			if ok != (total <= limit) || (ok && (!slices.Equal(sorted(la), sorted(add)) || !slices.Equal(sorted(lr), sorted(rem)))) {
				t.Fatalf("%s\nPeerDiffLimit(%s, %d) = +%v -%v ok=%v; diff has %d", ctx(), n.ID, limit, la, lr, ok, total)
			}
			if (!slices.Equal(want0, want1) || f0[n.ID] != f1[n.ID]) && !slices.Contains(affected, n.ID) {
				t.Fatalf("%s\nnode %s changed but is not in Affected %v", ctx(), n.ID, affected)
			}
		}

		// Check agrees with the reference, packet by packet, on sampled pairs.
		rules0 := activeRules(ps0)
		for range 20 {
			a, b := nodes[r.IntN(nodeCount)], nodes[r.IntN(nodeCount)]
			for _, pt := range refPoints(rules0) {
				allowed, denied := false, false
				for _, ru := range rules0 {
					if refMatch(a, ru.Sources) && refMatch(b, ru.Destinations) && refRuleMatchesPoint(ru, pt) {
						allowed = allowed || ru.Action == ActionAllow
						denied = denied || ru.Action == ActionDeny
					}
				}
				proto := pt.proto
				if proto == 99 {
					proto = ProtoAny
				}
				if got := c0.Check(a, b, proto, pt.port); got.Allowed != (allowed && !denied) {
					t.Fatalf("%s\nCheck(%s, %s, %v, %d) = %+v, want allowed=%v", ctx(), a.ID, b.ID, proto, pt.port, got, allowed && !denied)
				}
			}
		}

		// A node changes: PeerDiff and FilterDependents cover what changed.
		i := r.IntN(nodeCount)
		old, upd := nodes[i], randNode(r, i)
		before := filters(c0, d, nodes)
		add, rem := PeerDiff(d, c0, old, c0, upd)
		nodes[i] = upd
		d.Put(upd)
		after := filters(c0, d, nodes)
		deps := c0.FilterDependents(d, &old, &upd)
		want0, want1 := refPeers(ps0, nodes, old), refPeers(ps0, nodes, upd)
		if !slices.Equal(sorted(add), minus(want1, want0)) || !slices.Equal(sorted(rem), minus(want0, want1)) {
			t.Fatalf("%s\nnode change %+v -> %+v: PeerDiff = +%v -%v, want +%v -%v", ctx(), old, upd, add, rem, minus(want1, want0), minus(want0, want1))
		}
		for id, h := range after {
			if h != before[id] && id != upd.ID && !slices.Contains(deps, id) {
				t.Fatalf("%s\nfilter of %s changed but FilterDependents = %v", ctx(), id, deps)
			}
		}

		// A node leaves.
		j := r.IntN(nodeCount)
		gone := nodes[j]
		d.Delete(gone.ID)
		rest := slices.Delete(slices.Clone(nodes), j, j+1)
		afterDel := filters(c0, d, rest)
		deps = c0.FilterDependents(d, &gone, nil)
		for id, h := range afterDel {
			if h != after[id] && !slices.Contains(deps, id) {
				t.Fatalf("%s\nfilter of %s changed on removal but FilterDependents = %v", ctx(), id, deps)
			}
		}
	}
}
