// Package mapsync keeps a replica's network-map engine equal to the store: it loads every network at
// start, then follows the store's change feed (ChangesSince after each Watch wake-up), applies each
// change to the engine and hands the resulting deltas to a Sink. Because every replica follows the same
// feed in commit order, a change committed through any replica reaches the agents streaming from every
// replica, once.
package mapsync

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/netmap"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/convert"
	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// Store is the part of store.Store the loader reads.
type Store interface {
	ReadTx(ctx context.Context, scope store.Scope, fn func(store.Tx) error) error
	ChangesSince(ctx context.Context, afterID int64, limit int) ([]domain.ChangeEvent, error)
	LatestChangeID(ctx context.Context) (int64, error)
	Watch(ctx context.Context) (<-chan struct{}, error)
}

// Sink receives what the engine computed.
type Sink interface {
	// Deliver gets the deltas of one change, in order.
	Deliver(ds []*netmap.Delta)
	// Resync gets nodes that need a snapshot (their epoch changed or their DNS settings did).
	Resync(nodeIDs []string)
}

// Observer learns about node lifecycle changes (the node port's revocation set, the offline sweeper).
type Observer interface {
	// NodeLive reports a node that exists and is not quarantined.
	NodeLive(n *domain.Node)
	// NodeRevoked reports a node that was deleted or quarantined: its streams must close.
	NodeRevoked(tenantID, nodeID, reason string)
}

// Options configure a Loader.
type Options struct {
	Store    Store
	Engine   *netmap.Engine
	Sink     Sink
	Observer Observer
	Log      *slog.Logger
	// OnChanges, when set, is called with each page of change events after it was applied (the
	// relay and vrouter configuration streams wake on it).
	OnChanges func(evs []domain.ChangeEvent)
	// PollInterval re-reads the feed even without a wake-up, a safety net for lost notifications
	// (default 5 s).
	PollInterval time.Duration
}

type nodeInfo struct {
	network netmap.NetworkID
	node    netmap.Node
	kind    domain.NodeKind
}

type tenantInfo struct {
	settings     domain.TenantSettings
	groupsByNode map[string][]string
	groupsByUser map[string][]string
	relay        netmap.RelayMap
	cvlans       map[string]bool
}

// Loader follows the store. Its lookups are safe for concurrent use.
type Loader struct {
	o   Options
	log *slog.Logger

	applyMu sync.Mutex // serialises loading and change application
	lastID  int64

	mu       sync.RWMutex
	nodes    map[string]*nodeInfo
	networks map[netmap.NetworkID]convert.Network
	tenants  map[string]*tenantInfo
	relays   []*domain.Relay
	regions  []*domain.Region
}

// New returns a Loader; call Load, then Run.
func New(o Options) *Loader {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.PollInterval <= 0 {
		o.PollInterval = 5 * time.Second
	}
	return &Loader{
		o: o, log: o.Log,
		nodes:    make(map[string]*nodeInfo),
		networks: make(map[netmap.NetworkID]convert.Network),
		tenants:  make(map[string]*tenantInfo),
	}
}

// Network returns the network of a node and what its views need.
func (l *Loader) Network(nodeID string) (netmap.NetworkID, convert.Network, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	ni, ok := l.nodes[nodeID]
	if !ok {
		return netmap.NetworkID{}, convert.Network{}, false
	}
	return ni.network, l.networks[ni.network], true
}

// TenantSettings returns a tenant's settings as last loaded.
func (l *Loader) TenantSettings(tenantID string) domain.TenantSettings {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if t := l.tenants[tenantID]; t != nil {
		return t.settings
	}
	return domain.TenantSettings{}
}

// RelayMap returns the relay map of a tenant (its own relays and the shared ones).
func (l *Loader) RelayMap(tenantID string) *nodev1.RelayMap {
	l.mu.RLock()
	defer l.mu.RUnlock()
	rm := relayMapFor(tenantID, l.relays, l.regions)
	return convert.RelayMap(&rm)
}

