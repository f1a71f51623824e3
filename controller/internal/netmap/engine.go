package netmap

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
)

var (
	// ErrTooOld means the deltas since the requested version are no longer held
	// (or the epoch is not the node's current one): send a snapshot instead.
	ErrTooOld = errors.New("netmap: version too old, snapshot required")
	// ErrUnknownNode means the network has no node with that id.
	ErrUnknownNode = errors.New("netmap: unknown node")
	// ErrUnknownNetwork means the engine holds no such network.
	ErrUnknownNetwork = errors.New("netmap: unknown network")
	// ErrInvalidNode means a node record cannot be used (e.g. empty id).
	ErrInvalidNode = errors.New("netmap: invalid node")
	// ErrNameConflict means another node of the network has the same name, which
	// would give two nodes one DNS name.
	ErrNameConflict = errors.New("netmap: node name already used in this network")
)

// DefaultHistory is the number of deltas kept per node when Options.History is 0.
const DefaultHistory = 32

// DefaultMaxDeltaPeers is Options.MaxDeltaPeers when it is 0.
const DefaultMaxDeltaPeers = 1000

// Options configure an Engine.
type Options struct {
	// History is how many deltas each node keeps for resumption (a ring per
	// node, allocated as deltas arrive, so idle nodes cost nothing). 0 means
	// DefaultHistory.
	History int
	// MaxDeltaPeers bounds the peers one policy change may add to or remove
	// from one node's view as a delta; beyond it the node gets a Resync delta
	// (and a snapshot from the caller). Without it, turning a 100,000-node
	// network all-to-all would build 10^10 peer entries in memory at once.
	// 0 means DefaultMaxDeltaPeers; negative means no limit.
	MaxDeltaPeers int
}

// Engine holds the networks (tenant+cvlan) of one controller replica and computes
// views and deltas. It is safe for concurrent use: each network has its own
// RWMutex; a change holds its network's write lock while it computes and records
// deltas, and Snapshot/DeltasSince take the read lock, so readers of a network
// wait for at most one change in progress and never see half of one. It starts
// no goroutines.
//
// Methods take no context.Context: they do no I/O and never block on anything
// but the network's lock.
type Engine struct {
	history       int
	maxDeltaPeers int

	mu       sync.RWMutex
	networks map[NetworkID]*network

	// epochs hands out a unique epoch per node incarnation; the random base
	// makes epochs differ between replicas and restarts.
	epochs atomic.Uint64
}

// New returns an empty Engine.
func New(opts Options) *Engine {
	h := opts.History
	if h <= 0 {
		h = DefaultHistory
	}
	m := opts.MaxDeltaPeers
	if m == 0 {
		m = DefaultMaxDeltaPeers
	}
	e := &Engine{history: h, maxDeltaPeers: m, networks: make(map[NetworkID]*network)}
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	e.epochs.Store(binary.LittleEndian.Uint64(b[:]) &^ (1<<20 - 1))
	return e
}

func (e *Engine) newEpoch() uint64 { return e.epochs.Add(1) }

type network struct {
	e       *Engine
	mu      sync.RWMutex
	id      NetworkID
	cfg     NetworkConfig
	dir     *policy.Directory
	pol     *policy.Compiled
	relay   *RelayMap
	nodes   map[string]*nodeState
	names   map[string]string // lower-case name -> node id
	history int
}

// nodeState is everything the engine keeps per node. It holds no peer list and
// no filter: both are recomputed from the policy index when needed, which keeps
// memory per node independent of the number of peers.
type nodeState struct {
	node       Node
	peer       *Peer // immutable, shared by the deltas and snapshots that list it
	epoch      uint64
	version    uint64
	filterHash uint64
	hist       ring
}

// ring keeps the last deltas of a node.
type ring struct {
	buf   []*Delta
	start int
}

func (r *ring) push(d *Delta, max int) {
	if len(r.buf) < max {
		r.buf = append(r.buf, d)
		return
	}
	r.buf[r.start] = d
	r.start = (r.start + 1) % max
}

