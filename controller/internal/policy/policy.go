// Package policy holds CloudVLAN's access policy: the rule model, its validation,
// and its compilation into an index that answers, without visiting every pair of
// nodes, which nodes may talk to a node, which packet-filter rules a node enforces,
// and which nodes a change affects.
//
// Semantics, fixed here so that the controller, the UI's dry-run and the agents agree:
//
//   - Deny by default: traffic is allowed only when an Allow rule matches it.
//   - Deny wins: traffic matched by any enabled Deny rule is dropped, whatever Allow
//     rules also match it and whatever their priority. Priority therefore never
//     changes what is allowed; it only orders rules in listings and packet filters
//     (denies first, then ascending priority), which keeps the output deterministic.
//   - Rules are directional (source -> destination) and are enforced at the
//     destination, Tailscale-style: each node gets the inbound rules whose
//     destination matches it.
//   - Two nodes see each other as WireGuard peers when traffic is allowed in at
//     least one direction (the reply path of an allowed flow needs the tunnel).
//   - A node matches a CIDR target when one of its addresses lies in the prefix or
//     one of its approved routes overlaps it (traffic from or to that subnet is
//     carried by the node's tunnel).
//   - Ports apply to TCP and UDP. Protocol Any with ports means TCP and UDP on
//     those ports; Protocol Any without ports means every IP packet.
//
// The package is pure domain code: standard library only.
package policy

import (
	"fmt"
	"net/netip"
)

// Action is what a rule does with the traffic it matches.
type Action uint8

const (
	// ActionAllow permits matching traffic unless a Deny rule also matches it.
	ActionAllow Action = iota + 1
	// ActionDeny drops matching traffic; it takes precedence over every Allow.
	ActionDeny
)

// String returns "allow" or "deny".
func (a Action) String() string {
	switch a {
	case ActionAllow:
		return "allow"
	case ActionDeny:
		return "deny"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// Protocol is the IP protocol a rule matches.
type Protocol uint8

const (
	// ProtoAny matches every IP protocol (or TCP and UDP when ports are given).
	ProtoAny Protocol = iota
	// ProtoTCP matches TCP.
	ProtoTCP
	// ProtoUDP matches UDP.
	ProtoUDP
	// ProtoICMP matches ICMP and ICMPv6; it has no ports.
	ProtoICMP
)

// String returns the protocol's lower-case name.
func (p Protocol) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP:
		return "icmp"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// PortRange is an inclusive range of ports, First <= Last.
type PortRange struct {
	First, Last uint16
}

// String returns "80" or "8000-8080".
func (r PortRange) String() string {
	if r.First == r.Last {
		return fmt.Sprint(r.First)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

// TargetKind says what a Target selects.
type TargetKind uint8

const (
	// KindAny selects every node (as a source or destination prefix: everything).
	KindAny TargetKind = iota + 1
	// KindUser selects the nodes owned by a user.
	KindUser
	// KindGroup selects the nodes in a group, directly or through their user.
	KindGroup
	// KindTag selects the nodes carrying a tag.
	KindTag
	// KindNode selects one node.
	KindNode
	// KindCIDR selects a prefix: nodes whose addresses lie in it or whose approved
	// routes overlap it, and, in packet filters, the prefix itself.
	KindCIDR
)

// String returns the kind's lower-case name.
func (k TargetKind) String() string {
	switch k {
	case KindAny:
		return "any"
	case KindUser:
		return "user"
	case KindGroup:
		return "group"
	case KindTag:
		return "tag"
	case KindNode:
		return "node"
	case KindCIDR:
		return "cidr"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Target is a rule's source or destination. It is comparable and is used as a
// map key by the compiled index. Build it with Any, User, Group, Tag, Node or CIDR.
type Target struct {
	Kind TargetKind
	// ID is the user id, group id, tag name or node id; empty for Any and CIDR.
	ID string
	// Prefix is set for KindCIDR only; it must be masked (10.0.0.0/8, not 10.1.2.3/8).
	Prefix netip.Prefix
}

// Any selects everything.
func Any() Target { return Target{Kind: KindAny} }

// User selects the nodes of the user with this id.
func User(id string) Target { return Target{Kind: KindUser, ID: id} }

// Group selects the nodes in the group with this id.
func Group(id string) Target { return Target{Kind: KindGroup, ID: id} }

// Tag selects the nodes carrying the tag.
func Tag(name string) Target { return Target{Kind: KindTag, ID: name} }

// Node selects the node with this id.
func Node(id string) Target { return Target{Kind: KindNode, ID: id} }

// CIDR selects a prefix.
func CIDR(p netip.Prefix) Target { return Target{Kind: KindCIDR, Prefix: p} }

// String returns "any", "tag:web", "cidr:10.0.0.0/8" and so on.
func (t Target) String() string {
	switch t.Kind {
	case KindAny:
		return "any"
	case KindCIDR:
		return "cidr:" + t.Prefix.String()
	}
	return t.Kind.String() + ":" + t.ID
}

// Rule permits or denies traffic from any of Sources to any of Destinations.
type Rule struct {
	Action       Action
	Sources      []Target
	Destinations []Target
	Protocol     Protocol
	// Ports restricts TCP/UDP destination ports; empty means all ports.
	Ports []PortRange
}

// Policy is a named, ordered set of rules for a tenant, optionally limited to one cvlan.
type Policy struct {
	ID      string
	Enabled bool
	// Priority orders rules in outputs (lower first); see the package doc for why it
	// does not change what is allowed.
	Priority int
	// CvlanID limits the policy to one cvlan; empty applies it to all of the tenant's cvlans.
	CvlanID string
	Rules   []Rule
}

// NodeAttrs are the attributes of a node that rules match on.
// The slices are retained by Directory.Put and must not be modified afterwards.
type NodeAttrs struct {
	ID     string
	UserID string
	// GroupIDs are the groups the node belongs to, directly or through its user.
	GroupIDs  []string
	Tags      []string
	Addresses []netip.Addr
	// Routes are the node's approved subnet routes.
	Routes []netip.Prefix
	// Ref is the caller's own handle for the node, opaque to this package and
	// returned by PeerRefs, so that the caller finds its per-node state without
	// a lookup by id for every peer of a large fan-out.
	Ref any
}

// FilterRule is one inbound packet-filter rule for a node, evaluated at that node
// (the destination). The agent drops a packet that matches any Deny rule, accepts
// it when it matches an Allow rule, and drops it otherwise. Rules are emitted
// denies first, so first-match evaluation gives the same result.
type FilterRule struct {
	Action Action
	// Sources are the prefixes a packet's source address must lie in.
	Sources []netip.Prefix
	// Destinations are this node's addresses and routes the rule covers.
	Destinations []netip.Prefix
	Protocol     Protocol
	// Ports are TCP/UDP destination ports; empty means all. A rule with ports
	// never matches a protocol without ports (ICMP, other).
	Ports []PortRange
}
