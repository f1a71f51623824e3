package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Compiled is the immutable result of compiling a cvlan's policies: the enabled
// rules in a canonical order and an index from each target to the rules that name
// it as a source or a destination. Build it once per policy change with Compile;
// it is safe for concurrent use. A nil *Compiled is valid and allows nothing.
type Compiled struct {
	rules []compiledRule
	bySrc map[Target][]int32
	byDst map[Target][]int32
	cidrs []netip.Prefix
	// keys counts rules by canonical key, to diff two compilations.
	keys map[string]int
}

type compiledRule struct {
	// policyID and index locate the rule's source, for Check; they are not part
	// of key, so moving a rule changes nothing downstream.
	policyID string
	index    int
	key      string
	action   Action
	priority int
	srcs     []Target
	dsts     []Target
	proto    Protocol
	ports    []PortRange
	cov      coverage
}

// Compile validates all policies and compiles the enabled ones that apply to
// cvlanID (CvlanID empty or equal to it). Every validation problem is returned,
// joined; see Validate.
func Compile(policies []Policy, cvlanID string) (*Compiled, error) {
	var errs []error
	seen := make(map[string]bool, len(policies))
	for _, p := range policies {
		if err := Validate(p); err != nil {
			errs = append(errs, err)
		}
		if p.ID != "" && seen[p.ID] {
			errs = append(errs, fmt.Errorf("%w: duplicate id %q", ErrInvalidPolicy, p.ID))
		}
		seen[p.ID] = true
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("compile policies: %w", err)
	}
	c := &Compiled{
		bySrc: make(map[Target][]int32),
		byDst: make(map[Target][]int32),
		keys:  make(map[string]int),
	}
	for _, p := range policies {
		if !p.Enabled || (p.CvlanID != "" && p.CvlanID != cvlanID) {
			continue
		}
		for ri, r := range p.Rules {
			cr := compiledRule{
				policyID: p.ID,
				index:    ri,
				action:   r.Action,
				priority: p.Priority,
				srcs:     canonTargets(r.Sources),
				dsts:     canonTargets(r.Destinations),
				proto:    r.Protocol,
				ports:    normRanges(r.Ports),
			}
			cr.cov = ruleCoverage(cr.proto, cr.ports)
			cr.key = ruleKey(&cr)
			c.rules = append(c.rules, cr)
		}
	}
	// Denies first, then priority, then content: the order of packet-filter
	// output; it does not depend on policy ids or rule positions, so moving a
	// rule between policies without changing it changes nothing downstream.
	slices.SortStableFunc(c.rules, func(a, b compiledRule) int {
		if a.action != b.action {
			if a.action == ActionDeny {
				return -1
			}
			return 1
		}
		return cmp.Or(cmp.Compare(a.priority, b.priority), strings.Compare(a.key, b.key))
	})
	for i := range c.rules {
		r := &c.rules[i]
		c.keys[r.key]++
		for _, t := range r.srcs {
			c.bySrc[t] = append(c.bySrc[t], int32(i))
			c.addCIDR(t)
		}
		for _, t := range r.dsts {
			c.byDst[t] = append(c.byDst[t], int32(i))
			c.addCIDR(t)
		}
	}
	return c, nil
}

func (c *Compiled) addCIDR(t Target) {
	if t.Kind == KindCIDR && !slices.Contains(c.cidrs, t.Prefix) {
		c.cidrs = append(c.cidrs, t.Prefix)
	}
}

// CIDRs returns the distinct CIDR targets; register them with Directory.Track
// before evaluating this compilation against a directory.
func (c *Compiled) CIDRs() []netip.Prefix {
	if c == nil {
		return nil
	}
	return slices.Clone(c.cidrs)
}

// Len returns the number of compiled (enabled, applicable) rules.
func (c *Compiled) Len() int {
	if c == nil {
		return 0
	}
	return len(c.rules)
}

func compareTargets(a, b Target) int {
	return cmp.Or(cmp.Compare(a.Kind, b.Kind), strings.Compare(a.ID, b.ID),
		a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
}

func canonTargets(ts []Target) []Target {
	out := slices.Clone(ts)
	slices.SortFunc(out, compareTargets)
	return slices.Compact(out)
}

func ruleKey(r *compiledRule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d|%v|%v|", r.priority, r.action, r.proto)
	for _, p := range r.ports {
		b.WriteString(p.String())
		b.WriteByte(',')
	}
	for _, ts := range [][]Target{r.srcs, r.dsts} {
		b.WriteByte('|')
		for _, t := range ts {
			fmt.Fprintf(&b, "%q,", t.String())
		}
	}
	return b.String()
}
