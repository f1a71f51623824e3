// Package store defines the controller's persistence contract: transactions scoped to a tenant,
// resource CRUD with keyset pagination and optimistic concurrency, audit rows that commit with
// their mutation, IPAM on node creation, join-token consumption and the change feed (network
// maps and the API's WatchEvents follow it).
//
// Two implementations (store/sqlite and store/postgres) pass one conformance suite
// (store/storetest). Errors wrap the sentinels of package domain.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// Scope says which tenants a transaction may see. Build it with TenantScope or AllTenants.
type Scope struct {
	// TenantID limits the transaction to one tenant's rows.
	TenantID string
	// All lets the transaction see every tenant (super_admin and system work: enrollment,
	// authentication lookups, the change feed). TenantID must then be empty.
	All bool
}

// TenantScope returns a scope limited to one tenant.
func TenantScope(tenantID string) Scope { return Scope{TenantID: tenantID} }

// AllTenants returns the scope that sees every tenant.
func AllTenants() Scope { return Scope{All: true} }

// Validate reports a scope that names no tenant, or both a tenant and all tenants.
func (s Scope) Validate() error {
	switch {
	case s.All && s.TenantID != "":
		return fmt.Errorf("%w: scope names a tenant and all tenants", domain.ErrInvalid)
	case !s.All && s.TenantID == "":
		return fmt.Errorf("%w: scope names no tenant", domain.ErrInvalid)
	}
	return nil
}

// Store is a controller database.
type Store interface {
	// Tx runs fn in a read-write transaction that sees only scope's rows. It commits when fn
	// returns nil and rolls back otherwise (also on panic). Tx never retries fn. Do not call Tx or
	// ReadTx from inside fn (on SQLite the single writer would deadlock).
	Tx(ctx context.Context, scope Scope, fn func(Tx) error) error
	// ReadTx runs fn in a read-only transaction (on SQLite concurrent with the writer).
	// Mutations inside fn fail.
	ReadTx(ctx context.Context, scope Scope, fn func(Tx) error) error
	// ChangesSince returns up to limit change events with ID > afterID, in ID order, across all
	// tenants. IDs are assigned in commit order, so a reader never skips a change.
	ChangesSince(ctx context.Context, afterID int64, limit int) ([]domain.ChangeEvent, error)
	// LatestChangeID returns the id of the newest change event (0 when the feed is empty): a
	// reader that loaded the current state after calling it follows the feed from there.
	LatestChangeID(ctx context.Context) (int64, error)
	// PruneChanges deletes change events older than before (the feed is a replication log,
	// not history: the audit log is) and returns how many.
	PruneChanges(ctx context.Context, before time.Time) (int64, error)
	// Watch returns a channel that receives a value (coalesced, never blocking the store) after
	// changes were committed by this or, on PostgreSQL, any process, and also after the
	// notification connection was re-established (changes may have been missed: read again).
	// The channel is closed when ctx is done. Readers call ChangesSince on every wake-up.
	Watch(ctx context.Context) (<-chan struct{}, error)
	// SyncMapStreams records one replica's stream changes in the stream registry (ADR 009), in one
	// transaction serialised with every other replica's: it marks s.ReplicaID alive at s.Now,
	// deletes the replicas last seen before s.StaleBefore with their streams, and hole punches
	// queued before it, deletes the streams s.Closed (ids), inserts s.Opened, and returns, keyed by
	// opened stream id, the streams of the same node with another session id that other live
	// replicas hold. Of two replicas registering streams of one node at once, exactly one sees
	// the other's.
	SyncMapStreams(ctx context.Context, s StreamSync) (*StreamSyncResult, error)
	// MapStreams returns the registered streams of a node held by replicas seen at or after
	// liveAfter.
	MapStreams(ctx context.Context, nodeID string, liveAfter time.Time) ([]MapStream, error)
	// DropReplica deletes a replica's registration, streams and undelivered hole punches (clean
	// shutdown).
	DropReplica(ctx context.Context, replicaID string) error
	// PostHolePunches queues hole punches for the replicas they name and wakes Watch (on
	// PostgreSQL in every process).
	PostHolePunches(ctx context.Context, hps []HolePunchPost) error
	// TakeHolePunches deletes and returns the hole punches queued for a replica, oldest first.
	TakeHolePunches(ctx context.Context, replicaID string) ([]HolePunchPost, error)
	// Close releases the database; the store is unusable afterwards.
	Close() error
}

