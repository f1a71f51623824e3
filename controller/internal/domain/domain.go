package domain

import (
	"encoding/json"
	"net/netip"
	"time"
)

// Meta is embedded in every resource: its identity and optimistic-concurrency version. The store
// sets all four fields; values passed in by callers are ignored except Version on updates, which
// is the version the caller read (0 means an unconditional write).
type Meta struct {
	// ID is a UUID (version 7, so ids sort by creation time).
	ID string `json:"id"`
	// CreateTime is when the resource was created.
	CreateTime time.Time `json:"create_time"`
	// UpdateTime is when the resource was last changed.
	UpdateTime time.Time `json:"update_time"`
	// Version starts at 1 and grows by one on every change; the API derives the etag from it.
	Version int64 `json:"version"`
}

// GetMeta returns m; it lets generic store code reach the embedded Meta of any resource.
func (m *Meta) GetMeta() *Meta { return m }

// TenantStatus is the lifecycle state of a tenant.
type TenantStatus string

// Tenant statuses.
const (
	TenantActive    TenantStatus = "active"
	TenantSuspended TenantStatus = "suspended"
)

// Tenant is an isolated customer: every other resource belongs to exactly one tenant.
type Tenant struct {
	Meta
	// Name is unique across the deployment (DNS label).
	Name        string       `json:"name"`
	Description string       `json:"description,omitempty"`
	DisplayName string       `json:"display_name,omitempty"`
	Status      TenantStatus `json:"status"`
	// MaxNodes caps the tenant's nodes; 0 means unlimited (proto: capacity.limit).
	MaxNodes int32          `json:"max_nodes,omitempty"`
	Settings TenantSettings `json:"settings"`
}

// TenantSettings are a tenant's behavioural options.
type TenantSettings struct {
	DNSDomain            string `json:"dns_domain,omitempty"`
	QuarantineOnConflict bool   `json:"quarantine_on_conflict,omitempty"`
	// EphemeralOfflineTimeout is how long an ephemeral node may stay offline before deletion.
	EphemeralOfflineTimeout time.Duration `json:"ephemeral_offline_timeout,omitempty"`
	// NodeCertificateTTL is the validity of node certificates; 0 means the controller default.
	NodeCertificateTTL time.Duration `json:"node_certificate_ttl,omitempty"`
	// MaxCvlans caps the tenant's cvlans; 0 means unlimited.
	MaxCvlans int32 `json:"max_cvlans,omitempty"`
}

// Cvlan is an overlay network of a tenant: its address pools and DNS.
type Cvlan struct {
	Meta
	TenantID string `json:"tenant_id"`
	// Name is unique in the tenant (DNS label).
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// IPv4CIDR defaults to 100.64.0.0/10 on create. Immutable.
	IPv4CIDR netip.Prefix `json:"ipv4_cidr"`
	// IPv6CIDR is a ULA prefix, generated (a random /48) when empty on create. Immutable.
	IPv6CIDR       netip.Prefix    `json:"ipv6_cidr"`
	DNSDomain      string          `json:"dns_domain,omitempty"`
	DNSNameservers []netip.Addr    `json:"dns_nameservers,omitempty"`
	SplitDNS       []SplitDNSRoute `json:"split_dns,omitempty"`
}

// SplitDNSRoute sends queries for one domain to specific nameservers.
type SplitDNSRoute struct {
	Domain      string       `json:"domain"`
	Nameservers []netip.Addr `json:"nameservers"`
}

// NodeKind says what a node is.
type NodeKind string

// Node kinds.
const (
	NodeKindNode       NodeKind = "node"
	NodeKindRelay      NodeKind = "relay"
	NodeKindVRouter    NodeKind = "vrouter"
	NodeKindStaticPeer NodeKind = "static_peer"
)

// NodeStatus is a node's connection state.
type NodeStatus string

// Node statuses.
const (
	NodePending     NodeStatus = "pending"
	NodeOnline      NodeStatus = "online"
	NodeOffline     NodeStatus = "offline"
	NodeQuarantined NodeStatus = "quarantined"
)

// SyncState says whether a node has applied the latest network map.
type SyncState string

// Sync states.
const (
	SyncInSync  SyncState = "in_sync"
	SyncPending SyncState = "pending"
	SyncFailed  SyncState = "failed"
)