// last returns the n most recent deltas, oldest first; n <= len(r.buf).
func (r *ring) last(n int) []*Delta {
	out := make([]*Delta, 0, n)
	l := len(r.buf)
	for i := l - n; i < l; i++ {
		out = append(out, r.buf[(r.start+i)%l])
	}
	return out
}

func (e *Engine) network(id NetworkID, create bool) *network {
	e.mu.RLock()
	nw := e.networks[id]
	e.mu.RUnlock()
	if nw != nil || !create {
		return nw
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if nw = e.networks[id]; nw == nil {
		nw = e.newNetwork(id, NetworkConfig{})
		e.networks[id] = nw
	}
	return nw
}

func (e *Engine) newNetwork(id NetworkID, cfg NetworkConfig) *network {
	return &network{
		e:       e,
		id:      id,
		cfg:     cfg,
		dir:     policy.NewDirectory(),
		nodes:   make(map[string]*nodeState),
		names:   make(map[string]string),
		history: e.history,
	}
}

// RemoveNetwork drops a network and all its state.
func (e *Engine) RemoveNetwork(id NetworkID) {
	e.mu.Lock()
	delete(e.networks, id)
	e.mu.Unlock()
}

// Load replaces a network's whole state at once (start-up from the store, or
// recovery after a lost change feed) without computing deltas: every node gets a
// new epoch, so agents resuming from an earlier one get ErrTooOld and a snapshot.
// It compiles the policies once.
func (e *Engine) Load(id NetworkID, cfg NetworkConfig, nodes []Node, policies []policy.Policy, relay *RelayMap) error {
	c, err := policy.Compile(policies, id.Cvlan)
	if err != nil {
		return fmt.Errorf("load network %s/%s: %w", id.Tenant, id.Cvlan, err)
	}
	nw := e.newNetwork(id, cfg)
	nw.pol = c
	nw.relay = cloneRelayMap(relay)
	nw.dir.Track(c.CIDRs())
	for _, n := range nodes {
		if err := nw.checkNode(&n); err != nil {
			return fmt.Errorf("load network %s/%s: %w", id.Tenant, id.Cvlan, err)
		}
		if _, dup := nw.nodes[n.ID]; dup {
			return fmt.Errorf("load network %s/%s: %w: duplicate id %q", id.Tenant, id.Cvlan, ErrInvalidNode, n.ID)
		}
		n = cloneNode(n)
		st := &nodeState{node: n, peer: nw.peerOf(&n), epoch: e.newEpoch(), version: 1}
		a := attrsOf(&n)
		a.Ref = st
		nw.dir.Put(a)
		nw.nodes[n.ID] = st
		if k := nameKey(n.Name); k != "" {
			nw.names[k] = n.ID
		}
	}
	srcs := policy.NewSourceCache()
	for _, st := range nw.nodes {
		st.filterHash = policy.HashFilter(c.FilterCached(nw.dir, attrsOf(&st.node), srcs))
	}
	e.mu.Lock()
	e.networks[id] = nw
	e.mu.Unlock()
	return nil
}

// SetNetworkConfig sets a network's DNS settings, creating the network if
// needed. A change renames every DNS record, so instead of a delta per record it
// returns a Resync delta for every node: each needs a snapshot.
func (e *Engine) SetNetworkConfig(id NetworkID, cfg NetworkConfig) []*Delta {
	nw := e.network(id, true)
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.cfg == cfg {
		return nil
	}
	nw.cfg = cfg
	b := nw.newBatch(len(nw.nodes))
	for _, st := range nw.nodes {
		st.peer = nw.peerOf(&st.node)
		b.resync(st)
	}
	return b.commit()
}

func nameKey(name string) string { return strings.ToLower(name) }

func (nw *network) checkNode(n *Node) error {
	if n.ID == "" {
		return fmt.Errorf("%w: empty id", ErrInvalidNode)
	}
	if k := nameKey(n.Name); k != "" {
		if other, ok := nw.names[k]; ok && other != n.ID {
			return fmt.Errorf("%w: %q is node %s", ErrNameConflict, n.Name, other)
		}
	}
	return nil
}

func (nw *network) fqdn(name string) string {
	if nw.cfg.Domain == "" || name == "" {
		return ""
	}
	var b strings.Builder
	b.WriteString(strings.ToLower(name))
	if nw.cfg.CvlanName != "" {
		b.WriteByte('.')
		b.WriteString(strings.ToLower(nw.cfg.CvlanName))
	}
	b.WriteByte('.')
	b.WriteString(strings.Trim(strings.ToLower(nw.cfg.Domain), "."))
	return b.String()
}

func (nw *network) record(n *Node) (DNSRecord, bool) {
	f := nw.fqdn(n.Name)
	return DNSRecord{FQDN: f, Addresses: n.Addresses}, f != ""
}

// record is the node's DNS record, from the FQDN cached in its peer entry.
func (st *nodeState) record() (DNSRecord, bool) {
	return DNSRecord{FQDN: st.peer.FQDN, Addresses: st.node.Addresses}, st.peer.FQDN != ""
}

func attrsOf(n *Node) policy.NodeAttrs {
	return policy.NodeAttrs{ID: n.ID, UserID: n.UserID, GroupIDs: n.GroupIDs, Tags: n.Tags, Addresses: n.Addresses, Routes: n.Routes}
}

func attrsEqual(a, b policy.NodeAttrs) bool {
	return a.ID == b.ID && a.UserID == b.UserID && slices.Equal(a.GroupIDs, b.GroupIDs) &&
		slices.Equal(a.Tags, b.Tags) && slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Routes, b.Routes)
}

