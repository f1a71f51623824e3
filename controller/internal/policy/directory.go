package policy

import (
	"net/netip"
	"slices"
	"sync"
)

// Directory is the set of nodes of one cvlan, indexed by the attributes rules
// select on (user, group, tag, node id, tracked CIDR prefixes), so that the
// members of a target are found without scanning all nodes. It is updated
// incrementally, one node at a time.
//
// A Directory is not safe for concurrent mutation; the caller serialises writes
// and may run any number of readers (Compiled methods) between them.
type Directory struct {
	slots []dirSlot
	free  []int32
	byID  map[string]int32
	live  int

	users  map[string]slotSet
	groups map[string]slotSet
	tags   map[string]slotSet
	// cidrs holds members of the CIDR targets registered with Track.
	cidrs map[netip.Prefix]slotSet

	pool sync.Pool // of *marks
}

type dirSlot struct {
	attrs NodeAttrs
	live  bool
}

type slotSet map[int32]struct{}

// NewDirectory returns an empty directory.
func NewDirectory() *Directory {
	return &Directory{
		byID:   make(map[string]int32),
		users:  make(map[string]slotSet),
		groups: make(map[string]slotSet),
		tags:   make(map[string]slotSet),
		cidrs:  make(map[netip.Prefix]slotSet),
	}
}

// Len returns the number of nodes.
func (d *Directory) Len() int { return d.live }

// Get returns the attributes stored for a node.
func (d *Directory) Get(id string) (NodeAttrs, bool) {
	s, ok := d.byID[id]
	if !ok {
		return NodeAttrs{}, false
	}
	return d.slots[s].attrs, true
}

// Put inserts or replaces a node. Its cost is proportional to the node's number
// of users, groups, tags and tracked prefixes, not to the number of nodes.
func (d *Directory) Put(a NodeAttrs) {
	s, ok := d.byID[a.ID]
	if ok {
		d.unindex(s)
	} else {
		if n := len(d.free); n > 0 {
			s = d.free[n-1]
			d.free = d.free[:n-1]
		} else {
			s = int32(len(d.slots))
			d.slots = append(d.slots, dirSlot{})
		}
		d.byID[a.ID] = s
		d.live++
	}
	d.slots[s] = dirSlot{attrs: a, live: true}
	d.index(s)
}

// Delete removes a node; it is a no-op for an unknown id.
func (d *Directory) Delete(id string) {
	s, ok := d.byID[id]
	if !ok {
		return
	}
	d.unindex(s)
	delete(d.byID, id)
	d.slots[s] = dirSlot{}
	d.free = append(d.free, s)
	d.live--
}

// Track registers CIDR prefixes whose members are kept indexed. Each newly
// tracked prefix costs one pass over the nodes; this happens only when a policy
// change introduces a prefix no earlier policy used.
func (d *Directory) Track(prefixes []netip.Prefix) {
	for _, p := range prefixes {
		if _, ok := d.cidrs[p]; ok {
			continue
		}
		set := make(slotSet)
		for s := range d.slots {
			if d.slots[s].live && matchesCIDR(&d.slots[s].attrs, p) {
				set[int32(s)] = struct{}{}
			}
		}
		d.cidrs[p] = set
	}
}

// Retain stops tracking every prefix not in keep.
func (d *Directory) Retain(keep []netip.Prefix) {
	for p := range d.cidrs {
		if !slices.Contains(keep, p) {
			delete(d.cidrs, p)
		}
	}
}

func (d *Directory) index(s int32) {
	a := &d.slots[s].attrs
	if a.UserID != "" {
		addTo(d.users, a.UserID, s)
	}
	for _, g := range a.GroupIDs {
		addTo(d.groups, g, s)
	}
	for _, t := range a.Tags {
		addTo(d.tags, t, s)
	}
	for p, set := range d.cidrs {
		if matchesCIDR(a, p) {
			set[s] = struct{}{}
		}
	}
}