// Node is a WireGuard identity in a cvlan's mesh: an agent, a relay, a vrouter or a static peer.
// The node of a shared relay has no tenant (and no cvlan).
type Node struct {
	Meta
	TenantID string `json:"tenant_id,omitempty"`
	// CvlanID is the cvlan the node belongs to; required and immutable.
	CvlanID string `json:"cvlan_id"`
	// Name is unique in the cvlan (DNS label).
	Name               string   `json:"name"`
	Description        string   `json:"description,omitempty"`
	Hostname           string   `json:"hostname,omitempty"`
	Kind               NodeKind `json:"kind"`
	WireGuardPublicKey string   `json:"wireguard_public_key"`
	// IPv4Address and IPv6Address are allocated by the store on create (unless IPv4Address is set,
	// which reserves that address) and never change afterwards.
	IPv4Address      netip.Addr     `json:"ipv4_address"`
	IPv6Address      netip.Addr     `json:"ipv6_address"`
	Tags             []string       `json:"tags,omitempty"`
	OS               string         `json:"os,omitempty"`
	AgentVersion     string         `json:"agent_version,omitempty"`
	Status           NodeStatus     `json:"status"`
	Sync             NodeSync       `json:"sync"`
	Endpoints        []NodeEndpoint `json:"endpoints,omitempty"`
	Routes           []NodeRoute    `json:"routes,omitempty"`
	PeerPaths        []NodePeerPath `json:"peer_paths,omitempty"`
	HomeRelayID      string         `json:"home_relay_id,omitempty"`
	Ephemeral        bool           `json:"ephemeral,omitempty"`
	UserID           string         `json:"user_id,omitempty"`
	LastSeenTime     time.Time      `json:"last_seen_time,omitzero"`
	CertSerial       string         `json:"cert_serial,omitempty"`
	CertExpireTime   time.Time      `json:"cert_expire_time,omitzero"`
	QuarantineReason string         `json:"quarantine_reason,omitempty"`
	QuarantineTime   time.Time      `json:"quarantine_time,omitzero"`
	// LinkedResourceID is the Relay or VRouter a RELAY or VROUTER node is.
	LinkedResourceID string `json:"linked_resource_id,omitempty"`
	JoinTokenID      string `json:"join_token_id,omitempty"`
	// Conflict is the latest session conflict (one identity streaming from two places at once);
	// nil when none was seen. Active is cleared when the competing streams are down to one.
	Conflict *NodeConflict `json:"conflict,omitempty"`
}

// NodeConflict records one node identity streaming from two places at once.
type NodeConflict struct {
	DetectTime  time.Time `json:"detect_time"`
	Addresses   []string  `json:"addresses,omitempty"`
	Active      bool      `json:"active,omitempty"`
	Quarantined bool      `json:"quarantined,omitempty"`
}

// NodeSync is the network-map version a node should have and the one it confirmed.
type NodeSync struct {
	State          SyncState `json:"state,omitempty"`
	DesiredVersion uint64    `json:"desired_version,omitempty"`
	AppliedVersion uint64    `json:"applied_version,omitempty"`
	AppliedHash    string    `json:"applied_hash,omitempty"`
	Error          string    `json:"error,omitempty"`
	ApplyTime      time.Time `json:"apply_time,omitzero"`
}

// EndpointType says how an endpoint was learned.
type EndpointType string

// Endpoint types.
const (
	EndpointLocal  EndpointType = "local"
	EndpointSTUN   EndpointType = "stun"
	EndpointPublic EndpointType = "public"
)

// NodeEndpoint is an address a node can be reached at.
type NodeEndpoint struct {
	Address     netip.AddrPort `json:"address"`
	Type        EndpointType   `json:"type,omitempty"`
	ObserveTime time.Time      `json:"observe_time,omitzero"`
}

// NodeRoute is a subnet route: advertised by the node, approved by an admin; only routes that are
// both reach peers.
type NodeRoute struct {
	CIDR       netip.Prefix `json:"cidr"`
	Advertised bool         `json:"advertised,omitempty"`
	Approved   bool         `json:"approved,omitempty"`
}

// PathType says how a node reaches a peer.
type PathType string

// Path types.
const (
	PathDirect  PathType = "direct"
	PathRelayed PathType = "relayed"
)

// NodePeerPath is how a node last reported reaching one peer.
type NodePeerPath struct {
	PeerNodeID        string        `json:"peer_node_id"`
	Path              PathType      `json:"path,omitempty"`
	RelayID           string        `json:"relay_id,omitempty"`
	Endpoint          string        `json:"endpoint,omitempty"`
	Latency           time.Duration `json:"latency,omitempty"`
	LastHandshakeTime time.Time     `json:"last_handshake_time,omitzero"`
	ReportTime        time.Time     `json:"report_time,omitzero"`
}