func (nw *network) peerOf(n *Node) *Peer {
	allowed := make([]netip.Prefix, 0, len(n.Addresses)+len(n.Routes))
	for _, a := range n.Addresses {
		allowed = append(allowed, netip.PrefixFrom(a, a.BitLen()))
	}
	allowed = append(allowed, n.Routes...)
	return &Peer{
		NodeID: n.ID, Name: n.Name, FQDN: nw.fqdn(n.Name), Key: n.Key, Tags: n.Tags, Addresses: n.Addresses, AllowedIPs: allowed,
		Endpoints: n.Endpoints, HomeRelay: n.HomeRelay, Online: n.Online,
	}
}

func peerEqual(a, b *Peer) bool {
	return a.NodeID == b.NodeID && a.Name == b.Name && a.FQDN == b.FQDN && a.Key == b.Key &&
		slices.Equal(a.Tags, b.Tags) && slices.Equal(a.Addresses, b.Addresses) &&
		slices.Equal(a.AllowedIPs, b.AllowedIPs) && slices.Equal(a.Endpoints, b.Endpoints) &&
		a.HomeRelay == b.HomeRelay && a.Online == b.Online
}

func (nw *network) selfOf(n *Node) Self {
	return Self{NodeID: n.ID, Name: n.Name, FQDN: nw.fqdn(n.Name), Key: n.Key, Addresses: n.Addresses, Tags: n.Tags, Routes: n.Routes}
}

func selfEqual(a, b Self) bool {
	return a.NodeID == b.NodeID && a.Name == b.Name && a.FQDN == b.FQDN && a.Key == b.Key &&
		slices.Equal(a.Addresses, b.Addresses) && slices.Equal(a.Tags, b.Tags) && slices.Equal(a.Routes, b.Routes)
}

// cloneNode copies the slices so that the caller may reuse its Node.
func cloneNode(n Node) Node {
	n.Addresses = slices.Clone(n.Addresses)
	n.Tags = slices.Clone(n.Tags)
	n.GroupIDs = slices.Clone(n.GroupIDs)
	n.Routes = slices.Clone(n.Routes)
	n.Endpoints = slices.Clone(n.Endpoints)
	return n
}