// RegionPeers returns the relays of a region other than self (relay mesh).
func (l *Loader) RegionPeers(regionID, self string) []*domain.Relay {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []*domain.Relay
	for _, r := range l.relays {
		if r.ID != self && r.RegionID == regionID && regionID != "" {
			out = append(out, r)
		}
	}
	return out
}

// LastChangeID returns the id of the last change applied.
func (l *Loader) LastChangeID() int64 {
	l.applyMu.Lock()
	defer l.applyMu.Unlock()
	return l.lastID
}

func listAll[T any](list func(store.ListOptions) (*store.Page[T], error)) ([]*T, error) {
	var out []*T
	o := store.ListOptions{PageSize: store.MaxPageSize}
	for {
		p, err := list(o)
		if err != nil {
			return nil, err
		}
		out = append(out, p.Items...)
		if p.NextPageToken == "" {
			return out, nil
		}
		o.PageToken = p.NextPageToken
	}
}

const feedPage = 1000

// Load reads every network from the store into the engine. Changes committed while it reads are
// applied afterwards (the feed position is taken first), so nothing is missed.
func (l *Loader) Load(ctx context.Context) error {
	l.applyMu.Lock()
	defer l.applyMu.Unlock()
	// The feed position first: what commits while the networks are read is applied afterwards.
	start, err := l.o.Store.LatestChangeID(ctx)
	if err != nil {
		return fmt.Errorf("mapsync: read change feed head: %w", err)
	}
	var (
		tenants  []*domain.Tenant
		cvlans   []*domain.Cvlan
		nodes    []*domain.Node
		groups   []*domain.Group
		policies []*domain.Policy
		relays   []*domain.Relay
		regions  []*domain.Region
	)
	err = l.o.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		if tenants, err = listAll(func(o store.ListOptions) (*store.Page[domain.Tenant], error) {
			return tx.ListTenants(ctx, store.TenantFilter{}, o)
		}); err != nil {
			return err
		}
		if cvlans, err = listAll(func(o store.ListOptions) (*store.Page[domain.Cvlan], error) {
			return tx.ListCvlans(ctx, store.CvlanFilter{}, o)
		}); err != nil {
			return err
		}
		if nodes, err = listAll(func(o store.ListOptions) (*store.Page[domain.Node], error) {
			return tx.ListNodes(ctx, store.NodeFilter{}, o)
		}); err != nil {
			return err
		}
		if groups, err = listAll(func(o store.ListOptions) (*store.Page[domain.Group], error) {
			return tx.ListGroups(ctx, store.GroupFilter{}, o)
		}); err != nil {
			return err
		}
		if policies, err = listAll(func(o store.ListOptions) (*store.Page[domain.Policy], error) {
			return tx.ListPolicies(ctx, store.PolicyFilter{}, o)
		}); err != nil {
			return err
		}
		if relays, err = listAll(func(o store.ListOptions) (*store.Page[domain.Relay], error) {
			return tx.ListRelays(ctx, store.RelayFilter{}, o)
		}); err != nil {
			return err
		}
		regions, err = listAll(func(o store.ListOptions) (*store.Page[domain.Region], error) {
			return tx.ListRegions(ctx, store.RegionFilter{}, o)
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("mapsync: load: %w", err)
	}

	l.mu.Lock()
	l.relays, l.regions = relays, regions
	for _, t := range tenants {
		ti := l.tenantLocked(t.ID)
		ti.settings = t.Settings
	}
	groupsByTenant := map[string][]*domain.Group{}
	for _, g := range groups {
		groupsByTenant[g.TenantID] = append(groupsByTenant[g.TenantID], g)
	}
	for tid, gs := range groupsByTenant {
		l.tenantLocked(tid).setGroups(gs)
	}
	for tid, ti := range l.tenants {
		ti.relay = relayMapFor(tid, relays, regions)
	}
	l.mu.Unlock()

	polByTenant := map[string][]policy.Policy{}
	for _, p := range policies {
		polByTenant[p.TenantID] = append(polByTenant[p.TenantID], policyOf(p))
	}
	nodesByCvlan := map[string][]*domain.Node{}
	for _, n := range nodes {
		nodesByCvlan[n.CvlanID] = append(nodesByCvlan[n.CvlanID], n)
	}
	for _, c := range cvlans {
		l.mu.Lock()
		ti := l.tenantLocked(c.TenantID)
		id := netmap.NetworkID{Tenant: c.TenantID, Cvlan: c.ID}
		nw, cfg := networkOf(c, ti.settings)
		l.networks[id] = nw
		ti.cvlans[c.ID] = true
		var ens []netmap.Node
		var live []*domain.Node
		for _, n := range nodesByCvlan[c.ID] {
			if n.Status == domain.NodeQuarantined {
				continue
			}
			en := engineNode(n, ti)
			ens = append(ens, en)
			live = append(live, n)
			l.nodes[n.ID] = &nodeInfo{network: id, node: en, kind: n.Kind}
		}
		relay := ti.relay
		l.mu.Unlock()
		if err := l.o.Engine.Load(id, cfg, ens, polByTenant[c.TenantID], &relay); err != nil {
			// A network that does not load (an invalid stored policy, a name clash) must not keep the
			// others dark: it is logged and retried by the next change that touches it.
			l.log.ErrorContext(ctx, "mapsync: load network", "tenant", c.TenantID, "cvlan", c.ID, "err", err)
			continue
		}
		if l.o.Observer != nil {
			for _, n := range live {
				l.o.Observer.NodeLive(n)
			}
		}
	}
	l.lastID = start
	l.log.InfoContext(ctx, "mapsync: loaded", "networks", len(cvlans), "nodes", len(nodes), "feed_position", start)
	return l.catchUpLocked(ctx)
}

// Run follows the change feed until ctx ends.
func (l *Loader) Run(ctx context.Context) error {
	wake, err := l.o.Store.Watch(ctx)
	if err != nil {
		return fmt.Errorf("mapsync: watch: %w", err)
	}
	t := time.NewTicker(l.o.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-wake:
			if !ok {
				return nil
			}
		case <-t.C:
		}
		if err := l.CatchUp(ctx); err != nil && ctx.Err() == nil {
			l.log.WarnContext(ctx, "mapsync: apply changes", "err", err)
		}
	}
}