// Role is a user's or API key's authorisation level.
type Role string

// Roles, from most to least privileged.
const (
	RoleSuperAdmin  Role = "super_admin"
	RoleTenantAdmin Role = "tenant_admin"
	RoleOperator    Role = "operator"
	RoleViewer      Role = "viewer"
)

// UserStatus is a user's lifecycle state.
type UserStatus string

// User statuses.
const (
	UserActive   UserStatus = "active"
	UserDisabled UserStatus = "disabled"
)

// User is a person who logs in to the UI (OIDC) and may own nodes.
type User struct {
	Meta
	TenantID string `json:"tenant_id"`
	// Name is a short name, unique in the tenant (DNS label).
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Email is unique in the tenant.
	Email       string     `json:"email"`
	DisplayName string     `json:"display_name,omitempty"`
	Role        Role       `json:"role"`
	Status      UserStatus `json:"status"`
	// OIDCIssuer and OIDCSubject identify the user at the IdP; the pair is unique across tenants
	// (empty for users who have not logged in yet).
	OIDCIssuer    string    `json:"oidc_issuer,omitempty"`
	OIDCSubject   string    `json:"oidc_subject,omitempty"`
	LastLoginTime time.Time `json:"last_login_time,omitzero"`
}

// Group is a named set of users and nodes, optionally fed by IdP group names.
type Group struct {
	Meta
	TenantID      string        `json:"tenant_id"`
	Name          string        `json:"name"`
	Description   string        `json:"description,omitempty"`
	Members       []GroupMember `json:"members,omitempty"`
	IdPGroupNames []string      `json:"idp_group_names,omitempty"`
}

// GroupMember is one member of a group: exactly one of UserID and NodeID is set.
type GroupMember struct {
	UserID string `json:"user_id,omitempty"`
	NodeID string `json:"node_id,omitempty"`
}

// Tag is a label nodes carry and policies match. Its name is immutable.
type Tag struct {
	Meta
	TenantID    string `json:"tenant_id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// OwnerGroupIDs are groups whose members may apply the tag besides admins and operators.
	OwnerGroupIDs []string `json:"owner_group_ids,omitempty"`
}

// Policy is an ordered list of rules (deny by default), optionally limited to one cvlan. Rules
// are stored as JSON.
type Policy struct {
	Meta
	TenantID    string `json:"tenant_id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// CvlanID limits the policy to one cvlan; empty means every cvlan of the tenant.
	CvlanID string `json:"cvlan_id,omitempty"`
	Enabled bool   `json:"enabled"`
	// Priority orders the policy's rules in compiled output (lower first); deny still wins.
	Priority int32        `json:"priority,omitempty"`
	Rules    []PolicyRule `json:"rules,omitempty"`
}

// PolicyAction is what a rule does with matching traffic.
type PolicyAction string

// Policy actions.
const (
	ActionAllow PolicyAction = "allow"
	ActionDeny  PolicyAction = "deny"
)

// Protocol is an IP protocol matched by rules.
type Protocol string

// Protocols.
const (
	ProtocolAny  Protocol = "any"
	ProtocolTCP  Protocol = "tcp"
	ProtocolUDP  Protocol = "udp"
	ProtocolICMP Protocol = "icmp"
)

// PolicyRule matches traffic from sources to destinations on a protocol and ports.
type PolicyRule struct {
	Name         string         `json:"name,omitempty"`
	Description  string         `json:"description,omitempty"`
	Action       PolicyAction   `json:"action"`
	Sources      []PolicyTarget `json:"sources"`
	Destinations []PolicyTarget `json:"destinations"`
	Protocol     Protocol       `json:"protocol,omitempty"`
	Ports        []PortRange    `json:"ports,omitempty"`
}

// PolicyTarget selects nodes or addresses: exactly one field is set.
type PolicyTarget struct {
	Any     bool         `json:"any,omitempty"`
	UserID  string       `json:"user_id,omitempty"`
	GroupID string       `json:"group_id,omitempty"`
	Tag     string       `json:"tag,omitempty"`
	NodeID  string       `json:"node_id,omitempty"`
	CIDR    netip.Prefix `json:"cidr,omitzero"`
}

// PortRange is an inclusive port range; Last 0 means the single port First.
type PortRange struct {
	First uint32 `json:"first"`
	Last  uint32 `json:"last,omitempty"`
}

