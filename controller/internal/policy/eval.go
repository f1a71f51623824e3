package policy

import (
	"net/netip"
	"slices"
)

// nodeKeys returns the index keys a node is found under. CIDR keys are limited
// to the prefixes the compilation uses, so this costs O(tags+groups+cidrs).
func (c *Compiled) nodeKeys(a *NodeAttrs, identityOnly bool) []Target {
	keys := make([]Target, 0, 3+len(a.GroupIDs)+len(a.Tags))
	if !identityOnly {
		keys = append(keys, Any())
	}
	keys = append(keys, Node(a.ID))
	if a.UserID != "" {
		keys = append(keys, User(a.UserID))
	}
	for _, g := range a.GroupIDs {
		keys = append(keys, Group(g))
	}
	for _, t := range a.Tags {
		keys = append(keys, Tag(t))
	}
	if !identityOnly && c != nil {
		for _, p := range c.cidrs {
			if matchesCIDR(a, p) {
				keys = append(keys, CIDR(p))
			}
		}
	}
	return keys
}

// matchRules returns, in compiled order and without duplicates, the rules whose
// sources (idx == c.bySrc) or destinations (c.byDst) select the node.
func (c *Compiled) matchRules(a *NodeAttrs, idx map[Target][]int32) []int32 {
	if c == nil {
		return nil
	}
	var out []int32
	for _, k := range c.nodeKeys(a, false) {
		out = append(out, idx[k]...)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (c *Compiled) hasDeny(lists ...[]int32) bool {
	for _, l := range lists {
		for _, i := range l {
			if c.rules[i].action == ActionDeny {
				return true
			}
		}
	}
	return false
}

// candidates returns the targets whose members may be peers: the destinations of
// allow rules the node is a source of, and the sources of allow rules it is a
// destination of. When Any is among them it alone is returned (it covers all).
func (c *Compiled) candidates(src, dst []int32) []Target {
	var out []Target
	add := func(ts []Target) {
		for _, t := range ts {
			if !slices.Contains(out, t) {
				out = append(out, t)
			}
		}
	}
	for _, i := range src {
		if c.rules[i].action == ActionAllow {
			add(c.rules[i].dsts)
		}
	}
	for _, i := range dst {
		if c.rules[i].action == ActionAllow {
			add(c.rules[i].srcs)
		}
	}
	if slices.Contains(out, Any()) {
		return []Target{Any()}
	}
	return out
}

// allowed reports whether traffic between the node and peer is allowed in the
// direction the rules describe: rules are the node's source rules (peerIsDst) or
// its destination rules. Deny rules that match remove their traffic; the pair is
// allowed when some allowed traffic is left.
func (c *Compiled) allowed(rules []int32, peer *NodeAttrs, peerIsDst bool) bool {
	var allow, deny coverage
	for _, i := range rules {
		r := &c.rules[i]
		ts := r.srcs
		if peerIsDst {
			ts = r.dsts
		}
		if !matchesAny(peer, ts) {
			continue
		}
		if r.action == ActionAllow {
			allow.add(r.cov)
		} else {
			deny.add(r.cov)
		}
	}
	return !allow.empty() && allow.exceeds(deny)
}

func matchesAny(a *NodeAttrs, ts []Target) bool {
	for _, t := range ts {
		if matches(a, t) {
			return true
		}
	}
	return false
}

// visible returns the slots of the nodes that the node a may talk to, in either
// direction. The cost is the size of the candidate targets' member sets, not the
// number of nodes (unless a rule selects Any).
// The returned marks hold exactly the result; the caller releases them.
func (c *Compiled) visible(d *Directory, a *NodeAttrs) (*marks, []int32) {
	seen := d.acquire()
	if c == nil {
		return seen, nil
	}
	src, dst := c.matchRules(a, c.bySrc), c.matchRules(a, c.byDst)
	deny := c.hasDeny(src, dst)
	self, hasSelf := d.byID[a.ID]
	var out []int32
	for _, t := range c.candidates(src, dst) {
		d.eachMember(t, func(s int32) {
			if (hasSelf && s == self) || seen.testAndSet(s) {
				return
			}
			if deny {
				b := &d.slots[s].attrs
				if !c.allowed(src, b, true) && !c.allowed(dst, b, false) {
					return
				}
			}
			out = append(out, s)
		})
	}
	// seen also marks candidates rejected by a deny; rebuild it from out.
	if deny {
		d.release(seen)
		seen = d.acquire()
		for _, s := range out {
			seen.testAndSet(s)
		}
	}
	return seen, out
}

func (d *Directory) ids(slots []int32) []string {
	if len(slots) == 0 {
		return nil
	}
	out := make([]string, len(slots))
	for i, s := range slots {
		out[i] = d.slots[s].attrs.ID
	}
	return out
}

// Peers returns the ids of the nodes that a node with attributes a may exchange
// traffic with (allowed in at least one direction), excluding itself. The node
// itself need not be in d; the result does not depend on its entry there.
func (c *Compiled) Peers(d *Directory, a NodeAttrs) []string {
	seen, slots := c.visible(d, &a)
	d.release(seen)
	return d.ids(slots)
}

// PeerRefs is Peers returning the peers' NodeAttrs.Ref instead of their ids.
func (c *Compiled) PeerRefs(d *Directory, a NodeAttrs) []any {
	seen, slots := c.visible(d, &a)
	d.release(seen)
	out := make([]any, len(slots))
	for i, s := range slots {
		out[i] = d.slots[s].attrs.Ref
	}
	return out
}

// Visible reports whether nodes a and b may exchange traffic (in either direction).
func (c *Compiled) Visible(a, b NodeAttrs) bool {
	if c == nil || a.ID == b.ID {
		return false
	}
	src, dst := c.matchRules(&a, c.bySrc), c.matchRules(&a, c.byDst)
	return c.allowed(src, &b, true) || c.allowed(dst, &b, false)
}

// PeerDiff returns the nodes that become visible (added) and stop being visible
// (removed) to one node when its attributes change from oldA to newA and/or the
// policy from oldC to newC. Both attribute values must have the same ID.
//
// When no deny rule concerns the node it compares the candidate target sets and
// visits only members of targets that were added or removed, so adding a
// selective rule in an all-to-all network does not enumerate the network.
func PeerDiff(d *Directory, oldC *Compiled, oldA NodeAttrs, newC *Compiled, newA NodeAttrs) (added, removed []string) {
	added, removed, _ = PeerDiffLimit(d, oldC, oldA, newC, newA, 0)
	return added, removed
}

// PeerDiffLimit is PeerDiff giving up (ok false, nil lists) once more than limit
// peers would be added or removed (limit <= 0: no limit). The caller then
// resynchronises the node with a snapshot instead of building a huge delta;
// without deny rules the enumeration itself stops early, so turning a large
// network all-to-all costs about limit per node rather than N.
func PeerDiffLimit(d *Directory, oldC *Compiled, oldA NodeAttrs, newC *Compiled, newA NodeAttrs, limit int) (added, removed []string, ok bool) {
	oldSrc, oldDst := oldC.matchRules(&oldA, bySrcOf(oldC)), oldC.matchRules(&oldA, byDstOf(oldC))
	newSrc, newDst := newC.matchRules(&newA, bySrcOf(newC)), newC.matchRules(&newA, byDstOf(newC))
	if (oldC == nil || !oldC.hasDeny(oldSrc, oldDst)) && (newC == nil || !newC.hasDeny(newSrc, newDst)) {
		var oldT, newT []Target
		if oldC != nil {
			oldT = oldC.candidates(oldSrc, oldDst)
		}
		if newC != nil {
			newT = newC.candidates(newSrc, newDst)
		}
		self, hasSelf := d.byID[newA.ID]
		count := 0
		diff := func(from, against []Target) ([]int32, bool) {
			seen := d.acquire()
			defer d.release(seen)
			var out []int32
			for _, t := range from {
				if slices.Contains(against, t) {
					continue
				}
				complete := d.eachMemberWhile(t, func(s int32) bool {
					if (hasSelf && s == self) || seen.testAndSet(s) {
						return true
					}
					if !matchesAny(&d.slots[s].attrs, against) {
						out = append(out, s)
						count++
					}
					return limit <= 0 || count <= limit
				})
				if !complete {
					return nil, false
				}
			}
			return out, true
		}
		add, ok := diff(newT, oldT)
		if !ok {
			return nil, nil, false
		}
		rem, ok := diff(oldT, newT)
		if !ok {
			return nil, nil, false
		}
		return d.ids(add), d.ids(rem), true
	}
	oldSeen, oldV := oldC.visible(d, &oldA)
	newSeen, newV := newC.visible(d, &newA)
	defer d.release(oldSeen)
	defer d.release(newSeen)
	var add, rem []int32
	for _, s := range newV {
		if !oldSeen.has(s) {
			add = append(add, s)
		}
	}
	for _, s := range oldV {
		if !newSeen.has(s) {
			rem = append(rem, s)
		}
	}
	if limit > 0 && len(add)+len(rem) > limit {
		return nil, nil, false
	}
	return d.ids(add), d.ids(rem), true
}

func bySrcOf(c *Compiled) map[Target][]int32 {
	if c == nil {
		return nil
	}
	return c.bySrc
}

func byDstOf(c *Compiled) map[Target][]int32 {
	if c == nil {
		return nil
	}
	return c.byDst
}

// Filter returns the inbound packet-filter rules for a node with attributes a:
// one FilterRule per compiled rule whose destinations select the node, in
// compiled order (denies first). Sources are expanded to the members' addresses
// (host prefixes; not their subnet routes, as in Tailscale: name a CIDR for
// those), CIDR sources stay prefixes and Any becomes 0.0.0.0/0 and ::/0.
// Destinations are the node's addresses for user/group/tag/node targets, its
// addresses and approved routes for Any, and for a CIDR target its addresses in
// the prefix and the overlap of its routes with it. Rules with no source or
// destination left are omitted.
func (c *Compiled) Filter(d *Directory, a NodeAttrs) []FilterRule {
	return c.FilterCached(d, a, nil)
}

// SourceCache remembers expanded rule sources between Filter calls made for one
// change, when many nodes share the same rules (a tag group's members all list
// the group's addresses): each source list is then built once and shared. It is
// valid only while the Directory and the Compiled it was used with are unchanged.
type SourceCache struct {
	c    *Compiled
	srcs map[int32][]netip.Prefix
}

// NewSourceCache returns an empty cache.
func NewSourceCache() *SourceCache { return &SourceCache{} }

// FilterCached is Filter with a SourceCache (nil means none). The returned
// rules may share their Sources slices with other nodes' rules: read-only.
func (c *Compiled) FilterCached(d *Directory, a NodeAttrs, cache *SourceCache) []FilterRule {
	if c == nil {
		return nil
	}
	if cache != nil && cache.c != c {
		cache.c, cache.srcs = c, make(map[int32][]netip.Prefix)
	}
	var out []FilterRule
	for _, i := range c.matchRules(&a, c.byDst) {
		r := &c.rules[i]
		dsts := destPrefixes(&a, r.dsts)
		if len(dsts) == 0 {
			continue
		}
		var srcs []netip.Prefix
		if cache != nil {
			var ok bool
			if srcs, ok = cache.srcs[i]; !ok {
				srcs = sourcePrefixes(d, r.srcs)
				cache.srcs[i] = srcs
			}
		} else {
			srcs = sourcePrefixes(d, r.srcs)
		}
		if len(srcs) == 0 {
			continue
		}
		out = append(out, FilterRule{
			Action:       r.action,
			Sources:      srcs,
			Destinations: dsts,
			Protocol:     r.proto,
			Ports:        slices.Clone(r.ports),
		})
	}
	return out
}

var (
	allV4 = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	allV6 = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
)

func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

func destPrefixes(a *NodeAttrs, ts []Target) []netip.Prefix {
	var out []netip.Prefix
	for _, t := range ts {
		if !matches(a, t) {
			continue
		}
		switch t.Kind {
		case KindAny:
			for _, ad := range a.Addresses {
				out = append(out, hostPrefix(ad))
			}
			out = append(out, a.Routes...)
		case KindCIDR:
			for _, ad := range a.Addresses {
				if t.Prefix.Contains(ad) {
					out = append(out, hostPrefix(ad))
				}
			}
			for _, r := range a.Routes {
				if r.Overlaps(t.Prefix) {
					// The intersection of two overlapping prefixes is the longer one.
					if r.Bits() >= t.Prefix.Bits() {
						out = append(out, r)
					} else {
						out = append(out, t.Prefix)
					}
				}
			}
		default:
			for _, ad := range a.Addresses {
				out = append(out, hostPrefix(ad))
			}
		}
	}
	return sortPrefixes(out)
}

func sourcePrefixes(d *Directory, ts []Target) []netip.Prefix {
	var out []netip.Prefix
	for _, t := range ts {
		switch t.Kind {
		case KindAny:
			return []netip.Prefix{allV4, allV6}
		case KindCIDR:
			out = append(out, t.Prefix)
		default:
			d.eachMember(t, func(s int32) {
				for _, ad := range d.slots[s].attrs.Addresses {
					out = append(out, hostPrefix(ad))
				}
			})
		}
	}
	return sortPrefixes(out)
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, comparePrefixes)
	return slices.Compact(ps)
}

func comparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// FilterDependents returns the nodes whose packet filter may change when a node
// changes from old to new (old nil: it joins; new nil: it leaves): the members of
// the destinations of rules whose sources select the node by identity (user,
// group, tag, node) and whose member addresses therefore change. Any and CIDR
// sources do not list member addresses, so they make no dependents.
func (c *Compiled) FilterDependents(d *Directory, old, new *NodeAttrs) []string {
	if c == nil {
		return nil
	}
	var keys []Target
	switch {
	case old == nil && new == nil:
		return nil
	case old == nil:
		keys = c.nodeKeys(new, true)
	case new == nil:
		keys = c.nodeKeys(old, true)
	default:
		ok, nk := c.nodeKeys(old, true), c.nodeKeys(new, true)
		if !slices.Equal(old.Addresses, new.Addresses) {
			keys = append(ok, nk...)
		} else {
			for _, k := range ok {
				if !slices.Contains(nk, k) {
					keys = append(keys, k)
				}
			}
			for _, k := range nk {
				if !slices.Contains(ok, k) {
					keys = append(keys, k)
				}
			}
		}
	}
	seen := d.acquire()
	defer d.release(seen)
	var out []int32
	visitRule := make(map[int32]bool)
	for _, k := range keys {
		for _, i := range c.bySrc[k] {
			if visitRule[i] {
				continue
			}
			visitRule[i] = true
			for _, t := range c.rules[i].dsts {
				d.eachMember(t, func(s int32) {
					if !seen.testAndSet(s) {
						out = append(out, s)
					}
				})
			}
		}
	}
	return d.ids(out)
}

// Affected returns the nodes whose peers or packet filter may differ between two
// compilations: the members of every target named by a rule present in one and
// not the other. Unchanged rules cost nothing; a changed rule naming Any affects
// every node. Track both compilations' CIDRs in d before calling it.
func Affected(d *Directory, old, new *Compiled) []string {
	var targets []Target
	collect := func(a, b *Compiled) {
		if a == nil {
			return
		}
		for i := range a.rules {
			r := &a.rules[i]
			if b != nil && b.keys[r.key] > 0 && b.keys[r.key] == a.keys[r.key] {
				continue
			}
			for _, ts := range [][]Target{r.srcs, r.dsts} {
				for _, t := range ts {
					if !slices.Contains(targets, t) {
						targets = append(targets, t)
					}
				}
			}
		}
	}
	collect(old, new)
	collect(new, old)
	if slices.Contains(targets, Any()) {
		targets = []Target{Any()}
	}
	seen := d.acquire()
	defer d.release(seen)
	var out []int32
	for _, t := range targets {
		d.eachMember(t, func(s int32) {
			if !seen.testAndSet(s) {
				out = append(out, s)
			}
		})
	}
	return d.ids(out)
}

// Verdict is the decision for one packet, as the UI's dry-run shows it.
type Verdict struct {
	Allowed bool
	// PolicyID and Rule (index in Policy.Rules) name the deciding rule: the
	// first matching Deny, else the first matching Allow, in compiled order.
	// Rule is -1 when no rule matched (deny by default).
	PolicyID string
	Rule     int
}

// Check decides a packet from node src to node dst. proto is the packet's
// protocol: TCP or UDP (with port), ICMP, or ProtoAny standing for any other IP
// protocol (GRE, ESP...). It evaluates the same rules as Peers and Filter.
func (c *Compiled) Check(src, dst NodeAttrs, proto Protocol, port uint16) Verdict {
	v := Verdict{Rule: -1}
	if c == nil {
		return v
	}
	for _, i := range c.matchRules(&src, c.bySrc) {
		r := &c.rules[i]
		if !matchesAny(&dst, r.dsts) || !r.cov.contains(proto, port) {
			continue
		}
		// Denies sort first, so the first match decides.
		return Verdict{Allowed: r.action == ActionAllow, PolicyID: r.policyID, Rule: r.index}
	}
	return v
}