// CatchUp applies every change committed so far. Handlers call it when they need a change they just
// committed (an enrolled node's first stream) without waiting for the feed's wake-up.
func (l *Loader) CatchUp(ctx context.Context) error {
	l.applyMu.Lock()
	defer l.applyMu.Unlock()
	return l.catchUpLocked(ctx)
}

func (l *Loader) catchUpLocked(ctx context.Context) error {
	for {
		evs, err := l.o.Store.ChangesSince(ctx, l.lastID, feedPage)
		if err != nil {
			return fmt.Errorf("mapsync: read change feed after %d: %w", l.lastID, err)
		}
		if len(evs) == 0 {
			return nil
		}
		if err := l.apply(ctx, evs); err != nil {
			return err
		}
		l.lastID = evs[len(evs)-1].ID
		if l.o.OnChanges != nil {
			l.o.OnChanges(evs)
		}
	}
}

// apply handles one page of events. Repeated events of one resource are read once: the store holds
// the latest state, and applying it is idempotent.
func (l *Loader) apply(ctx context.Context, evs []domain.ChangeEvent) error {
	var (
		nodeIDs       []string
		seenNode      = map[string]bool{}
		cvlanIDs      = map[string]string{} // cvlan id -> tenant
		tenantIDs     = map[string]bool{}
		policyTenants = map[string]bool{}
		groupTenants  = map[string]bool{}
		relaysChanged bool
	)
	for _, e := range evs {
		switch e.ResourceType {
		case domain.ResourceNode:
			if !seenNode[e.ResourceID] {
				seenNode[e.ResourceID] = true
				nodeIDs = append(nodeIDs, e.ResourceID)
			}
		case domain.ResourceCvlan:
			cvlanIDs[e.ResourceID] = e.TenantID
		case domain.ResourceTenant:
			tenantIDs[e.ResourceID] = true
		case domain.ResourcePolicy:
			policyTenants[e.TenantID] = true
		case domain.ResourceGroup: // user events need nothing: memberships live on groups
			groupTenants[e.TenantID] = true
		case domain.ResourceRelay, domain.ResourceRegion:
			relaysChanged = true
		}
	}
	// Order: what networks exist and look like, then who is in them, then who may talk to whom.
	for tid := range tenantIDs {
		if err := l.applyTenant(ctx, tid); err != nil {
			return err
		}
	}
	for cid, tid := range cvlanIDs {
		if err := l.applyCvlan(ctx, tid, cid); err != nil {
			return err
		}
	}
	if relaysChanged {
		if err := l.applyRelays(ctx); err != nil {
			return err
		}
	}
	for tid := range groupTenants {
		if err := l.applyGroups(ctx, tid); err != nil {
			return err
		}
	}
	if err := l.applyNodes(ctx, nodeIDs); err != nil {
		return err
	}
	for tid := range policyTenants {
		if err := l.applyPolicies(ctx, tid); err != nil {
			return err
		}
	}
	return nil
}

