package sqlcore

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// The table descriptors below are immutable after initialisation.

var tenants = &table[domain.Tenant, *domain.Tenant]{
	name: "tenants", kind: domain.ResourceTenant, mode: isTenant, byName: true, feed: true,
	cols: []string{"name", "status"},
	vals: func(v *domain.Tenant) []any { return []any{v.Name, string(v.Status)} },
}

var cvlans = &table[domain.Cvlan, *domain.Cvlan]{
	name: "cvlans", kind: domain.ResourceCvlan, byName: true, feed: true,
	tenant: func(v *domain.Cvlan) *string { return &v.TenantID },
	cols:   []string{"name", "ipv4_cidr", "ipv6_cidr"},
	vals: func(v *domain.Cvlan) []any {
		return []any{v.Name, v.IPv4CIDR.String(), v.IPv6CIDR.String()}
	},
	keep: func(old, upd *domain.Cvlan) { upd.IPv4CIDR, upd.IPv6CIDR = old.IPv4CIDR, old.IPv6CIDR },
}

var nodes = &table[domain.Node, *domain.Node]{
	name: "nodes", kind: domain.ResourceNode, mode: optionalTenant, byName: true, feed: true,
	tenant: func(v *domain.Node) *string { return &v.TenantID },
	cols: []string{"name", "cvlan_id", "kind", "status", "sync_state", "user_id", "wg_key",
		"ipv4", "pending_routes", "ephemeral", "last_seen"},
	vals: func(v *domain.Node) []any {
		return []any{v.Name, nullable(v.CvlanID), string(v.Kind), string(v.Status), string(v.Sync.State),
			v.UserID, v.WireGuardPublicKey, addrValue(v.IPv4Address), pendingRoutes(v), v.Ephemeral,
			micros(v.LastSeenTime)}
	},
	keep: func(old, upd *domain.Node) {
		upd.CvlanID, upd.IPv4Address, upd.IPv6Address = old.CvlanID, old.IPv4Address, old.IPv6Address
		// TouchNode may have recorded a later heartbeat since the caller read the node.
		upd.LastSeenTime = later(old.LastSeenTime, upd.LastSeenTime)
	},
}

// addrValue is the integer form of an IPv4 address (the allocator's unique key), nil when unset.
func addrValue(a netip.Addr) any {
	if !a.Is4() {
		return nil
	}
	b := a.As4()
	return int64(b[0])<<24 | int64(b[1])<<16 | int64(b[2])<<8 | int64(b[3])
}

func pendingRoutes(v *domain.Node) bool {
	for _, r := range v.Routes {
		if r.Advertised && !r.Approved {
			return true
		}
	}
	return false
}

var users = &table[domain.User, *domain.User]{
	name: "users", kind: domain.ResourceUser, byName: true, feed: true,
	tenant: func(v *domain.User) *string { return &v.TenantID },
	cols:   []string{"name", "email", "role", "status", "oidc_issuer", "oidc_subject"},
	vals: func(v *domain.User) []any {
		return []any{v.Name, v.Email, string(v.Role), string(v.Status), v.OIDCIssuer, v.OIDCSubject}
	},
}

var groups = &table[domain.Group, *domain.Group]{
	name: "groups_", kind: domain.ResourceGroup, byName: true, feed: true,
	tenant: func(v *domain.Group) *string { return &v.TenantID },
	cols:   []string{"name"},
	vals:   func(v *domain.Group) []any { return []any{v.Name} },
}

var tags = &table[domain.Tag, *domain.Tag]{
	name: "tags", kind: domain.ResourceTag, byName: true, feed: true,
	tenant: func(v *domain.Tag) *string { return &v.TenantID },
	cols:   []string{"name"},
	vals:   func(v *domain.Tag) []any { return []any{v.Name} },
	keep:   func(old, upd *domain.Tag) { upd.Name = old.Name },
}

var policies = &table[domain.Policy, *domain.Policy]{
	name: "policies", kind: domain.ResourcePolicy, byName: true, feed: true,
	tenant: func(v *domain.Policy) *string { return &v.TenantID },
	cols:   []string{"name", "cvlan_id", "enabled"},
	vals:   func(v *domain.Policy) []any { return []any{v.Name, v.CvlanID, v.Enabled} },
}