// batch collects the deltas of one change, one per affected node.
type batch struct {
	nw   *network
	srcs *policy.SourceCache
	// order holds the drafts; index finds them by node id and is built lazily,
	// so a fan-out to N fresh nodes (a join in an all-to-all network) costs no
	// map operation at all.
	order   []*draft
	index   map[string]*draft
	indexed int // order[:indexed] is in index
}

// draft is a delta being built; owned is false while its Change is shared with
// other nodes and must be copied before it is modified.
type draft struct {
	d      Delta // in the draft, so a fan-out allocates once per node
	st     *nodeState
	owned  bool
	resync bool
}

// newBatch starts a batch; hint is the expected number of affected nodes.
func (nw *network) newBatch(hint int) *batch {
	return &batch{nw: nw, order: make([]*draft, 0, hint), srcs: policy.NewSourceCache()}
}

func (b *batch) lookup(id string) *draft {
	if b.index == nil {
		b.index = make(map[string]*draft, len(b.order))
	}
	for ; b.indexed < len(b.order); b.indexed++ {
		dr := b.order[b.indexed]
		b.index[dr.d.NodeID] = dr
	}
	return b.index[id]
}

func (b *batch) add(st *nodeState, c *Change, owned bool) *draft {
	dr := &draft{d: Delta{NodeID: st.node.ID, Change: c}, st: st, owned: owned}
	b.order = append(b.order, dr)
	return dr
}

// mut returns a Change of the node's own, to modify.
func (b *batch) mut(st *nodeState) *Change {
	dr := b.lookup(st.node.ID)
	if dr == nil {
		dr = b.add(st, &Change{}, true)
	} else if !dr.owned {
		dr.d.Change = dr.d.Change.clone()
		dr.owned = true
	}
	return dr.d.Change
}

// share gives the node the change c, shared with the other nodes given c.
func (b *batch) share(st *nodeState, c *Change) {
	if dr := b.lookup(st.node.ID); dr != nil {
		b.mut(st).merge(c)
		return
	}
	b.add(st, c, false)
}

// fanout shares c with every node of refs (*nodeState, each once). Into an
// empty batch it appends without lookups.
func (b *batch) fanout(refs []any, c *Change) {
	if len(b.order) == 0 {
		for _, r := range refs {
			b.add(r.(*nodeState), c, false)
		}
		return
	}
	for _, r := range refs {
		b.share(r.(*nodeState), c)
	}
}

// resync marks the node for a snapshot; whatever else the batch gives it is
// dropped at commit.
func (b *batch) resync(st *nodeState) {
	b.mut(st)
	b.lookup(st.node.ID).resync = true
}

func (c *Change) clone() *Change {
	out := *c
	out.PeersUpserted = slices.Clone(c.PeersUpserted)
	out.PeersRemoved = slices.Clone(c.PeersRemoved)
	out.DNSUpserted = slices.Clone(c.DNSUpserted)
	out.DNSRemoved = slices.Clone(c.DNSRemoved)
	return &out
}

func (c *Change) merge(o *Change) {
	if o.Self != nil {
		c.Self = o.Self
	}
	c.PeersUpserted = append(c.PeersUpserted, o.PeersUpserted...)
	c.PeersRemoved = append(c.PeersRemoved, o.PeersRemoved...)
	if o.PacketFilterChanged {
		c.PacketFilterChanged, c.PacketFilter = true, o.PacketFilter
	}
	c.DNSUpserted = append(c.DNSUpserted, o.DNSUpserted...)
	c.DNSRemoved = append(c.DNSRemoved, o.DNSRemoved...)
	if o.RelayMap != nil {
		c.RelayMap = o.RelayMap
	}
}

// refreshFilter recomputes a node's filter and records it when it changed.
func (b *batch) refreshFilter(st *nodeState) {
	f := b.nw.pol.FilterCached(b.nw.dir, attrsOf(&st.node), b.srcs)
	if h := policy.HashFilter(f); h != st.filterHash {
		st.filterHash = h
		c := b.mut(st)
		c.PacketFilterChanged = true
		c.PacketFilter = f
	}
}