// MapStream is one open network-map stream in the stream registry.
type MapStream struct {
	// ID is unique per stream (the replica chooses it).
	ID        string
	ReplicaID string
	NodeID    string
	SessionID string
	// Addr is the agent's remote host:port.
	Addr     string
	OpenTime time.Time
}

// StreamSync is one replica's registry write (SyncMapStreams).
type StreamSync struct {
	ReplicaID string
	Now       time.Time
	// StaleBefore: replicas last seen before it are dead.
	StaleBefore time.Time
	Opened      []MapStream
	// Closed are stream ids of this replica.
	Closed []string
}

// StreamSyncResult is what SyncMapStreams reports.
type StreamSyncResult struct {
	// Conflicts are, keyed by opened stream id, the other live replicas' streams of its node
	// under another session id.
	Conflicts map[string][]MapStream
	// Joined says that the replica was not registered: its first sync, or it had been expired as
	// dead (a stall longer than the stale time) and its streams deleted, which it must register
	// again.
	Joined bool
}

// HolePunchPost is a hole punch addressed to the replica holding the peer's stream: NodeID is the
// peer that should punch, FromNodeID the node asking (and WGKey its WireGuard public key).
type HolePunchPost struct {
	ReplicaID  string
	NodeID     string
	FromNodeID string
	WGKey      []byte
	CreateTime time.Time
}

// ListOptions are the paging options every List method takes.
type ListOptions struct {
	// PageSize is the maximum number of items; 0 means DefaultPageSize, above MaxPageSize is
	// clamped.
	PageSize int
	// PageToken is the NextPageToken of the previous page (same filters); empty for the first.
	PageToken string
	// WithTotal also counts every row matching the filters (Page.TotalSize); it costs a second
	// query.
	WithTotal bool
}

// Paging limits.
const (
	DefaultPageSize = 50
	MaxPageSize     = 1000
)

// Page is one page of a List result.
type Page[T any] struct {
	Items []*T
	// NextPageToken is empty on the last page.
	NextPageToken string
	// TotalSize is the number of rows matching the filters (only with ListOptions.WithTotal).
	TotalSize int
}

// TenantFilter filters ListTenants; zero fields match everything. Tenants list by name.
type TenantFilter struct {
	Status     domain.TenantStatus
	NamePrefix string
}

// CvlanFilter filters ListCvlans. Cvlans list by name.
type CvlanFilter struct {
	NamePrefix string
}

// NodeFilter filters ListNodes; fields combine with AND. Nodes list by name.
type NodeFilter struct {
	CvlanID    string
	Tag        string
	Status     domain.NodeStatus
	SyncState  domain.SyncState
	NamePrefix string
	Kind       domain.NodeKind
	UserID     string
	// PendingRouteApproval selects nodes advertising a route that is not approved.
	PendingRouteApproval bool
	WireGuardPublicKey   string
	// Ephemeral, when set, selects ephemeral (true) or permanent (false) nodes.
	Ephemeral *bool
	// LastSeenBefore selects nodes last seen before this time (offline sweeps).
	LastSeenBefore time.Time
}

// UserFilter filters ListUsers. Users list by name.
type UserFilter struct {
	Role        domain.Role
	Status      domain.UserStatus
	EmailPrefix string
	NamePrefix  string
	// GroupID selects the users that are members of this group.
	GroupID string
}

// GroupFilter filters ListGroups. Groups list by name.
type GroupFilter struct {
	NamePrefix string
	// UserID and NodeID select the groups having that member.
	UserID string
	NodeID string
	// IdPGroupName selects the groups fed by this IdP group.
	IdPGroupName string
}

// TagFilter filters ListTags. Tags list by name.
type TagFilter struct {
	NamePrefix string
	// OwnerGroupID selects the tags that group owns.
	OwnerGroupID string
}