var regions = &table[domain.Region, *domain.Region]{
	name: "regions", kind: domain.ResourceRegion, mode: global, byName: true, feed: true,
	cols: []string{"name", "code"},
	vals: func(v *domain.Region) []any { return []any{v.Name, v.Code} },
	keep: func(old, upd *domain.Region) { upd.Code = old.Code },
}

var relays = &table[domain.Relay, *domain.Relay]{
	name: "relays", kind: domain.ResourceRelay, mode: sharedTenant, byName: true, feed: true,
	tenant: func(v *domain.Relay) *string { return &v.TenantID },
	cols:   []string{"name", "region_id"},
	vals:   func(v *domain.Relay) []any { return []any{v.Name, v.RegionID} },
}

var vrouters = &table[domain.VRouter, *domain.VRouter]{
	name: "vrouters", kind: domain.ResourceVRouter, byName: true, feed: true,
	tenant: func(v *domain.VRouter) *string { return &v.TenantID },
	cols:   []string{"name", "cvlan_id"},
	vals:   func(v *domain.VRouter) []any { return []any{v.Name, v.CvlanID} },
}

var discoveryServers = &table[domain.DiscoveryServer, *domain.DiscoveryServer]{
	name: "discovery_servers", kind: domain.ResourceDiscoveryServer, byName: true, feed: true,
	tenant: func(v *domain.DiscoveryServer) *string { return &v.TenantID },
	cols:   []string{"name", "region_id", "type"},
	vals:   func(v *domain.DiscoveryServer) []any { return []any{v.Name, v.RegionID, v.Type} },
}

var apiKeys = &table[domain.APIKey, *domain.APIKey]{
	name: "api_keys", kind: domain.ResourceAPIKey, byName: true, feed: true,
	tenant: func(v *domain.APIKey) *string { return &v.TenantID },
	cols:   []string{"name", "hash", "revoked"},
	vals:   func(v *domain.APIKey) []any { return []any{v.Name, v.Hash, v.Revoked} },
	keep: func(old, upd *domain.APIKey) {
		upd.Hash, upd.Prefix = old.Hash, old.Prefix
		upd.LastUsedTime = later(old.LastUsedTime, upd.LastUsedTime)
	},
}

var joinTokens = &table[domain.JoinToken, *domain.JoinToken]{
	name: "join_tokens", kind: domain.ResourceJoinToken, mode: optionalTenant, feed: true,
	tenant: func(v *domain.JoinToken) *string { return &v.TenantID },
	cols:   []string{"hash", "kind", "cvlan_id", "revoked"},
	vals: func(v *domain.JoinToken) []any {
		return []any{v.Hash, string(v.Kind), v.CvlanID, v.Revoked}
	},
	keep: func(old, upd *domain.JoinToken) {
		upd.Hash, upd.Prefix, upd.UseCount, upd.LastUsedTime = old.Hash, old.Prefix, old.UseCount, old.LastUsedTime
	},
}