func (l *Loader) tenantLocked(id string) *tenantInfo {
	ti := l.tenants[id]
	if ti == nil {
		ti = &tenantInfo{cvlans: map[string]bool{}}
		l.tenants[id] = ti
	}
	return ti
}

func (ti *tenantInfo) setGroups(gs []*domain.Group) {
	ti.groupsByNode = map[string][]string{}
	ti.groupsByUser = map[string][]string{}
	for _, g := range gs {
		for _, m := range g.Members {
			if m.NodeID != "" {
				ti.groupsByNode[m.NodeID] = append(ti.groupsByNode[m.NodeID], g.ID)
			}
			if m.UserID != "" {
				ti.groupsByUser[m.UserID] = append(ti.groupsByUser[m.UserID], g.ID)
			}
		}
	}
}

func (l *Loader) applyTenant(ctx context.Context, tid string) error {
	var t *domain.Tenant
	err := l.o.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		t, err = tx.GetTenant(ctx, tid)
		return err
	})
	if store.IsNotFound(err) {
		// Its cvlans and nodes arrive as their own delete events.
		return nil
	}
	if err != nil {
		return fmt.Errorf("mapsync: read tenant %s: %w", tid, err)
	}
	l.mu.Lock()
	ti := l.tenantLocked(tid)
	old := ti.settings
	ti.settings = t.Settings
	cvlans := make([]string, 0, len(ti.cvlans))
	for c := range ti.cvlans {
		cvlans = append(cvlans, c)
	}
	l.mu.Unlock()
	if old.DNSDomain != t.Settings.DNSDomain {
		for _, c := range cvlans {
			if err := l.applyCvlan(ctx, tid, c); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *Loader) applyCvlan(ctx context.Context, tid, cid string) error {
	var c *domain.Cvlan
	err := l.o.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		c, err = tx.GetCvlan(ctx, cid)
		return err
	})
	id := netmap.NetworkID{Tenant: tid, Cvlan: cid}
	if store.IsNotFound(err) {
		l.o.Engine.RemoveNetwork(id)
		l.mu.Lock()
		delete(l.networks, id)
		if ti := l.tenants[tid]; ti != nil {
			delete(ti.cvlans, cid)
		}
		l.mu.Unlock()
		return nil
	}
	if err != nil {
		return fmt.Errorf("mapsync: read cvlan %s: %w", cid, err)
	}
	l.mu.Lock()
	ti := l.tenantLocked(c.TenantID)
	nw, cfg := networkOf(c, ti.settings)
	old, existed := l.networks[id]
	l.networks[id] = nw
	ti.cvlans[c.ID] = true
	relay := ti.relay
	l.mu.Unlock()
	if !existed {
		// A new network: policies and relays now, nodes as their events come.
		var pols []policy.Policy
		if err := l.readPolicies(ctx, tid, &pols); err != nil {
			return err
		}
		if err := l.o.Engine.Load(id, cfg, nil, pols, &relay); err != nil {
			return fmt.Errorf("mapsync: load network %s: %w", cid, err)
		}
		return nil
	}
	ds := l.o.Engine.SetNetworkConfig(id, cfg)
	if len(ds) > 0 {
		l.o.Sink.Deliver(ds)
	} else if !dnsEqual(old.DNS, nw.DNS) {
		// Split DNS is ours, not the engine's: the same version with other DNS settings needs a
		// snapshot.
		l.o.Sink.Resync(l.nodesOf(id))
	}
	return nil
}