// commit versions the drafts and records them in each node's history.
func (b *batch) commit() []*Delta {
	out := make([]*Delta, 0, len(b.order))
	for _, dr := range b.order {
		d, st := &dr.d, dr.st
		if dr.resync {
			st.epoch, st.version, st.hist = b.nw.e.newEpoch(), 1, ring{}
			*d = Delta{NodeID: d.NodeID, Epoch: st.epoch, Version: 1, Resync: true, Change: &Change{}}
			out = append(out, d)
			continue
		}
		d.BaseVersion = st.version
		st.version++
		d.Version = st.version
		d.Epoch = st.epoch
		st.hist.push(d, b.nw.history)
		out = append(out, d)
	}
	return out
}

// UpsertNode adds or changes a node and returns the deltas of every node whose
// view changed, the node itself included (a new node gets none: it starts with a
// snapshot at version 1). Cost: the node's old and new peers, plus the filters of
// nodes whose rules list its addresses.
func (e *Engine) UpsertNode(id NetworkID, n Node) ([]*Delta, error) {
	nw := e.network(id, true)
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if err := nw.checkNode(&n); err != nil {
		return nil, fmt.Errorf("upsert node in %s/%s: %w", id.Tenant, id.Cvlan, err)
	}
	return nw.upsert(e, cloneNode(n)), nil
}

func (nw *network) upsert(e *Engine, n Node) []*Delta {
	newAttrs := attrsOf(&n)
	newPeer := nw.peerOf(&n)
	rec, hasRec := nw.record(&n)
	st, exists := nw.nodes[n.ID]
	if !exists {
		peers := nw.pol.PeerRefs(nw.dir, newAttrs)
		b := nw.newBatch(len(peers))
		st = &nodeState{node: n, peer: newPeer, epoch: e.newEpoch(), version: 1}
		newAttrs.Ref = st
		nw.dir.Put(newAttrs)
		nw.nodes[n.ID] = st
		if k := nameKey(n.Name); k != "" {
			nw.names[k] = n.ID
		}
		st.filterHash = policy.HashFilter(nw.pol.Filter(nw.dir, newAttrs))
		joined := &Change{PeersUpserted: []*Peer{newPeer}}
		if hasRec {
			joined.DNSUpserted = []DNSRecord{rec}
		}
		b.fanout(peers, joined)
		for _, dep := range nw.pol.FilterDependents(nw.dir, nil, &newAttrs) {
			if dep != n.ID {
				b.refreshFilter(nw.nodes[dep])
			}
		}
		return b.commit()
	}

	b := nw.newBatch(0)
	old := st.node
	oldAttrs := attrsOf(&old)
	newAttrs.Ref = st
	oldFQDN := nw.fqdn(old.Name)
	attrsChanged := !attrsEqual(oldAttrs, newAttrs)
	var added, removed []string
	if attrsChanged {
		added, removed = policy.PeerDiff(nw.dir, nw.pol, oldAttrs, nw.pol, newAttrs)
		nw.dir.Put(newAttrs)
	}
	peerChanged := !peerEqual(st.peer, newPeer)
	nameChanged := oldFQDN != rec.FQDN
	dnsChanged := nameChanged || !slices.Equal(old.Addresses, n.Addresses)
	oldSelf, newSelf := nw.selfOf(&old), nw.selfOf(&n)
	if k := nameKey(old.Name); k != "" {
		delete(nw.names, k)
	}
	if k := nameKey(n.Name); k != "" {
		nw.names[k] = n.ID
	}
	st.node, st.peer = n, newPeer

	// Peers that saw the node before and still do get its new record.
	if peerChanged || dnsChanged {
		kept := &Change{}
		if peerChanged {
			kept.PeersUpserted = []*Peer{newPeer}
		}
		if dnsChanged {
			if nameChanged && oldFQDN != "" {
				kept.DNSRemoved = []string{oldFQDN}
			}
			if hasRec {
				kept.DNSUpserted = []DNSRecord{rec}
			}
		}
		refs := nw.pol.PeerRefs(nw.dir, newAttrs)
		if len(added) > 0 {
			isAdded := make(map[string]bool, len(added))
			for _, a := range added {
				isAdded[a] = true
			}
			refs = slices.DeleteFunc(refs, func(r any) bool { return isAdded[r.(*nodeState).node.ID] })
		}
		b.fanout(refs, kept) // first into the batch: no lookups
	}
	if len(added) > 0 {
		joined := &Change{PeersUpserted: []*Peer{newPeer}}
		if hasRec {
			joined.DNSUpserted = []DNSRecord{rec}
		}
		for _, p := range added {
			b.share(nw.nodes[p], joined)
		}
	}
	if len(removed) > 0 {
		left := &Change{PeersRemoved: []PeerRef{{NodeID: n.ID, Key: old.Key}}}
		if oldFQDN != "" {
			left.DNSRemoved = []string{oldFQDN}
		}
		for _, p := range removed {
			b.share(nw.nodes[p], left)
		}
	}

	// The node's own view.
	if !selfEqual(oldSelf, newSelf) || len(added) > 0 || len(removed) > 0 || dnsChanged {
		d := b.mut(st)
		if !selfEqual(oldSelf, newSelf) {
			d.Self = &newSelf
		}
		nw.addPeers(d, added)
		nw.removePeers(d, removed)
		if dnsChanged {
			if nameChanged && oldFQDN != "" {
				d.DNSRemoved = append(d.DNSRemoved, oldFQDN)
			}
			if hasRec {
				d.DNSUpserted = append(d.DNSUpserted, rec)
			}
		}
	}
	if attrsChanged {
		for _, dep := range nw.pol.FilterDependents(nw.dir, &oldAttrs, &newAttrs) {
			if dep != n.ID {
				b.refreshFilter(nw.nodes[dep])
			}
		}
		b.refreshFilter(st)
	}
	return b.commit()
}