// PolicyFilter filters ListPolicies. Policies list by name.
type PolicyFilter struct {
	// CvlanID selects policies of that cvlan (policies for every cvlan are not included).
	CvlanID string
	// Enabled, when set, selects enabled (true) or disabled (false) policies.
	Enabled    *bool
	NamePrefix string
}

// RegionFilter filters ListRegions. Regions list by name.
type RegionFilter struct {
	NamePrefix string
	Code       string
}

// RelayFilter filters ListRelays. Relays list by name; a tenant scope lists its own relays and
// the shared ones.
type RelayFilter struct {
	RegionID   string
	NamePrefix string
	// SharedOnly selects the shared relays (no tenant); OwnOnly the tenant's own relays.
	SharedOnly bool
	OwnOnly    bool
	Status     domain.RelayStatus
}

// VRouterFilter filters ListVRouters. VRouters list by name.
type VRouterFilter struct {
	CvlanID    string
	NamePrefix string
	Status     domain.VRouterStatus
}

// DiscoveryServerFilter filters ListDiscoveryServers. They list by name.
type DiscoveryServerFilter struct {
	RegionID string
	// Type is "stun" or "turn".
	Type       string
	NamePrefix string
}

// CredentialStatus is the state of an API key or join token at a given instant, in order of
// precedence: revoked, used (join tokens without uses left), expired (expiry at or before now;
// no expiry never expires), active.
type CredentialStatus string

// Credential statuses.
const (
	CredentialActive  CredentialStatus = "active"
	CredentialExpired CredentialStatus = "expired"
	CredentialRevoked CredentialStatus = "revoked"
	CredentialUsed    CredentialStatus = "used"
)

// APIKeyFilter filters ListAPIKeys. Keys list by name.
type APIKeyFilter struct {
	NamePrefix string
	// IncludeRevoked also lists revoked keys (ignored when Status is set).
	IncludeRevoked bool
	// Status selects keys in that state at Now (expiry is compared with the stored time at the
	// database's precision: microseconds on PostgreSQL, milliseconds on SQLite).
	Status    CredentialStatus
	Now       time.Time
	CreatedBy string
}

// JoinTokenFilter filters ListJoinTokens. Tokens list by creation (id).
type JoinTokenFilter struct {
	Kind    domain.NodeKind
	CvlanID string
	// IncludeRevoked also lists revoked tokens (ignored when Status is set).
	IncludeRevoked bool
	// Status selects tokens in that state at Now (see APIKeyFilter.Status).
	Status   CredentialStatus
	Now      time.Time
	TargetID string
}

// SessionFilter filters ListSessions. Sessions list by creation (id).
type SessionFilter struct {
	UserID string
}

// AuditFilter filters ListAudit; entries list newest first unless OldestFirst.
type AuditFilter struct {
	// ID selects one entry (GetAuditLog).
	ID        string
	ActorType domain.ActorType
	ActorID   string
	Action    string
	// ActionPrefix selects actions starting with it ("node." for every node action).
	ActionPrefix string
	ResourceType string
	ResourceID   string
	// Since (inclusive) and Until (exclusive) bound the entry time; zero means unbounded.
	Since, Until time.Time
	OldestFirst  bool
}

// CvlanUsage are the address counters of a cvlan.
type CvlanUsage struct {
	// Nodes is the number of nodes in the cvlan (each holds one IPv4 and one IPv6 address).
	Nodes int64
	// Online is the number of nodes with status online.
	Online int64
	// IPv4Available is the number of usable IPv4 addresses still free.
	IPv4Available int64
}