// Region groups relays by location; nodes pick a home relay from the nearest region. Regions
// are global: every tenant sees them, only the all-tenants scope changes them.
type Region struct {
	Meta
	// Name is unique (DNS label), e.g. "frankfurt".
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Code is a short unique code, e.g. "eu-west"; immutable.
	Code string `json:"code"`
}

// RelayStatus is a relay's connection state.
type RelayStatus string

// Relay statuses.
const (
	RelayPending RelayStatus = "pending"
	RelayOnline  RelayStatus = "online"
	RelayOffline RelayStatus = "offline"
)

// Relay is a cvlan-relay server that forwards WireGuard ciphertext for nodes. A relay without a
// tenant is shared: run by the operator, readable by every tenant, changed only in the
// all-tenants scope.
type Relay struct {
	Meta
	// TenantID is empty for a shared relay.
	TenantID    string `json:"tenant_id,omitempty"`
	RegionID    string `json:"region_id,omitempty"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Hostname    string `json:"hostname,omitempty"`
	// Addresses are host:port strings the relay is reached at (TLS).
	Addresses   []string    `json:"addresses,omitempty"`
	STUNAddress string      `json:"stun_address,omitempty"`
	Status      RelayStatus `json:"status,omitempty"`
	Stats       RelayStats  `json:"stats"`
	// SoftwareVersion is the relay's reported version (proto: version).
	SoftwareVersion string    `json:"software_version,omitempty"`
	LastSeenTime    time.Time `json:"last_seen_time,omitzero"`
	CertExpireTime  time.Time `json:"cert_expire_time,omitzero"`
	// NodeID is the Node identity the relay enrolled as.
	NodeID string `json:"node_id,omitempty"`
}

// SetStatusFrom copies the runtime status of from onto r: status, last seen, stats and software
// version. The configuration of r (including its reported addresses) is left alone.
func (r *Relay) SetStatusFrom(from *Relay) {
	r.Status, r.LastSeenTime, r.Stats, r.SoftwareVersion = from.Status, from.LastSeenTime, from.Stats, from.SoftwareVersion
}

// RelayStats are a relay's last reported counters.
type RelayStats struct {
	ConnectedClients int32  `json:"connected_clients,omitempty"`
	BytesForwarded   uint64 `json:"bytes_forwarded,omitempty"`
	PacketsForwarded uint64 `json:"packets_forwarded,omitempty"`
	// Drops counts dropped packets by reason ("queue_full", "unknown_dest", ...).
	Drops      map[string]uint64 `json:"drops,omitempty"`
	MeshPeers  int32             `json:"mesh_peers,omitempty"`
	UpdateTime time.Time         `json:"update_time,omitzero"`
}

// VRouterStatus is a vrouter's state.
type VRouterStatus string

// VRouter statuses.
const (
	VRouterPending  VRouterStatus = "pending"
	VRouterOnline   VRouterStatus = "online"
	VRouterDegraded VRouterStatus = "degraded"
	VRouterOffline  VRouterStatus = "offline"
)

// VRouter is an IPsec concentrator that bridges legacy devices into the mesh.
type VRouter struct {
	Meta
	TenantID      string              `json:"tenant_id"`
	RegionID      string              `json:"region_id,omitempty"`
	CvlanID       string              `json:"cvlan_id,omitempty"`
	Name          string              `json:"name"`
	Description   string              `json:"description,omitempty"`
	Status        VRouterStatus       `json:"status,omitempty"`
	PublicAddress string              `json:"public_address,omitempty"`
	Stats         VRouterStats        `json:"stats"`
	Connections   []VRouterConnection `json:"connections,omitempty"`
	NodeID        string              `json:"node_id,omitempty"`
	// SoftwareVersion is the vrouter's reported version (proto: version).
	SoftwareVersion string    `json:"software_version,omitempty"`
	LastSeenTime    time.Time `json:"last_seen_time,omitzero"`
}

// SetStatusFrom copies the runtime status of from onto v: status, last seen, stats, software
// version, and each connection's status, last change time and error (connections matched by
// name; v's other connections keep theirs). The configuration of v is left alone.
func (v *VRouter) SetStatusFrom(from *VRouter) {
	v.Status, v.LastSeenTime, v.Stats, v.SoftwareVersion = from.Status, from.LastSeenTime, from.Stats, from.SoftwareVersion
	byName := make(map[string]*VRouterConnection, len(from.Connections))
	for i := range from.Connections {
		byName[from.Connections[i].Name] = &from.Connections[i]
	}
	for i := range v.Connections {
		if c, ok := byName[v.Connections[i].Name]; ok {
			v.Connections[i].Status, v.Connections[i].LastChangeTime, v.Connections[i].Error = c.Status, c.LastChangeTime, c.Error
		}
	}
}

// VRouterStats are a vrouter's last reported counters.
type VRouterStats struct {
	ConnectionsTotal int32     `json:"connections_total,omitempty"`
	ConnectionsUp    int32     `json:"connections_up,omitempty"`
	BytesIn          uint64    `json:"bytes_in,omitempty"`
	BytesOut         uint64    `json:"bytes_out,omitempty"`
	PacketsIn        uint64    `json:"packets_in,omitempty"`
	PacketsOut       uint64    `json:"packets_out,omitempty"`
	UpdateTime       time.Time `json:"update_time,omitzero"`
}

// VRouterConnection is one IPsec peer of a vrouter.
type VRouterConnection struct {
	Name          string         `json:"name"`
	RemoteAddress string         `json:"remote_address"`
	LocalSubnets  []netip.Prefix `json:"local_subnets,omitempty"`
	RemoteSubnets []netip.Prefix `json:"remote_subnets,omitempty"`
	// IKEVersion is "ikev1" or "ikev2".
	IKEVersion string `json:"ike_version,omitempty"`
	// PreSharedKey is the IPsec secret the vrouter needs; the API never returns it (it reports
	// only whether it is set).
	PreSharedKey   string    `json:"pre_shared_key,omitempty"`
	RemoteID       string    `json:"remote_id,omitempty"`
	IKEProposal    string    `json:"ike_proposal,omitempty"`
	ESPProposal    string    `json:"esp_proposal,omitempty"`
	Status         string    `json:"status,omitempty"`
	LastChangeTime time.Time `json:"last_change_time,omitzero"`
	Error          string    `json:"error,omitempty"`
}

// DiscoveryServer is a STUN/TURN server offered to agents for endpoint discovery.
type DiscoveryServer struct {
	Meta
	TenantID    string `json:"tenant_id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	Address     string `json:"address"`
	// Type is "stun" or "turn".
	Type     string `json:"type"`
	RegionID string `json:"region_id,omitempty"`
	Enabled  bool   `json:"enabled"`
	Username string `json:"username,omitempty"`
	// Credential is the TURN secret; the API never returns it.
	Credential string `json:"credential,omitempty"`
}