var sessions = &table[domain.Session, *domain.Session]{
	name: "sessions", kind: domain.ResourceSession,
	tenant: func(v *domain.Session) *string { return &v.TenantID },
	cols:   []string{"user_id", "hash", "expire_time"},
	vals:   func(v *domain.Session) []any { return []any{v.UserID, v.Hash, micros(v.ExpireTime)} },
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func eq(col string, v any) cond { return cond{col + " = ?", []any{v}} }

// Tenants.

// GetTenant implements store.Tx.
func (tx *Tx) GetTenant(ctx context.Context, id string) (*domain.Tenant, error) {
	return tenants.get(ctx, tx, id)
}

// ListTenants implements store.Tx.
func (tx *Tx) ListTenants(ctx context.Context, f store.TenantFilter, o store.ListOptions) (*store.Page[domain.Tenant], error) {
	var c []cond
	if f.Status != "" {
		c = append(c, eq("status", string(f.Status)))
	}
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	return tenants.list(ctx, tx, c, o)
}

// CreateTenant implements store.Tx.
func (tx *Tx) CreateTenant(ctx context.Context, v *domain.Tenant) error {
	if v.Name == "" {
		return fmt.Errorf("%w: tenant name is required", domain.ErrInvalid)
	}
	if v.Status == "" {
		v.Status = domain.TenantActive
	}
	return tenants.insert(ctx, tx, v)
}

// UpdateTenant implements store.Tx.
func (tx *Tx) UpdateTenant(ctx context.Context, v *domain.Tenant) error {
	return tenants.update(ctx, tx, v)
}

// DeleteTenant implements store.Tx.
func (tx *Tx) DeleteTenant(ctx context.Context, id string, version int64, force bool) error {
	if !force {
		if _, err := tenants.get(ctx, tx, id); err != nil {
			return err
		}
		_, has, err := tx.queryInt64(ctx, "SELECT 1 FROM cvlans WHERE tenant_id = ? LIMIT 1", id)
		if err != nil {
			return fmt.Errorf("delete tenant: %w", err)
		}
		if has {
			return fmt.Errorf("delete tenant %s: it still has cvlans: %w", id, domain.ErrFailedPrecondition)
		}
	}
	return tenants.remove(ctx, tx, id, version)
}

// Users.

// GetUser implements store.Tx.
func (tx *Tx) GetUser(ctx context.Context, id string) (*domain.User, error) {
	return users.get(ctx, tx, id)
}

// GetUserByOIDC implements store.Tx.
func (tx *Tx) GetUserByOIDC(ctx context.Context, issuer, subject string) (*domain.User, error) {
	if subject == "" {
		return nil, fmt.Errorf("%w: empty oidc subject", domain.ErrInvalid)
	}
	return users.getBy(ctx, tx, issuer+" "+subject, false, eq("oidc_issuer", issuer), eq("oidc_subject", subject))
}

// ListUsers implements store.Tx.
func (tx *Tx) ListUsers(ctx context.Context, f store.UserFilter, o store.ListOptions) (*store.Page[domain.User], error) {
	var c []cond
	if f.Role != "" {
		c = append(c, eq("role", string(f.Role)))
	}
	if f.Status != "" {
		c = append(c, eq("status", string(f.Status)))
	}
	if f.EmailPrefix != "" {
		c = append(c, prefixCond("email", f.EmailPrefix))
	}
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.GroupID != "" {
		c = append(c, cond{"EXISTS (SELECT 1 FROM groups_ g WHERE g.id = ? AND g.tenant_id = users.tenant_id AND " +
			tx.d.ArrayHasField("g.data", "members", "user_id", "users.id") + ")", []any{f.GroupID}})
	}
	return users.list(ctx, tx, c, o)
}

// CreateUser implements store.Tx. An empty Name is derived from the email's local part.
func (tx *Tx) CreateUser(ctx context.Context, v *domain.User) error {
	if v.Status == "" {
		v.Status = domain.UserActive
	}
	if v.Name == "" {
		v.Name = labelFromEmail(v.Email)
	}
	if v.Name == "" {
		return fmt.Errorf("%w: a user needs a name or an email", domain.ErrInvalid)
	}
	return users.insert(ctx, tx, v)
}

// UpdateUser implements store.Tx.
func (tx *Tx) UpdateUser(ctx context.Context, v *domain.User) error { return users.update(ctx, tx, v) }

// DeleteUser implements store.Tx.
func (tx *Tx) DeleteUser(ctx context.Context, id string, version int64) error {
	return users.remove(ctx, tx, id, version)
}

// Groups.

// GetGroup implements store.Tx.
func (tx *Tx) GetGroup(ctx context.Context, id string) (*domain.Group, error) {
	return groups.get(ctx, tx, id)
}

// ListGroups implements store.Tx.
func (tx *Tx) ListGroups(ctx context.Context, f store.GroupFilter, o store.ListOptions) (*store.Page[domain.Group], error) {
	var c []cond
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.UserID != "" {
		c = append(c, cond{tx.d.ArrayHasField("data", "members", "user_id", "?"), []any{f.UserID}})
	}
	if f.NodeID != "" {
		c = append(c, cond{tx.d.ArrayHasField("data", "members", "node_id", "?"), []any{f.NodeID}})
	}
	if f.IdPGroupName != "" {
		c = append(c, cond{tx.d.ArrayHas("data", "idp_group_names", "?"), []any{f.IdPGroupName}})
	}
	return groups.list(ctx, tx, c, o)
}

// CreateGroup implements store.Tx.
func (tx *Tx) CreateGroup(ctx context.Context, v *domain.Group) error {
	return groups.insert(ctx, tx, v)
}

// UpdateGroup implements store.Tx.
func (tx *Tx) UpdateGroup(ctx context.Context, v *domain.Group) error {
	return groups.update(ctx, tx, v)
}

// DeleteGroup implements store.Tx.
func (tx *Tx) DeleteGroup(ctx context.Context, id string, version int64) error {
	return groups.remove(ctx, tx, id, version)
}

// Tags.

// GetTag implements store.Tx.
func (tx *Tx) GetTag(ctx context.Context, id string) (*domain.Tag, error) {
	return tags.get(ctx, tx, id)
}

// ListTags implements store.Tx.
func (tx *Tx) ListTags(ctx context.Context, f store.TagFilter, o store.ListOptions) (*store.Page[domain.Tag], error) {
	var c []cond
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.OwnerGroupID != "" {
		c = append(c, cond{tx.d.ArrayHas("data", "owner_group_ids", "?"), []any{f.OwnerGroupID}})
	}
	return tags.list(ctx, tx, c, o)
}

// CreateTag implements store.Tx.
func (tx *Tx) CreateTag(ctx context.Context, v *domain.Tag) error { return tags.insert(ctx, tx, v) }

// UpdateTag implements store.Tx.
func (tx *Tx) UpdateTag(ctx context.Context, v *domain.Tag) error { return tags.update(ctx, tx, v) }

// DeleteTag implements store.Tx.
func (tx *Tx) DeleteTag(ctx context.Context, id string, version int64) error {
	return tags.remove(ctx, tx, id, version)
}

// Policies.

// GetPolicy implements store.Tx.
func (tx *Tx) GetPolicy(ctx context.Context, id string) (*domain.Policy, error) {
	return policies.get(ctx, tx, id)
}

// ListPolicies implements store.Tx.
func (tx *Tx) ListPolicies(ctx context.Context, f store.PolicyFilter, o store.ListOptions) (*store.Page[domain.Policy], error) {
	var c []cond
	if f.CvlanID != "" {
		c = append(c, eq("cvlan_id", f.CvlanID))
	}
	if f.Enabled != nil {
		c = append(c, eq("enabled", *f.Enabled))
	}
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	return policies.list(ctx, tx, c, o)
}

// CreatePolicy implements store.Tx.
func (tx *Tx) CreatePolicy(ctx context.Context, v *domain.Policy) error {
	return policies.insert(ctx, tx, v)
}

// UpdatePolicy implements store.Tx.
func (tx *Tx) UpdatePolicy(ctx context.Context, v *domain.Policy) error {
	return policies.update(ctx, tx, v)
}

// DeletePolicy implements store.Tx.
func (tx *Tx) DeletePolicy(ctx context.Context, id string, version int64) error {
	return policies.remove(ctx, tx, id, version)
}

// Regions.

// GetRegion implements store.Tx.
func (tx *Tx) GetRegion(ctx context.Context, id string) (*domain.Region, error) {
	return regions.get(ctx, tx, id)
}

// ListRegions implements store.Tx.
func (tx *Tx) ListRegions(ctx context.Context, f store.RegionFilter, o store.ListOptions) (*store.Page[domain.Region], error) {
	var c []cond
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.Code != "" {
		c = append(c, eq("code", f.Code))
	}
	return regions.list(ctx, tx, c, o)
}

// CreateRegion implements store.Tx.
func (tx *Tx) CreateRegion(ctx context.Context, v *domain.Region) error {
	if v.Name == "" || v.Code == "" {
		return fmt.Errorf("%w: a region needs a name and a code", domain.ErrInvalid)
	}
	return regions.insert(ctx, tx, v)
}

// UpdateRegion implements store.Tx.
func (tx *Tx) UpdateRegion(ctx context.Context, v *domain.Region) error {
	return regions.update(ctx, tx, v)
}

// DeleteRegion implements store.Tx.
func (tx *Tx) DeleteRegion(ctx context.Context, id string, version int64) error {
	return regions.remove(ctx, tx, id, version)
}

// Relays.

// GetRelay implements store.Tx.
func (tx *Tx) GetRelay(ctx context.Context, id string) (*domain.Relay, error) {
	return relays.get(ctx, tx, id)
}

// ListRelays implements store.Tx.
func (tx *Tx) ListRelays(ctx context.Context, f store.RelayFilter, o store.ListOptions) (*store.Page[domain.Relay], error) {
	var c []cond
	if f.RegionID != "" {
		c = append(c, eq("region_id", f.RegionID))
	}
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.SharedOnly {
		c = append(c, cond{"tenant_id IS NULL", nil})
	}
	if f.OwnOnly {
		c = append(c, cond{"tenant_id IS NOT NULL", nil})
	}
	if f.Status != "" {
		c = append(c, cond{tx.d.JSONText("data", "status") + " = ?", []any{string(f.Status)}})
	}
	return relays.list(ctx, tx, c, o)
}

// CreateRelay implements store.Tx.
func (tx *Tx) CreateRelay(ctx context.Context, v *domain.Relay) error {
	return relays.insert(ctx, tx, v)
}

// UpdateRelay implements store.Tx.
func (tx *Tx) UpdateRelay(ctx context.Context, v *domain.Relay) error {
	return relays.update(ctx, tx, v)
}

// UpdateRelayStatus implements store.Tx.
func (tx *Tx) UpdateRelayStatus(ctx context.Context, v *domain.Relay, notify bool) error {
	kind := ""
	if notify {
		kind = domain.ResourceRelayStatus
	}
	return relays.updateStatus(ctx, tx, v.ID, v.Version, func(stored *domain.Relay) { stored.SetStatusFrom(v) }, kind)
}

// DeleteRelay implements store.Tx.
func (tx *Tx) DeleteRelay(ctx context.Context, id string, version int64) error {
	return relays.remove(ctx, tx, id, version)
}

// VRouters.

// GetVRouter implements store.Tx.
func (tx *Tx) GetVRouter(ctx context.Context, id string) (*domain.VRouter, error) {
	return vrouters.get(ctx, tx, id)
}

// ListVRouters implements store.Tx.
func (tx *Tx) ListVRouters(ctx context.Context, f store.VRouterFilter, o store.ListOptions) (*store.Page[domain.VRouter], error) {
	var c []cond
	if f.CvlanID != "" {
		c = append(c, eq("cvlan_id", f.CvlanID))
	}
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.Status != "" {
		c = append(c, cond{tx.d.JSONText("data", "status") + " = ?", []any{string(f.Status)}})
	}
	return vrouters.list(ctx, tx, c, o)
}

// CreateVRouter implements store.Tx.
func (tx *Tx) CreateVRouter(ctx context.Context, v *domain.VRouter) error {
	return vrouters.insert(ctx, tx, v)
}

// UpdateVRouter implements store.Tx.
func (tx *Tx) UpdateVRouter(ctx context.Context, v *domain.VRouter) error {
	return vrouters.update(ctx, tx, v)
}

// UpdateVRouterStatus implements store.Tx.
func (tx *Tx) UpdateVRouterStatus(ctx context.Context, v *domain.VRouter, notify bool) error {
	kind := ""
	if notify {
		kind = domain.ResourceVRouterStatus
	}
	return vrouters.updateStatus(ctx, tx, v.ID, v.Version, func(stored *domain.VRouter) { stored.SetStatusFrom(v) }, kind)
}

// DeleteVRouter implements store.Tx.
func (tx *Tx) DeleteVRouter(ctx context.Context, id string, version int64) error {
	return vrouters.remove(ctx, tx, id, version)
}

// Discovery servers.

// GetDiscoveryServer implements store.Tx.
func (tx *Tx) GetDiscoveryServer(ctx context.Context, id string) (*domain.DiscoveryServer, error) {
	return discoveryServers.get(ctx, tx, id)
}

// ListDiscoveryServers implements store.Tx.
func (tx *Tx) ListDiscoveryServers(ctx context.Context, f store.DiscoveryServerFilter, o store.ListOptions) (*store.Page[domain.DiscoveryServer], error) {
	var c []cond
	if f.RegionID != "" {
		c = append(c, eq("region_id", f.RegionID))
	}
	if f.Type != "" {
		c = append(c, eq("type", f.Type))
	}
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	return discoveryServers.list(ctx, tx, c, o)
}

// CreateDiscoveryServer implements store.Tx.
func (tx *Tx) CreateDiscoveryServer(ctx context.Context, v *domain.DiscoveryServer) error {
	return discoveryServers.insert(ctx, tx, v)
}

// UpdateDiscoveryServer implements store.Tx.
func (tx *Tx) UpdateDiscoveryServer(ctx context.Context, v *domain.DiscoveryServer) error {
	return discoveryServers.update(ctx, tx, v)
}

// DeleteDiscoveryServer implements store.Tx.
func (tx *Tx) DeleteDiscoveryServer(ctx context.Context, id string, version int64) error {
	return discoveryServers.remove(ctx, tx, id, version)
}

// API keys.

// GetAPIKey implements store.Tx.
func (tx *Tx) GetAPIKey(ctx context.Context, id string) (*domain.APIKey, error) {
	return apiKeys.get(ctx, tx, id)
}

// GetAPIKeyByHash implements store.Tx.
func (tx *Tx) GetAPIKeyByHash(ctx context.Context, hash []byte) (*domain.APIKey, error) {
	return apiKeys.getBy(ctx, tx, "by hash", false, eq("hash", hash))
}

// ListAPIKeys implements store.Tx.
func (tx *Tx) ListAPIKeys(ctx context.Context, f store.APIKeyFilter, o store.ListOptions) (*store.Page[domain.APIKey], error) {
	var c []cond
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.CreatedBy != "" {
		c = append(c, cond{tx.d.JSONText("data", "created_by") + " = ?", []any{f.CreatedBy}})
	}
	st, err := tx.credentialStatus(f.Status, f.Now, "", f.IncludeRevoked)
	if err != nil {
		return nil, err
	}
	return apiKeys.list(ctx, tx, append(c, st...), o)
}

// CreateAPIKey implements store.Tx.
func (tx *Tx) CreateAPIKey(ctx context.Context, v *domain.APIKey) error {
	if len(v.Hash) == 0 {
		return fmt.Errorf("%w: api key without hash", domain.ErrInvalid)
	}
	return apiKeys.insert(ctx, tx, v)
}

// UpdateAPIKey implements store.Tx.
func (tx *Tx) UpdateAPIKey(ctx context.Context, v *domain.APIKey) error {
	return apiKeys.update(ctx, tx, v)
}

// DeleteAPIKey implements store.Tx.
func (tx *Tx) DeleteAPIKey(ctx context.Context, id string, version int64) error {
	return apiKeys.remove(ctx, tx, id, version)
}

// TouchAPIKey implements store.Tx.
func (tx *Tx) TouchAPIKey(ctx context.Context, id string, at time.Time) error {
	if err := tx.writable(); err != nil {
		return err
	}
	k, err := apiKeys.getBy(ctx, tx, id, true, eq("id", id))
	if err != nil {
		return err
	}
	k.LastUsedTime = at.UTC().Truncate(time.Microsecond)
	return tx.rewriteData(ctx, "api_keys", id, k)
}

// Join tokens.

// GetJoinToken implements store.Tx.
func (tx *Tx) GetJoinToken(ctx context.Context, id string) (*domain.JoinToken, error) {
	return joinTokens.get(ctx, tx, id)
}

// ListJoinTokens implements store.Tx.
func (tx *Tx) ListJoinTokens(ctx context.Context, f store.JoinTokenFilter, o store.ListOptions) (*store.Page[domain.JoinToken], error) {
	var c []cond
	if f.Kind != "" {
		c = append(c, eq("kind", string(f.Kind)))
	}
	if f.CvlanID != "" {
		c = append(c, eq("cvlan_id", f.CvlanID))
	}
	if f.TargetID != "" {
		c = append(c, cond{tx.d.JSONText("data", "target_id") + " = ?", []any{f.TargetID}})
	}
	st, err := tx.credentialStatus(f.Status, f.Now, tx.joinTokenUsesLeft(), f.IncludeRevoked)
	if err != nil {
		return nil, err
	}
	return joinTokens.list(ctx, tx, append(c, st...), o)
}

// CreateJoinToken implements store.Tx.
func (tx *Tx) CreateJoinToken(ctx context.Context, v *domain.JoinToken) error {
	if len(v.Hash) == 0 {
		return fmt.Errorf("%w: join token without hash", domain.ErrInvalid)
	}
	if v.Kind == "" {
		v.Kind = domain.NodeKindNode
	}
	v.UseCount = 0
	return joinTokens.insert(ctx, tx, v)
}

// UpdateJoinToken implements store.Tx.
func (tx *Tx) UpdateJoinToken(ctx context.Context, v *domain.JoinToken) error {
	return joinTokens.update(ctx, tx, v)
}

// DeleteJoinToken implements store.Tx.
func (tx *Tx) DeleteJoinToken(ctx context.Context, id string, version int64) error {
	return joinTokens.remove(ctx, tx, id, version)
}

// ConsumeJoinToken implements store.Tx.
func (tx *Tx) ConsumeJoinToken(ctx context.Context, hash []byte, now time.Time) (*domain.JoinToken, error) {
	if err := tx.writable(); err != nil {
		return nil, err
	}
	// The row lock (FOR UPDATE on PostgreSQL, the single writer on SQLite) makes concurrent
	// consumers wait here and then see the use count of the one before them.
	t, err := joinTokens.getBy(ctx, tx, "by hash", true, eq("hash", hash))
	if err != nil {
		return nil, err
	}
	switch {
	case t.Revoked:
		return nil, fmt.Errorf("join token %s: %w", t.Prefix, domain.ErrTokenRevoked)
	case !t.ExpireTime.IsZero() && !now.Before(t.ExpireTime):
		return nil, fmt.Errorf("join token %s: expired at %s: %w", t.Prefix, t.ExpireTime.Format(time.RFC3339), domain.ErrTokenExpired)
	case !t.UsesLeft():
		return nil, fmt.Errorf("join token %s: %d of %d uses: %w", t.Prefix, t.UseCount, max(t.MaxUses, 1), domain.ErrTokenUsed)
	}
	t.UseCount++
	t.LastUsedTime = now.UTC().Truncate(time.Microsecond)
	if err := tx.rewriteData(ctx, "join_tokens", t.ID, t); err != nil {
		return nil, err
	}
	return t, nil
}

// Sessions.

// GetSession implements store.Tx.
func (tx *Tx) GetSession(ctx context.Context, id string) (*domain.Session, error) {
	return sessions.get(ctx, tx, id)
}

// GetSessionByHash implements store.Tx.
func (tx *Tx) GetSessionByHash(ctx context.Context, hash []byte) (*domain.Session, error) {
	return sessions.getBy(ctx, tx, "by hash", false, eq("hash", hash))
}

// ListSessions implements store.Tx.
func (tx *Tx) ListSessions(ctx context.Context, f store.SessionFilter, o store.ListOptions) (*store.Page[domain.Session], error) {
	var c []cond
	if f.UserID != "" {
		c = append(c, eq("user_id", f.UserID))
	}
	return sessions.list(ctx, tx, c, o)
}

// CreateSession implements store.Tx.
func (tx *Tx) CreateSession(ctx context.Context, v *domain.Session) error {
	if len(v.Hash) == 0 || v.UserID == "" {
		return fmt.Errorf("%w: session needs a hash and a user", domain.ErrInvalid)
	}
	return sessions.insert(ctx, tx, v)
}

// DeleteSession implements store.Tx.
func (tx *Tx) DeleteSession(ctx context.Context, id string, version int64) error {
	return sessions.remove(ctx, tx, id, version)
}

// DeleteExpiredSessions implements store.Tx.
func (tx *Tx) DeleteExpiredSessions(ctx context.Context, now time.Time) (int64, error) {
	if err := tx.writable(); err != nil {
		return 0, err
	}
	w, args := where(append(sessions.scopeConds(tx), cond{"expire_time < ?", []any{micros(now)}}))
	n, err := tx.exec(ctx, "DELETE FROM sessions"+w, args...)
	if err != nil {
		return 0, fmt.Errorf("delete expired sessions: %w", err)
	}
	return n, nil
}

// joinTokenUsesLeft is domain.JoinToken.UsesLeft as a predicate on a join_tokens row.
func (tx *Tx) joinTokenUsesLeft() string {
	uses, maxUses := tx.d.JSONInt("data", "use_count"), tx.d.JSONInt("data", "max_uses")
	reusable := tx.d.JSONBool("data", "reusable")
	return "(NOT (" + reusable + ") AND " + uses + " < 1) OR ((" + reusable + ") AND (" + maxUses + " = 0 OR " + uses + " < " + maxUses + "))"
}

// credentialStatus returns the conditions selecting API keys or join tokens in state st at now
// (see store.CredentialStatus); usesLeft is the uses-left predicate ("" for API keys, which
// have no uses). Without a status, revoked rows are left out unless includeRevoked.
func (tx *Tx) credentialStatus(st store.CredentialStatus, now time.Time, usesLeft string, includeRevoked bool) ([]cond, error) {
	exp := "coalesce(" + tx.d.JSONMicros("data", "expire_time") + ", 0)"
	// The zero time (year 1) and an absent expiry mean "never expires".
	expired := cond{exp + " > 0 AND " + exp + " <= ?", []any{micros(now)}}
	notExpired := cond{exp + " <= 0 OR " + exp + " > ?", []any{micros(now)}}
	notRevoked := eq("revoked", false)
	switch st {
	case "":
		if includeRevoked {
			return nil, nil
		}
		return []cond{notRevoked}, nil
	case store.CredentialRevoked:
		return []cond{eq("revoked", true)}, nil
	case store.CredentialUsed:
		if usesLeft == "" {
			return []cond{{"1 = 0", nil}}, nil // API keys are never used up
		}
		return []cond{notRevoked, {"NOT (" + usesLeft + ")", nil}}, nil
	}
	if now.IsZero() {
		return nil, fmt.Errorf("%w: a credential status filter needs the time", domain.ErrInvalid)
	}
	c := []cond{notRevoked}
	if usesLeft != "" {
		c = append(c, cond{usesLeft, nil})
	}
	switch st {
	case store.CredentialExpired:
		return append(c, expired), nil
	case store.CredentialActive:
		return append(c, notExpired), nil
	}
	return nil, fmt.Errorf("%w: unknown credential status %q", domain.ErrInvalid, st)
}

// rewriteData stores v's JSON without a version change (bookkeeping that must not conflict
// with an admin's concurrent edit: use counts, last-used times).
func (tx *Tx) rewriteData(ctx context.Context, tableName, id string, v any) error {
	data, err := jsonString(v)
	if err != nil {
		return err
	}
	if _, err := tx.exec(ctx, "UPDATE "+tableName+" SET data = ? WHERE id = ?", data, id); err != nil {
		return fmt.Errorf("update %s %s: %w", tableName, id, err)
	}
	return nil
}

// labelFromEmail turns "Jane.Doe+x@example.com" into the DNS label "jane-doe-x".
func labelFromEmail(email string) string {
	local, _, _ := strings.Cut(strings.ToLower(email), "@")
	b := []byte(local)
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			b[i] = '-'
		}
	}
	return strings.Trim(string(b), "-")
}
