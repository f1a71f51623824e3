package netmap

import (
	"net/netip"

	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
)

// NetworkID names one cvlan of one tenant; each is an independent network.
type NetworkID struct {
	Tenant string
	Cvlan  string
}

// NetworkConfig is a network's settings that show in every view.
type NetworkConfig struct {
	// CvlanName is the cvlan's DNS label, the middle part of <node>.<cvlan>.<domain>.
	CvlanName string
	// Domain is the DNS suffix; empty disables DNS records.
	Domain string
}

// Node is the controller's record of a node, as the engine needs it.
type Node struct {
	ID   string
	Name string
	// Key is the node's WireGuard public key (base64).
	Key       string
	Addresses []netip.Addr
	Tags      []string
	UserID    string
	// GroupIDs are the groups the node is in, directly or through its user.
	GroupIDs []string
	// Routes are the node's approved subnet routes.
	Routes    []netip.Prefix
	Endpoints []netip.AddrPort
	HomeRelay string
	Online    bool
}

// Status is what an agent reports about itself; SetStatus applies it.
type Status struct {
	Endpoints []netip.AddrPort
	HomeRelay string
	Online    bool
}

// Self is the node's own part of its view.
type Self struct {
	NodeID    string
	Name      string
	FQDN      string
	Key       string
	Addresses []netip.Addr
	Tags      []string
	Routes    []netip.Prefix
}

// Peer is another node as a node sees it: what its WireGuard configuration needs.
type Peer struct {
	NodeID string
	Name   string
	// FQDN is the peer's mesh name, empty when the network has no DNS domain.
	FQDN      string
	Key       string
	Tags      []string
	Addresses []netip.Addr
	// AllowedIPs are the peer's addresses as host prefixes, then its approved routes.
	AllowedIPs []netip.Prefix
	Endpoints  []netip.AddrPort
	HomeRelay  string
	Online     bool
}

// PeerRef identifies a removed peer. Peers are keyed by NodeID; Key is the
// WireGuard key the receiver had, so it can remove the WireGuard peer directly.
type PeerRef struct {
	NodeID string
	Key    string
}

// DNSRecord maps a fully qualified name to addresses.
type DNSRecord struct {
	FQDN      string
	Addresses []netip.Addr
}

// RelayMap lists the relays nodes may use, by region.
type RelayMap struct {
	Regions []RelayRegion
}

// RelayRegion is a group of meshed relays (fields as in cloudvlan.node.v1.RelayRegion).
type RelayRegion struct {
	ID string
	// Code is the region's short code, e.g. eu-west.
	Code   string
	Name   string
	Relays []Relay
}

// Relay is one relay server (fields as in cloudvlan.node.v1.RelayNode).
type Relay struct {
	ID string
	// Hostname is the relay's TLS server name.
	Hostname string
	// URL is the relay's data path, e.g. https://relay1.example:443/relay.
	URL string
	// STUNAddress is the relay's UDP STUN responder (host:port); empty when none.
	STUNAddress string
}

// View is everything one node is told about its network.
type View struct {
	Self Self
	// Peers are sorted by NodeID.
	Peers        []*Peer
	PacketFilter []policy.FilterRule
	// DNS holds self's and every peer's record, sorted by FQDN.
	DNS      []DNSRecord
	RelayMap *RelayMap
}

// Snapshot is a View at a version. Epoch identifies the engine instance and the
// node's incarnation in it: versions are only comparable within one epoch.
type Snapshot struct {
	Epoch   uint64
	Version uint64
	View    View
}

// Delta turns a node's view at BaseVersion into its view at Version
// (BaseVersion is Version-1 except for deltas built by Merge).
type Delta struct {
	NodeID      string
	Epoch       uint64
	BaseVersion uint64
	Version     uint64
	// Resync means the change was too large to express as a delta for this
	// node: it moved to a new Epoch at Version 1 and needs a Snapshot. Such a
	// delta carries no content and is not kept in the history.
	Resync bool
	// Change is what changed. Nodes affected the same way by one change share one
	// Change value (a join in an all-to-all network costs one Change, not N),
	// which is why it must be treated as read-only.
	*Change
}

// Change is the content of a Delta. Apply order: Self, PeersRemoved then
// PeersUpserted, PacketFilter, DNSRemoved then DNSUpserted, RelayMap
// (View.Apply implements it).
type Change struct {
	// Self is set when the node's own part changed.
	Self *Self
	// PeersUpserted are new or changed peers (replace by NodeID).
	PeersUpserted []*Peer
	PeersRemoved  []PeerRef
	// PacketFilterChanged says PacketFilter replaces the whole filter (it may be empty).
	PacketFilterChanged bool
	PacketFilter        []policy.FilterRule
	DNSUpserted         []DNSRecord
	// DNSRemoved are FQDNs.
	DNSRemoved []string
	// RelayMap is set when the relay map changed.
	RelayMap *RelayMap
}