// Tx is one transaction. Every method sees only the rows of the transaction's scope: an id of
// another tenant gives domain.ErrNotFound. Create methods fill in the Meta (id, times, version 1)
// of the value passed in; Update methods take the expected version in v.Version (0 means
// unconditional), fail with domain.ErrConflict when it is stale, and on success store the new
// version and times in v; Delete methods take the expected version the same way.
type Tx interface {
	// Scope returns the transaction's scope.
	Scope() Scope
	// Now returns the transaction's clock (one instant per transaction is not guaranteed).
	Now() time.Time

	GetTenant(ctx context.Context, id string) (*domain.Tenant, error)
	ListTenants(ctx context.Context, f TenantFilter, o ListOptions) (*Page[domain.Tenant], error)
	// CreateTenant needs the all-tenants scope (ErrPermissionDenied otherwise).
	CreateTenant(ctx context.Context, v *domain.Tenant) error
	UpdateTenant(ctx context.Context, v *domain.Tenant) error
	// DeleteTenant deletes the tenant; without force it fails with ErrFailedPrecondition while
	// the tenant has cvlans, with force every row of the tenant goes (audit entries stay).
	DeleteTenant(ctx context.Context, id string, version int64, force bool) error

	GetCvlan(ctx context.Context, id string) (*domain.Cvlan, error)
	ListCvlans(ctx context.Context, f CvlanFilter, o ListOptions) (*Page[domain.Cvlan], error)
	// CreateCvlan defaults IPv4CIDR to 100.64.0.0/10 and generates a /48 ULA IPv6CIDR when empty;
	// it fails with ErrExhausted when the tenant's MaxCvlans is reached.
	CreateCvlan(ctx context.Context, v *domain.Cvlan) error
	// UpdateCvlan keeps the CIDRs (immutable).
	UpdateCvlan(ctx context.Context, v *domain.Cvlan) error
	// DeleteCvlan fails with ErrFailedPrecondition while nodes remain, unless force, which deletes
	// the nodes too (releasing their addresses).
	DeleteCvlan(ctx context.Context, id string, version int64, force bool) error
	CvlanUsage(ctx context.Context, id string) (CvlanUsage, error)

	GetNode(ctx context.Context, id string) (*domain.Node, error)
	ListNodes(ctx context.Context, f NodeFilter, o ListOptions) (*Page[domain.Node], error)
	// CreateNode allocates the node's overlay addresses in its cvlan: the next free IPv4 (and the
	// IPv6 with the same offset in the ULA prefix), or, when v.IPv4Address is set, that address
	// (ErrAlreadyExists if taken). It fails with ErrNotFound for an unknown cvlan and ErrExhausted
	// when the cvlan's pool or the tenant's MaxNodes is used up. Allocation is serialised per
	// cvlan, so concurrent creators (also other processes) never share an address.
	CreateNode(ctx context.Context, v *domain.Node) error
	// CreateNodes creates nodes of one tenant and cvlan like CreateNode, allocating their
	// addresses in one pass and inserting them in multi-row statements (bulk import, seeding).
	CreateNodes(ctx context.Context, vs []*domain.Node) error
	// UpdateNode keeps CvlanID and the addresses (stable for the node's life).
	UpdateNode(ctx context.Context, v *domain.Node) error
	// UpdateNodeStatus is UpdateNode for a change of the node's runtime status only (online,
	// last seen, sync state, report details, certificate, conflict): no network map depends on
	// those, so it records no node change event (map loaders of every replica would re-read the
	// node). With notify it records a domain.ResourceNodeStatus event instead, which map loaders
	// skip and WatchEvents shows as an update of the node; without, nothing.
	UpdateNodeStatus(ctx context.Context, v *domain.Node, notify bool) error
	// TouchNodes records that the nodes were seen at `at` like TouchNode, in one statement per
	// chunk and without reading them; a node last seen later keeps its time, unknown ids are
	// skipped.
	TouchNodes(ctx context.Context, ids []string, at time.Time) error
	// TouchNode records that the node was seen at `at` without changing its version or
	// emitting a change event (heartbeats must not conflict with admin edits or flood the
	// feed); ListNodes' LastSeenBefore filter sees it.
	TouchNode(ctx context.Context, id string, at time.Time) error
	// DeleteNode deletes the node and releases its addresses.
	DeleteNode(ctx context.Context, id string, version int64) error

	GetUser(ctx context.Context, id string) (*domain.User, error)
	// GetUserByOIDC finds a user by IdP issuer and subject (across tenants in the all scope).
	GetUserByOIDC(ctx context.Context, issuer, subject string) (*domain.User, error)
	ListUsers(ctx context.Context, f UserFilter, o ListOptions) (*Page[domain.User], error)
	CreateUser(ctx context.Context, v *domain.User) error
	UpdateUser(ctx context.Context, v *domain.User) error
	DeleteUser(ctx context.Context, id string, version int64) error

	GetGroup(ctx context.Context, id string) (*domain.Group, error)
	ListGroups(ctx context.Context, f GroupFilter, o ListOptions) (*Page[domain.Group], error)
	CreateGroup(ctx context.Context, v *domain.Group) error
	UpdateGroup(ctx context.Context, v *domain.Group) error
	DeleteGroup(ctx context.Context, id string, version int64) error

	GetTag(ctx context.Context, id string) (*domain.Tag, error)
	ListTags(ctx context.Context, f TagFilter, o ListOptions) (*Page[domain.Tag], error)
	CreateTag(ctx context.Context, v *domain.Tag) error
	// UpdateTag keeps the name (immutable).
	UpdateTag(ctx context.Context, v *domain.Tag) error
	DeleteTag(ctx context.Context, id string, version int64) error

	GetPolicy(ctx context.Context, id string) (*domain.Policy, error)
	ListPolicies(ctx context.Context, f PolicyFilter, o ListOptions) (*Page[domain.Policy], error)
	CreatePolicy(ctx context.Context, v *domain.Policy) error
	UpdatePolicy(ctx context.Context, v *domain.Policy) error
	DeletePolicy(ctx context.Context, id string, version int64) error

	// Regions are global: every scope reads them; only the all-tenants scope creates, updates
	// and deletes them (ErrPermissionDenied otherwise). UpdateRegion keeps Code.
	GetRegion(ctx context.Context, id string) (*domain.Region, error)
	ListRegions(ctx context.Context, f RegionFilter, o ListOptions) (*Page[domain.Region], error)
	CreateRegion(ctx context.Context, v *domain.Region) error
	UpdateRegion(ctx context.Context, v *domain.Region) error
	DeleteRegion(ctx context.Context, id string, version int64) error

	// Relays without a tenant are shared: created in the all-tenants scope, readable by every
	// tenant, changed only in the all-tenants scope (ErrPermissionDenied otherwise).
	GetRelay(ctx context.Context, id string) (*domain.Relay, error)
	ListRelays(ctx context.Context, f RelayFilter, o ListOptions) (*Page[domain.Relay], error)
	CreateRelay(ctx context.Context, v *domain.Relay) error
	UpdateRelay(ctx context.Context, v *domain.Relay) error
	// UpdateRelayStatus stores a change of the relay's runtime status only (status, last seen,
	// stats, software version) and keeps its version and update time, like UpdateVRouterStatus:
	// the other fields, addresses and STUN address included, are taken from the stored row,
	// never from v (a change of those is an UpdateRelay: relay maps depend on them). v.Version,
	// when set, must still be the stored version (ErrConflict otherwise). With notify it records
	// a domain.ResourceRelayStatus event (map loaders and relay config streams ignore it,
	// WatchEvents shows it as an update of the relay); without, nothing.
	UpdateRelayStatus(ctx context.Context, v *domain.Relay, notify bool) error
	DeleteRelay(ctx context.Context, id string, version int64) error

	GetVRouter(ctx context.Context, id string) (*domain.VRouter, error)
	ListVRouters(ctx context.Context, f VRouterFilter, o ListOptions) (*Page[domain.VRouter], error)
	CreateVRouter(ctx context.Context, v *domain.VRouter) error
	UpdateVRouter(ctx context.Context, v *domain.VRouter) error
	// UpdateVRouterStatus stores a change of the vrouter's runtime status only (status, last
	// seen, stats, software version, per-connection status and last change time) and keeps its
	// version and update time: an API client's etag stays valid across the vrouter's periodic
	// reports. The other fields are taken from the stored row, never from v. v.Version, when
	// set, must still be the stored version (ErrConflict otherwise), so that a status computed
	// from an older configuration is not written. With notify it records a
	// domain.ResourceVRouterStatus event (vrouter config streams ignore it, WatchEvents shows it
	// as an update of the vrouter); without, nothing.
	UpdateVRouterStatus(ctx context.Context, v *domain.VRouter, notify bool) error
	DeleteVRouter(ctx context.Context, id string, version int64) error

	GetDiscoveryServer(ctx context.Context, id string) (*domain.DiscoveryServer, error)
	ListDiscoveryServers(ctx context.Context, f DiscoveryServerFilter, o ListOptions) (*Page[domain.DiscoveryServer], error)
	CreateDiscoveryServer(ctx context.Context, v *domain.DiscoveryServer) error
	UpdateDiscoveryServer(ctx context.Context, v *domain.DiscoveryServer) error
	DeleteDiscoveryServer(ctx context.Context, id string, version int64) error

	GetAPIKey(ctx context.Context, id string) (*domain.APIKey, error)
	// GetAPIKeyByHash finds a key by the hash of its secret (all scope for authentication). It
	// returns revoked and expired keys too: the caller decides.
	GetAPIKeyByHash(ctx context.Context, hash []byte) (*domain.APIKey, error)
	ListAPIKeys(ctx context.Context, f APIKeyFilter, o ListOptions) (*Page[domain.APIKey], error)
	CreateAPIKey(ctx context.Context, v *domain.APIKey) error
	// UpdateAPIKey keeps Hash and Prefix.
	UpdateAPIKey(ctx context.Context, v *domain.APIKey) error
	DeleteAPIKey(ctx context.Context, id string, version int64) error
	// TouchAPIKey records a use without changing the version (so that it never conflicts with an
	// admin's edit).
	TouchAPIKey(ctx context.Context, id string, at time.Time) error

	GetJoinToken(ctx context.Context, id string) (*domain.JoinToken, error)
	ListJoinTokens(ctx context.Context, f JoinTokenFilter, o ListOptions) (*Page[domain.JoinToken], error)
	CreateJoinToken(ctx context.Context, v *domain.JoinToken) error
	// UpdateJoinToken keeps Hash, Prefix and UseCount (revoke by setting Revoked).
	UpdateJoinToken(ctx context.Context, v *domain.JoinToken) error
	DeleteJoinToken(ctx context.Context, id string, version int64) error
	// ConsumeJoinToken finds the token by the hash of its secret, checks revocation
	// (ErrTokenRevoked), expiry at now (ErrTokenExpired) and uses left (ErrTokenUsed), then
	// increments its use count; an unknown hash gives ErrNotFound. The row is locked, so of
	// concurrent consumers of a single-use token exactly one succeeds. Call it in the transaction
	// that creates the node so that a failed enrollment does not consume a use.
	ConsumeJoinToken(ctx context.Context, hash []byte, now time.Time) (*domain.JoinToken, error)

	GetSession(ctx context.Context, id string) (*domain.Session, error)
	// GetSessionByHash finds a session by the hash of its secret (expired ones too).
	GetSessionByHash(ctx context.Context, hash []byte) (*domain.Session, error)
	ListSessions(ctx context.Context, f SessionFilter, o ListOptions) (*Page[domain.Session], error)
	CreateSession(ctx context.Context, v *domain.Session) error
	DeleteSession(ctx context.Context, id string, version int64) error
	// DeleteExpiredSessions removes sessions that expired before now and returns how many.
	DeleteExpiredSessions(ctx context.Context, now time.Time) (int64, error)

	// AppendAudit writes an audit entry in this transaction: it commits with the mutation or not
	// at all. ID and Time are filled in when empty; TenantID defaults to the scope's tenant.
	AppendAudit(ctx context.Context, e *domain.AuditEntry) error
	ListAudit(ctx context.Context, f AuditFilter, o ListOptions) (*Page[domain.AuditEntry], error)
}

// IsNotFound is a shorthand for errors.Is(err, domain.ErrNotFound).
func IsNotFound(err error) bool { return errors.Is(err, domain.ErrNotFound) }