func (d *Directory) unindex(s int32) {
	a := &d.slots[s].attrs
	if a.UserID != "" {
		removeFrom(d.users, a.UserID, s)
	}
	for _, g := range a.GroupIDs {
		removeFrom(d.groups, g, s)
	}
	for _, t := range a.Tags {
		removeFrom(d.tags, t, s)
	}
	for _, set := range d.cidrs {
		delete(set, s)
	}
}

func addTo(m map[string]slotSet, k string, s int32) {
	set := m[k]
	if set == nil {
		set = make(slotSet)
		m[k] = set
	}
	set[s] = struct{}{}
}

func removeFrom(m map[string]slotSet, k string, s int32) {
	set := m[k]
	delete(set, s)
	if len(set) == 0 {
		delete(m, k)
	}
}

// eachMember calls fn for every node slot the target selects.
func (d *Directory) eachMember(t Target, fn func(int32)) {
	d.eachMemberWhile(t, func(s int32) bool { fn(s); return true })
}

// eachMemberWhile is eachMember stopping when fn returns false; it reports
// whether it visited every member.
func (d *Directory) eachMemberWhile(t Target, fn func(int32) bool) bool {
	var set slotSet
	switch t.Kind {
	case KindAny:
		for s := range d.slots {
			if d.slots[s].live && !fn(int32(s)) {
				return false
			}
		}
		return true
	case KindNode:
		if s, ok := d.byID[t.ID]; ok {
			return fn(s)
		}
		return true
	case KindUser:
		set = d.users[t.ID]
	case KindGroup:
		set = d.groups[t.ID]
	case KindTag:
		set = d.tags[t.ID]
	case KindCIDR:
		set = d.cidrs[t.Prefix]
	}
	for s := range set {
		if !fn(s) {
			return false
		}
	}
	return true
}

// matches reports whether a node with attributes a is selected by t.
func matches(a *NodeAttrs, t Target) bool {
	switch t.Kind {
	case KindAny:
		return true
	case KindNode:
		return a.ID == t.ID
	case KindUser:
		return a.UserID == t.ID
	case KindGroup:
		return slices.Contains(a.GroupIDs, t.ID)
	case KindTag:
		return slices.Contains(a.Tags, t.ID)
	case KindCIDR:
		return matchesCIDR(a, t.Prefix)
	}
	return false
}

func matchesCIDR(a *NodeAttrs, p netip.Prefix) bool {
	for _, addr := range a.Addresses {
		if p.Contains(addr) {
			return true
		}
	}
	for _, r := range a.Routes {
		if r.Overlaps(p) {
			return true
		}
	}
	return false
}

// marks records which node slots one enumeration has visited. A bitset over
// all slots makes each test O(1); the list of touched slots lets release clear
// only what was set, so an enumeration costs what it visits, not the number of
// nodes. Marks are pooled per Directory because enumerations also run under
// concurrent readers.
type marks struct {
	bits    []uint64
	touched []int32
}

func (d *Directory) acquire() *marks {
	m, _ := d.pool.Get().(*marks)
	if m == nil {
		m = &marks{}
	}
	if need := (len(d.slots) + 63) / 64; len(m.bits) < need {
		m.bits = make([]uint64, need+need/4)
	}
	return m
}

func (d *Directory) release(m *marks) {
	for _, s := range m.touched {
		m.bits[s/64] = 0
	}
	m.touched = m.touched[:0]
	d.pool.Put(m)
}

// testAndSet marks s and reports whether it was already marked.
func (m *marks) testAndSet(s int32) bool {
	w, b := s/64, uint64(1)<<(uint(s)%64)
	if m.bits[w]&b != 0 {
		return true
	}
	m.bits[w] |= b
	m.touched = append(m.touched, s)
	return false
}

func (m *marks) has(s int32) bool { return m.bits[s/64]&(uint64(1)<<(uint(s)%64)) != 0 }