func (l *Loader) nodesOf(id netmap.NetworkID) []string {
	l.mu.RLock()
	defer l.mu.RUnlock()
	var out []string
	for nid, ni := range l.nodes {
		if ni.network == id {
			out = append(out, nid)
		}
	}
	return out
}

func (l *Loader) readPolicies(ctx context.Context, tid string, out *[]policy.Policy) error {
	err := l.o.Store.ReadTx(ctx, store.TenantScope(tid), func(tx store.Tx) error {
		ps, err := listAll(func(o store.ListOptions) (*store.Page[domain.Policy], error) {
			return tx.ListPolicies(ctx, store.PolicyFilter{}, o)
		})
		for _, p := range ps {
			*out = append(*out, policyOf(p))
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("mapsync: read policies of tenant %s: %w", tid, err)
	}
	return nil
}

func (l *Loader) applyPolicies(ctx context.Context, tid string) error {
	var pols []policy.Policy
	if err := l.readPolicies(ctx, tid, &pols); err != nil {
		return err
	}
	l.mu.RLock()
	var nets []netmap.NetworkID
	if ti := l.tenants[tid]; ti != nil {
		for c := range ti.cvlans {
			nets = append(nets, netmap.NetworkID{Tenant: tid, Cvlan: c})
		}
	}
	l.mu.RUnlock()
	for _, id := range nets {
		ds, err := l.o.Engine.SetPolicies(id, pols)
		if err != nil {
			l.log.ErrorContext(ctx, "mapsync: policies not applied", "tenant", tid, "cvlan", id.Cvlan, "err", err)
			continue
		}
		l.o.Sink.Deliver(ds)
	}
	return nil
}

func (l *Loader) applyGroups(ctx context.Context, tid string) error {
	var gs []*domain.Group
	err := l.o.Store.ReadTx(ctx, store.TenantScope(tid), func(tx store.Tx) error {
		var err error
		gs, err = listAll(func(o store.ListOptions) (*store.Page[domain.Group], error) {
			return tx.ListGroups(ctx, store.GroupFilter{}, o)
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("mapsync: read groups of tenant %s: %w", tid, err)
	}
	type change struct {
		id   netmap.NetworkID
		node netmap.Node
	}
	var changes []change
	l.mu.Lock()
	ti := l.tenantLocked(tid)
	ti.setGroups(gs)
	for _, ni := range l.nodes {
		if ni.network.Tenant != tid {
			continue
		}
		g := groupsOf(ni.node.ID, ni.node.UserID, ti)
		if !slices.Equal(g, ni.node.GroupIDs) {
			ni.node.GroupIDs = g
			changes = append(changes, change{ni.network, ni.node})
		}
	}
	l.mu.Unlock()
	for _, c := range changes {
		ds, err := l.o.Engine.UpsertNode(c.id, c.node)
		if err != nil {
			l.log.ErrorContext(ctx, "mapsync: group change not applied", "node", c.node.ID, "err", err)
			continue
		}
		l.o.Sink.Deliver(ds)
	}
	return nil
}

func (l *Loader) applyRelays(ctx context.Context) error {
	var (
		relays  []*domain.Relay
		regions []*domain.Region
	)
	err := l.o.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		if relays, err = listAll(func(o store.ListOptions) (*store.Page[domain.Relay], error) {
			return tx.ListRelays(ctx, store.RelayFilter{}, o)
		}); err != nil {
			return err
		}
		regions, err = listAll(func(o store.ListOptions) (*store.Page[domain.Region], error) {
			return tx.ListRegions(ctx, store.RegionFilter{}, o)
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("mapsync: read relays: %w", err)
	}
	type upd struct {
		id netmap.NetworkID
		rm netmap.RelayMap
	}
	var ups []upd
	l.mu.Lock()
	l.relays, l.regions = relays, regions
	for tid, ti := range l.tenants {
		ti.relay = relayMapFor(tid, relays, regions)
		for c := range ti.cvlans {
			ups = append(ups, upd{netmap.NetworkID{Tenant: tid, Cvlan: c}, ti.relay})
		}
	}
	l.mu.Unlock()
	for _, u := range ups {
		l.o.Sink.Deliver(l.o.Engine.SetRelayMap(u.id, u.rm))
	}
	return nil
}

func (l *Loader) applyNodes(ctx context.Context, ids []string) error {
	if len(ids) == 0 {
		return nil
	}
	found := make(map[string]*domain.Node, len(ids))
	err := l.o.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		for _, id := range ids {
			n, err := tx.GetNode(ctx, id)
			if store.IsNotFound(err) {
				continue
			}
			if err != nil {
				return err
			}
			found[id] = n
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mapsync: read nodes: %w", err)
	}
	for _, id := range ids {
		n := found[id]
		if n == nil || n.Status == domain.NodeQuarantined {
			reason := "node deleted"
			if n != nil {
				reason = "node quarantined"
				if n.QuarantineReason != "" {
					reason += ": " + n.QuarantineReason
				}
			}
			l.removeNode(ctx, id, n, reason)
			continue
		}
		if err := l.upsertNode(ctx, n); err != nil {
			l.log.ErrorContext(ctx, "mapsync: node not applied", "tenant", n.TenantID, "node", n.ID, "err", err)
		}
	}
	return nil
}

func (l *Loader) removeNode(ctx context.Context, id string, n *domain.Node, reason string) {
	l.mu.Lock()
	ni := l.nodes[id]
	delete(l.nodes, id)
	l.mu.Unlock()
	tenant := ""
	if n != nil {
		tenant = n.TenantID
	}
	if ni != nil {
		tenant = ni.network.Tenant
		ds, err := l.o.Engine.RemoveNode(ni.network, id)
		if err != nil && !errors.Is(err, netmap.ErrUnknownNode) && !errors.Is(err, netmap.ErrUnknownNetwork) {
			l.log.WarnContext(ctx, "mapsync: remove node", "node", id, "err", err)
		}
		l.o.Sink.Deliver(ds)
	}
	if l.o.Observer != nil {
		l.o.Observer.NodeRevoked(tenant, id, reason)
	}
}

func (l *Loader) upsertNode(ctx context.Context, n *domain.Node) error {
	id := netmap.NetworkID{Tenant: n.TenantID, Cvlan: n.CvlanID}
	l.mu.RLock()
	_, known := l.networks[id]
	l.mu.RUnlock()
	if !known {
		// The cvlan's own event may come later in this page; load it now.
		if err := l.applyCvlan(ctx, n.TenantID, n.CvlanID); err != nil {
			return err
		}
	}
	l.mu.Lock()
	ti := l.tenantLocked(n.TenantID)
	en := engineNode(n, ti)
	l.nodes[n.ID] = &nodeInfo{network: id, node: en, kind: n.Kind}
	l.mu.Unlock()
	ds, err := l.o.Engine.UpsertNode(id, en)
	if err != nil {
		return err
	}
	if l.o.Observer != nil {
		l.o.Observer.NodeLive(n)
	}
	l.o.Sink.Deliver(ds)
	return nil
}

func groupsOf(nodeID, userID string, ti *tenantInfo) []string {
	var g []string
	g = append(g, ti.groupsByNode[nodeID]...)
	if userID != "" {
		g = append(g, ti.groupsByUser[userID]...)
	}
	slices.Sort(g)
	return slices.Compact(g)
}

// SameForMaps reports whether two versions of a node give the same network maps as far as fields
// that change without an admin are concerned (status, endpoints, home relay, routes): the status
// writer stores a change that keeps them equal without a node change event, so that no replica
// re-reads the node. Group membership and policies are not node fields and do not matter here.
func SameForMaps(a, b *domain.Node) bool {
	if (a.Status == domain.NodeQuarantined) != (b.Status == domain.NodeQuarantined) {
		return false
	}
	var ti tenantInfo
	return reflect.DeepEqual(engineNode(a, &ti), engineNode(b, &ti))
}

// engineNode is the engine's record of a stored node.
func engineNode(n *domain.Node, ti *tenantInfo) netmap.Node {
	en := netmap.Node{
		ID: n.ID, Name: n.Name, Key: n.WireGuardPublicKey, Tags: slices.Clone(n.Tags), UserID: n.UserID,
		HomeRelay: n.HomeRelayID, Online: n.Status == domain.NodeOnline,
		GroupIDs: groupsOf(n.ID, n.UserID, ti),
	}
	slices.Sort(en.Tags)
	for _, a := range []netip.Addr{n.IPv4Address, n.IPv6Address} {
		if a.IsValid() {
			en.Addresses = append(en.Addresses, a)
		}
	}
	for _, r := range n.Routes {
		if r.Advertised && r.Approved {
			en.Routes = append(en.Routes, r.CIDR)
		}
	}
	for _, e := range n.Endpoints {
		if e.Address.IsValid() {
			en.Endpoints = append(en.Endpoints, e.Address)
		}
	}
	return en
}

// networkOf returns what the views of a cvlan need.
// DefaultDNSDomain is the mesh DNS domain of a cvlan whose cvlan and tenant name none.
const DefaultDNSDomain = "cloudvlan.internal"

func networkOf(c *domain.Cvlan, ts domain.TenantSettings) (convert.Network, netmap.NetworkConfig) {
	domainName := c.DNSDomain
	if domainName == "" {
		domainName = ts.DNSDomain
	}
	if domainName == "" {
		// Mesh names work on a fresh tenant too: <node>.<cvlan>.cloudvlan.internal.
		domainName = DefaultDNSDomain
	}
	dns := &nodev1.DnsConfig{Domain: domainName}
	for _, r := range c.SplitDNS {
		sr := &nodev1.SplitDnsRoute{Domain: r.Domain}
		for _, a := range r.Nameservers {
			sr.Resolvers = append(sr.Resolvers, netip.AddrPortFrom(a, 53).String())
		}
		dns.SplitRoutes = append(dns.SplitRoutes, sr)
	}
	nw := convert.Network{TenantID: c.TenantID, CvlanID: c.ID, IPv4Bits: c.IPv4CIDR.Bits(), IPv6Bits: c.IPv6CIDR.Bits(), DNS: dns}
	if !c.IPv4CIDR.IsValid() {
		nw.IPv4Bits = 0
	}
	if !c.IPv6CIDR.IsValid() {
		nw.IPv6Bits = 0
	}
	return nw, netmap.NetworkConfig{CvlanName: c.Name, Domain: domainName}
}

func dnsEqual(a, b *nodev1.DnsConfig) bool {
	if a.GetDomain() != b.GetDomain() || len(a.GetSplitRoutes()) != len(b.GetSplitRoutes()) {
		return false
	}
	for i, r := range a.GetSplitRoutes() {
		o := b.GetSplitRoutes()[i]
		if r.GetDomain() != o.GetDomain() || !slices.Equal(r.GetResolvers(), o.GetResolvers()) {
			return false
		}
	}
	return true
}

var (
	actionOf   = map[domain.PolicyAction]policy.Action{domain.ActionAllow: policy.ActionAllow, domain.ActionDeny: policy.ActionDeny}
	protocolOf = map[domain.Protocol]policy.Protocol{
		domain.ProtocolAny: policy.ProtoAny, "": policy.ProtoAny, domain.ProtocolTCP: policy.ProtoTCP,
		domain.ProtocolUDP: policy.ProtoUDP, domain.ProtocolICMP: policy.ProtoICMP,
	}
)

func targetOf(t domain.PolicyTarget) policy.Target {
	switch {
	case t.Any:
		return policy.Any()
	case t.UserID != "":
		return policy.User(t.UserID)
	case t.GroupID != "":
		return policy.Group(t.GroupID)
	case t.Tag != "":
		return policy.Tag(t.Tag)
	case t.NodeID != "":
		return policy.Node(t.NodeID)
	case t.CIDR.IsValid():
		return policy.CIDR(t.CIDR.Masked())
	}
	return policy.Target{}
}

// policyOf converts a stored policy; Priority only orders output (deny wins regardless).
func policyOf(p *domain.Policy) policy.Policy {
	out := policy.Policy{ID: p.ID, Enabled: p.Enabled, CvlanID: p.CvlanID, Priority: int(p.Priority)}
	for _, r := range p.Rules {
		pr := policy.Rule{Action: actionOf[r.Action], Protocol: protocolOf[r.Protocol]}
		for _, s := range r.Sources {
			pr.Sources = append(pr.Sources, targetOf(s))
		}
		for _, d := range r.Destinations {
			pr.Destinations = append(pr.Destinations, targetOf(d))
		}
		for _, pt := range r.Ports {
			last := pt.Last
			if last == 0 {
				last = pt.First
			}
			pr.Ports = append(pr.Ports, policy.PortRange{First: uint16(pt.First), Last: uint16(last)})
		}
		out.Rules = append(out.Rules, pr)
	}
	return out
}

// relayMapFor is the relay map of a tenant: its own relays and the shared ones (no tenant), by region.
func relayMapFor(tid string, relays []*domain.Relay, regions []*domain.Region) netmap.RelayMap {
	byRegion := map[string]*netmap.RelayRegion{}
	for _, g := range regions {
		byRegion[g.ID] = &netmap.RelayRegion{ID: g.ID, Code: g.Code, Name: g.Name}
	}
	for _, r := range relays {
		if (r.TenantID != tid && r.TenantID != "") || len(r.Addresses) == 0 {
			continue
		}
		reg := byRegion[r.RegionID]
		if reg == nil {
			reg = &netmap.RelayRegion{ID: r.RegionID}
			byRegion[r.RegionID] = reg
		}
		host := r.Hostname
		if host == "" {
			if h, _, err := net.SplitHostPort(r.Addresses[0]); err == nil {
				host = h
			} else {
				host = r.Addresses[0]
			}
		}
		reg.Relays = append(reg.Relays, netmap.Relay{ID: r.ID, Hostname: host, URL: "https://" + r.Addresses[0] + "/relay", STUNAddress: r.STUNAddress})
	}
	var rm netmap.RelayMap
	for _, reg := range byRegion {
		if len(reg.Relays) == 0 {
			continue
		}
		sort.Slice(reg.Relays, func(i, j int) bool { return reg.Relays[i].ID < reg.Relays[j].ID })
		rm.Regions = append(rm.Regions, *reg)
	}
	sort.Slice(rm.Regions, func(i, j int) bool { return rm.Regions[i].ID < rm.Regions[j].ID })
	return rm
}