func (nw *network) addPeers(d *Change, ids []string) {
	for _, id := range ids {
		ps := nw.nodes[id]
		d.PeersUpserted = append(d.PeersUpserted, ps.peer)
		if r, ok := ps.record(); ok {
			d.DNSUpserted = append(d.DNSUpserted, r)
		}
	}
}

func (nw *network) removePeers(d *Change, ids []string) {
	for _, id := range ids {
		ps := nw.nodes[id]
		d.PeersRemoved = append(d.PeersRemoved, PeerRef{NodeID: id, Key: ps.node.Key})
		if f := ps.peer.FQDN; f != "" {
			d.DNSRemoved = append(d.DNSRemoved, f)
		}
	}
}

// SetStatus records what a node's agent reported (endpoints, home relay,
// online). Its peers get the node's new record; policy is not consulted beyond
// finding them.
func (e *Engine) SetStatus(id NetworkID, nodeID string, s Status) ([]*Delta, error) {
	nw := e.network(id, false)
	if nw == nil {
		return nil, fmt.Errorf("set status of node %s: %w", nodeID, ErrUnknownNetwork)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	st, ok := nw.nodes[nodeID]
	if !ok {
		return nil, fmt.Errorf("set status of node %s: %w", nodeID, ErrUnknownNode)
	}
	n := st.node
	n.Endpoints = slices.Clone(s.Endpoints)
	n.HomeRelay = s.HomeRelay
	n.Online = s.Online
	return nw.upsert(e, n), nil
}

// RemoveNode deletes a node and returns the deltas of the nodes that saw it or
// whose filters listed it. The node's own history is dropped.
func (e *Engine) RemoveNode(id NetworkID, nodeID string) ([]*Delta, error) {
	nw := e.network(id, false)
	if nw == nil {
		return nil, fmt.Errorf("remove node %s: %w", nodeID, ErrUnknownNetwork)
	}
	nw.mu.Lock()
	defer nw.mu.Unlock()
	st, ok := nw.nodes[nodeID]
	if !ok {
		return nil, fmt.Errorf("remove node %s: %w", nodeID, ErrUnknownNode)
	}
	attrs := attrsOf(&st.node)
	peers := nw.pol.PeerRefs(nw.dir, attrs)
	nw.dir.Delete(nodeID)
	delete(nw.nodes, nodeID)
	if k := nameKey(st.node.Name); k != "" {
		delete(nw.names, k)
	}
	b := nw.newBatch(len(peers))
	left := &Change{PeersRemoved: []PeerRef{{NodeID: nodeID, Key: st.node.Key}}}
	if f := nw.fqdn(st.node.Name); f != "" {
		left.DNSRemoved = []string{f}
	}
	b.fanout(peers, left)
	for _, dep := range nw.pol.FilterDependents(nw.dir, &attrs, nil) {
		b.refreshFilter(nw.nodes[dep])
	}
	return b.commit(), nil
}

// SetPolicies compiles the tenant's policies for this network (once) and returns
// the deltas of the nodes whose peers or filter changed. Only members of the
// targets of rules that differ between the old and new compilation are examined.
// An invalid policy set changes nothing and returns the validation error.
func (e *Engine) SetPolicies(id NetworkID, policies []policy.Policy) ([]*Delta, error) {
	c, err := policy.Compile(policies, id.Cvlan)
	if err != nil {
		return nil, fmt.Errorf("set policies of %s/%s: %w", id.Tenant, id.Cvlan, err)
	}
	nw := e.network(id, true)
	nw.mu.Lock()
	defer nw.mu.Unlock()
	old := nw.pol
	nw.dir.Track(c.CIDRs())
	affected := policy.Affected(nw.dir, old, c)
	b := nw.newBatch(len(affected))
	type diff struct{ added, removed []string }
	// A node whose view would change by more than maxDeltaPeers peers gets a
	// Resync instead of a delta.
	diffs := make([]diff, len(affected))
	for i, nid := range affected {
		a := attrsOf(&nw.nodes[nid].node)
		var ok bool
		diffs[i].added, diffs[i].removed, ok = policy.PeerDiffLimit(nw.dir, old, a, c, a, e.maxDeltaPeers)
		if !ok {
			b.resync(nw.nodes[nid])
		}
	}
	nw.pol = c
	for i, nid := range affected {
		if len(diffs[i].added)+len(diffs[i].removed) > 0 {
			d := b.mut(nw.nodes[nid])
			nw.addPeers(d, diffs[i].added)
			nw.removePeers(d, diffs[i].removed)
		}
		b.refreshFilter(nw.nodes[nid])
	}
	nw.dir.Retain(c.CIDRs())
	return b.commit(), nil
}

// SetRelayMap replaces the network's relay map; every node gets it in a delta
// unless it is equal to the current one.
func (e *Engine) SetRelayMap(id NetworkID, rm RelayMap) []*Delta {
	nw := e.network(id, true)
	nw.mu.Lock()
	defer nw.mu.Unlock()
	if nw.relay != nil && relayMapEqual(*nw.relay, rm) {
		return nil
	}
	nw.relay = cloneRelayMap(&rm)
	b := nw.newBatch(len(nw.nodes))
	c := &Change{RelayMap: nw.relay}
	for _, st := range nw.nodes {
		b.add(st, c, false)
	}
	return b.commit()
}

func cloneRelayMap(rm *RelayMap) *RelayMap {
	if rm == nil {
		return nil
	}
	out := &RelayMap{Regions: slices.Clone(rm.Regions)}
	for i := range out.Regions {
		r := &out.Regions[i]
		r.Relays = slices.Clone(r.Relays)
	}
	return out
}

func relayMapEqual(a, b RelayMap) bool {
	return slices.EqualFunc(a.Regions, b.Regions, func(x, y RelayRegion) bool {
		return x.ID == y.ID && x.Code == y.Code && x.Name == y.Name && slices.Equal(x.Relays, y.Relays)
	})
}

// Snapshot returns a node's whole view and its current epoch and version.
func (e *Engine) Snapshot(id NetworkID, nodeID string) (Snapshot, error) {
	nw := e.network(id, false)
	if nw == nil {
		return Snapshot{}, fmt.Errorf("snapshot of node %s: %w", nodeID, ErrUnknownNetwork)
	}
	nw.mu.RLock()
	defer nw.mu.RUnlock()
	st, ok := nw.nodes[nodeID]
	if !ok {
		return Snapshot{}, fmt.Errorf("snapshot of node %s: %w", nodeID, ErrUnknownNode)
	}
	attrs := attrsOf(&st.node)
	refs := nw.pol.PeerRefs(nw.dir, attrs)
	peers := make([]*nodeState, len(refs))
	for i, r := range refs {
		peers[i] = r.(*nodeState)
	}
	slices.SortFunc(peers, func(a, b *nodeState) int { return strings.Compare(a.node.ID, b.node.ID) })
	v := View{
		Self:         nw.selfOf(&st.node),
		Peers:        make([]*Peer, len(peers)),
		PacketFilter: nw.pol.Filter(nw.dir, attrs),
		RelayMap:     nw.relay,
	}
	if nw.cfg.Domain != "" {
		v.DNS = make([]DNSRecord, 0, len(peers)+1)
	}
	if r, ok := nw.record(&st.node); ok {
		v.DNS = append(v.DNS, r)
	}
	for i, ps := range peers {
		v.Peers[i] = ps.peer
		if r, ok := ps.record(); ok {
			v.DNS = append(v.DNS, r)
		}
	}
	slices.SortFunc(v.DNS, func(a, b DNSRecord) int { return strings.Compare(a.FQDN, b.FQDN) })
	return Snapshot{Epoch: st.epoch, Version: st.version, View: v}, nil
}

// DeltasSince returns the deltas that take a node from version to its current
// version, oldest first (none when it is current). It returns ErrTooOld when the
// epoch is not the node's current one or the history no longer reaches back to
// version: the caller then sends a Snapshot.
func (e *Engine) DeltasSince(id NetworkID, nodeID string, epoch, version uint64) ([]*Delta, error) {
	nw := e.network(id, false)
	if nw == nil {
		return nil, fmt.Errorf("deltas of node %s: %w", nodeID, ErrUnknownNetwork)
	}
	nw.mu.RLock()
	defer nw.mu.RUnlock()
	st, ok := nw.nodes[nodeID]
	if !ok {
		return nil, fmt.Errorf("deltas of node %s: %w", nodeID, ErrUnknownNode)
	}
	if epoch != st.epoch || version > st.version {
		return nil, fmt.Errorf("deltas of node %s since %d/%d: %w", nodeID, epoch, version, ErrTooOld)
	}
	n := st.version - version
	if n > uint64(len(st.hist.buf)) {
		return nil, fmt.Errorf("deltas of node %s since %d (have from %d): %w",
			nodeID, version, st.version-uint64(len(st.hist.buf)), ErrTooOld)
	}
	return st.hist.last(int(n)), nil
}

// Version returns a node's current epoch and version, e.g. to compare with an
// agent's acknowledgement.
func (e *Engine) Version(id NetworkID, nodeID string) (epoch, version uint64, err error) {
	nw := e.network(id, false)
	if nw == nil {
		return 0, 0, fmt.Errorf("version of node %s: %w", nodeID, ErrUnknownNetwork)
	}
	nw.mu.RLock()
	defer nw.mu.RUnlock()
	st, ok := nw.nodes[nodeID]
	if !ok {
		return 0, 0, fmt.Errorf("version of node %s: %w", nodeID, ErrUnknownNode)
	}
	return st.epoch, st.version, nil
}

// NodeCount returns the number of nodes in a network (0 when unknown).
func (e *Engine) NodeCount(id NetworkID) int {
	nw := e.network(id, false)
	if nw == nil {
		return 0
	}
	nw.mu.RLock()
	defer nw.mu.RUnlock()
	return len(nw.nodes)
}