// APIKey is a credential for scripts. Only a hash of the secret is stored.
type APIKey struct {
	Meta
	TenantID    string `json:"tenant_id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	// Prefix is the visible start of the key ("cvk_xxxx"), for recognising it in lists.
	Prefix string `json:"prefix"`
	// Hash is the hash of the secret (the API layer chooses the function); unique, used for lookup.
	Hash         []byte    `json:"hash"`
	Role         Role      `json:"role"`
	Scopes       []string  `json:"scopes,omitempty"`
	ExpireTime   time.Time `json:"expire_time,omitzero"`
	Revoked      bool      `json:"revoked,omitempty"`
	RevokeTime   time.Time `json:"revoke_time,omitzero"`
	LastUsedTime time.Time `json:"last_used_time,omitzero"`
	// CreatedBy is the actor id that created the key.
	CreatedBy string `json:"created_by,omitempty"`
}

// JoinToken lets a node, relay or vrouter enroll. Only a hash of the secret is stored. A token
// without a tenant (created in the all-tenants scope) enrolls a shared relay.
type JoinToken struct {
	Meta
	TenantID    string   `json:"tenant_id,omitempty"`
	Name        string   `json:"name,omitempty"`
	Description string   `json:"description,omitempty"`
	Prefix      string   `json:"prefix"`
	Hash        []byte   `json:"hash"`
	Kind        NodeKind `json:"kind"`
	// TargetID is the Relay or VRouter the token enrolls (for kinds relay and vrouter).
	TargetID string `json:"target_id,omitempty"`
	CvlanID  string `json:"cvlan_id,omitempty"`
	Reusable bool   `json:"reusable,omitempty"`
	// MaxUses caps uses of a reusable token; 0 means unlimited. A non-reusable token has one use.
	MaxUses      int32     `json:"max_uses,omitempty"`
	UseCount     int32     `json:"use_count"`
	Ephemeral    bool      `json:"ephemeral,omitempty"`
	Tags         []string  `json:"tags,omitempty"`
	ExpireTime   time.Time `json:"expire_time"`
	Revoked      bool      `json:"revoked,omitempty"`
	RevokeTime   time.Time `json:"revoke_time,omitzero"`
	LastUsedTime time.Time `json:"last_used_time,omitzero"`
	CreatedBy    string    `json:"created_by,omitempty"`
}

// UsesLeft reports whether the token can be used once more (ignoring expiry and revocation).
func (j *JoinToken) UsesLeft() bool {
	if !j.Reusable {
		return j.UseCount < 1
	}
	return j.MaxUses == 0 || j.UseCount < j.MaxUses
}

// Session is a UI login session. Only a hash of the session secret is stored.
type Session struct {
	Meta
	TenantID    string    `json:"tenant_id"`
	UserID      string    `json:"user_id"`
	Hash        []byte    `json:"hash"`
	ExpireTime  time.Time `json:"expire_time"`
	UserAgent   string    `json:"user_agent,omitempty"`
	PeerAddress string    `json:"peer_address,omitempty"`
}

// ActorType says who performed an audited action.
type ActorType string

// Actor types.
const (
	ActorUser   ActorType = "user"
	ActorAPIKey ActorType = "api_key"
	ActorNode   ActorType = "node"
	ActorSystem ActorType = "system"
)

// AuditEntry records one mutation: who, what, and the resource before and after.
type AuditEntry struct {
	// ID is a UUID (version 7); entries list newest first by default.
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	TenantID  string    `json:"tenant_id,omitempty"`
	ActorType ActorType `json:"actor_type"`
	ActorID   string    `json:"actor_id,omitempty"`
	ActorName string    `json:"actor_name,omitempty"`
	// Action is the RPC or operation name, e.g. "CreateNode".
	Action       string `json:"action"`
	ResourceType string `json:"resource_type"`
	ResourceID   string `json:"resource_id,omitempty"`
	// Before and After are JSON snapshots of the resource (nil when absent).
	Before      json.RawMessage `json:"before,omitempty"`
	After       json.RawMessage `json:"after,omitempty"`
	RequestID   string          `json:"request_id,omitempty"`
	PeerAddress string          `json:"peer_address,omitempty"`
}

// Resource type names used by audit entries and change events.
const (
	ResourceTenant          = "tenant"
	ResourceCvlan           = "cvlan"
	ResourceNode            = "node"
	ResourceUser            = "user"
	ResourceGroup           = "group"
	ResourcePolicy          = "policy"
	ResourceVRouter         = "vrouter"
	ResourceRegion          = "region"
	ResourceRelay           = "relay"
	ResourceAPIKey          = "api_key"
	ResourceTag             = "tag"
	ResourceDiscoveryServer = "discovery_server"
	ResourceJoinToken       = "join_token"
	ResourceSession         = "session"
	// ResourceNodeStatus marks change events of a node's runtime status (online, sync state,
	// reports): the node's network maps are unaffected, so map loaders skip them; the API shows
	// them as node updates.
	ResourceNodeStatus = "node_status"
	// ResourceVRouterStatus marks change events of a vrouter's runtime status (connection
	// states, reports): its configuration and version are unchanged, so vrouter and relay config
	// streams skip them; the API shows them as vrouter updates.
	ResourceVRouterStatus = "vrouter_status"
	// ResourceRelayStatus marks change events of a relay's runtime status (online/offline,
	// reports with unchanged addresses): relay maps and relay config streams are unaffected, so
	// map loaders and config streams skip them; the API shows them as relay updates.
	ResourceRelayStatus = "relay_status"
)

// ChangeOp says what happened to a resource.
type ChangeOp string

// Change operations.
const (
	OpCreate ChangeOp = "create"
	OpUpdate ChangeOp = "update"
	OpDelete ChangeOp = "delete"
)

// ChangeEvent is one committed change that may affect network maps (TenantID empty: a global
// resource such as a region or a shared relay, which may affect every tenant). IDs grow monotonically in
// commit order, so a reader that remembers the last ID it processed misses nothing.
type ChangeEvent struct {
	ID           int64     `json:"id"`
	Time         time.Time `json:"time"`
	TenantID     string    `json:"tenant_id"`
	ResourceType string    `json:"resource_type"`
	ResourceID   string    `json:"resource_id"`
	Op           ChangeOp  `json:"op"`
	// Version is the resource's version after the change (0 for deletes).
	Version int64 `json:"version,omitempty"`
}
