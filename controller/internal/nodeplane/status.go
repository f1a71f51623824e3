package nodeplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/mapsync"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// report is what one ReportStatus says.
type report struct {
	endpoints    []domain.NodeEndpoint
	paths        []domain.NodePeerPath
	homeRelay    string
	agentVersion string
	os           string
	routes       []netip.Prefix
	routesSet    bool
}

// statusWriter batches what agents tell the controller (stream open/close, reports, acks, renewed
// certificates) into few store transactions: per node only the changes since the last flush are
// applied, in order, to the current row. It also runs the offline sweep and ephemeral-node removal.
//
// What a flush writes depends on what changed (see write): a change the network maps depend on
// (online/offline, endpoints, home relay, routes) is a node update with its change event, which
// every replica's map loader applies; a change only the API shows (sync state, agent version,
// certificate, conflict) is a status write with a node_status event, which map loaders skip; a
// change of timestamps alone (last seen, observe and report times, latency) is at most a batched
// last-seen touch without any event. At idle, with every agent streaming and nothing changing, the
// store sees one touch statement per flush and the feed stays empty.
type statusWriter struct {
	p *Plane

	mu        sync.Mutex
	pending   map[string][]func(*domain.Node)
	touches   map[string]struct{}  // nodes to mark seen at the next flush
	touched   map[string]time.Time // when a streaming node's last-seen time was last written
	conflicts map[string]bool      // nodes with an active session conflict on this replica
	reports   map[string]reportSeen
	seed      maphash.Seed
	lastSweep time.Time
}

// reportSeen is what the writer remembers of a node's last report that it stored.
type reportSeen struct {
	sum     uint64    // fingerprint of the report without its timestamps and latencies
	written time.Time // when it was queued in full
	seen    time.Time // when the node's last-seen time was last queued for it
}

func newStatusWriter(p *Plane) *statusWriter {
	return &statusWriter{
		p: p, pending: map[string][]func(*domain.Node){}, touches: map[string]struct{}{},
		touched: map[string]time.Time{}, conflicts: map[string]bool{}, reports: map[string]reportSeen{},
		seed: maphash.MakeSeed(),
	}
}

// statusRefresh is how old the stored copy of a node may grow while only timestamps (endpoint
// observe times, peer path latency and handshake times) change: then it is rewritten once, without
// an event.
const statusRefresh = 5 * time.Minute

// touch marks a node seen at the next flush (a last-seen write without reading the node).
func (w *statusWriter) touch(nodeID string) {
	w.mu.Lock()
	w.touches[nodeID] = struct{}{}
	w.mu.Unlock()
}

func (w *statusWriter) queue(nodeID string, fn func(*domain.Node)) {
	w.mu.Lock()
	w.pending[nodeID] = append(w.pending[nodeID], fn)
	w.mu.Unlock()
}

func (w *statusWriter) markOnline(n *domain.Node, now time.Time) {
	if n.Status != domain.NodeQuarantined {
		n.Status = domain.NodeOnline
	}
	n.LastSeenTime = now
}

func (w *statusWriter) streamOpened(c *Caller) {
	now := w.p.now().UTC()
	w.mu.Lock()
	w.touched[c.NodeID] = now
	w.mu.Unlock()
	w.queue(c.NodeID, func(n *domain.Node) {
		w.markOnline(n, now)
		// A conflict recorded before this stream opened (e.g. before a restart) that this
		// replica no longer sees is over. One detected since (by another replica, which saw
		// this stream in the stream registry) is not.
		if n.Conflict != nil && n.Conflict.DetectTime.Before(now) {
			w.endConflict(n)
		}
	})
}

func (w *statusWriter) streamClosed(c *Caller, left int) {
	w.mu.Lock()
	ended := left <= 1 && w.conflicts[c.NodeID]
	if ended {
		delete(w.conflicts, c.NodeID)
	}
	if left == 0 {
		delete(w.touched, c.NodeID)
	}
	w.mu.Unlock()
	if ended {
		w.queue(c.NodeID, w.endConflict)
	}
	if left > 0 {
		return
	}
	// Offline is decided by the sweeper: a reconnect within the grace time is no status change.
	w.touch(c.NodeID)
}

// conflictStarted records that a node streams from two places on this replica.
func (w *statusWriter) conflictStarted(nodeID string) {
	w.mu.Lock()
	w.conflicts[nodeID] = true
	w.mu.Unlock()
}

// conflictEnded records that a node's conflict with a stream on another replica is over (the
// stream registry saw its streams down to one session).
func (w *statusWriter) conflictEnded(nodeID string) {
	w.mu.Lock()
	delete(w.conflicts, nodeID)
	w.mu.Unlock()
	w.queue(nodeID, w.endConflict)
}

// endConflict marks the node's recorded conflict over unless it is active on this replica (checked
// when the flush applies it, so that a conflict detected after queueing stays).
func (w *statusWriter) endConflict(n *domain.Node) {
	w.mu.Lock()
	active := w.conflicts[n.ID]
	w.mu.Unlock()
	if !active && n.Conflict != nil && n.Conflict.Active {
		c := *n.Conflict
		c.Active = false
		n.Conflict = &c
	}
}

func (w *statusWriter) ack(c *Caller, s domain.NodeSync) {
	w.queue(c.NodeID, func(n *domain.Node) {
		if s.DesiredVersion == 0 {
			s.DesiredVersion = max(n.Sync.DesiredVersion, s.AppliedVersion)
		}
		n.Sync = s
	})
}

func (w *statusWriter) pendingSync(nodeID string, desired uint64) {
	w.queue(nodeID, func(n *domain.Node) {
		if n.Sync.AppliedVersion != desired {
			n.Sync.State, n.Sync.DesiredVersion = domain.SyncPending, desired
		}
	})
}

func (w *statusWriter) certificate(c *Caller, serial string, notAfter time.Time) {
	w.queue(c.NodeID, func(n *domain.Node) { n.CertSerial, n.CertExpireTime = serial, notAfter })
}

// fingerprint hashes what of a report the store shows, except times and latencies.
func (w *statusWriter) fingerprint(r *report) uint64 {
	var h maphash.Hash
	h.SetSeed(w.seed)
	for _, e := range r.endpoints {
		fmt.Fprint(&h, e.Address, e.Type, ";")
	}
	for _, p := range r.paths {
		fmt.Fprint(&h, p.PeerNodeID, p.Path, p.RelayID, p.Endpoint, ";")
	}
	fmt.Fprint(&h, "|", r.homeRelay, "|", r.agentVersion, "|", r.os, "|", r.routesSet, r.routes)
	return h.Sum64()
}

func (w *statusWriter) report(c *Caller, r report) {
	now := w.p.now().UTC()
	sum := w.fingerprint(&r)
	refresh := w.p.deps.OfflineAfter / 3
	w.mu.Lock()
	last, ok := w.reports[c.NodeID]
	// A repeat of the report stored a moment ago (agents report every ReportInterval) is at most
	// a last-seen touch: no read of the node. A gap of 3/4 of the offline time, or statusRefresh
	// since the last full write, makes it a full write again (the node may have been marked
	// offline meanwhile; latencies and observe times get refreshed).
	repeat := ok && last.sum == sum && now.Sub(last.written) < statusRefresh && now.Sub(last.seen) < w.p.deps.OfflineAfter*3/4
	switch {
	case !repeat:
		w.reports[c.NodeID] = reportSeen{sum: sum, written: now, seen: now}
	case now.Sub(last.seen) >= refresh:
		last.seen = now
		w.reports[c.NodeID] = last
		w.touches[c.NodeID] = struct{}{}
	}
	w.mu.Unlock()
	if repeat {
		return
	}
	w.queue(c.NodeID, func(n *domain.Node) {
		w.markOnline(n, now)
		n.Endpoints, n.PeerPaths, n.HomeRelayID = r.endpoints, r.paths, r.homeRelay
		if r.agentVersion != "" {
			n.AgentVersion = r.agentVersion
		}
		if r.os != "" {
			n.OS = r.os
		}
		if r.routesSet {
			n.Routes = mergeRoutes(n.Routes, r.routes)
		}
	})
}

// mergeRoutes records what the node now advertises, keeping admins' approvals: an approved route
// the node stopped advertising stays (approved, not advertised) so that it returns approved.
func mergeRoutes(old []domain.NodeRoute, adv []netip.Prefix) []domain.NodeRoute {
	var out []domain.NodeRoute
	for _, r := range old {
		r.Advertised = slices.Contains(adv, r.CIDR)
		if r.Advertised || r.Approved {
			out = append(out, r)
		}
	}
	for _, a := range adv {
		if !slices.ContainsFunc(out, func(r domain.NodeRoute) bool { return r.CIDR == a }) {
			out = append(out, domain.NodeRoute{CIDR: a, Advertised: true})
		}
	}
	return out
}

func (w *statusWriter) run(ctx context.Context) {
	t := time.NewTicker(w.p.deps.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			// Last writes with a short grace period: they are status, not desired state.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			w.flush(fctx)
			cancel()
			return
		case <-t.C:
		}
		w.sweepStreams()
		w.flush(ctx)
		if now := w.p.now(); now.Sub(w.lastSweep) >= w.p.deps.OfflineAfter/3 {
			w.lastSweep = now
			if err := w.sweepOffline(ctx); err != nil && ctx.Err() == nil {
				w.p.log.WarnContext(ctx, "offline sweep", "err", err)
			}
		}
	}
}

// maxBatch bounds one flush transaction so that a reconnect storm does not hold the SQLite writer
// for long.
const maxBatch = 500

// flush writes the queued changes and touches.
func (w *statusWriter) flush(ctx context.Context) {
	for ctx.Err() == nil {
		w.mu.Lock()
		batch := make(map[string][]func(*domain.Node), min(len(w.pending), maxBatch))
		for id, fns := range w.pending {
			if len(batch) == maxBatch {
				break
			}
			batch[id] = fns
			delete(w.pending, id)
		}
		var touches []string
		if len(w.touches) > 0 {
			touches = make([]string, 0, len(w.touches))
			for id := range w.touches {
				touches = append(touches, id)
			}
			clear(w.touches)
		}
		w.mu.Unlock()
		if len(batch) == 0 && len(touches) == 0 {
			return
		}
		now := w.p.now().UTC()
		var retry []string
		err := w.p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
			retry = retry[:0]
			seen := touches
			for id, fns := range batch {
				n, err := tx.GetNode(ctx, id)
				if store.IsNotFound(err) {
					continue
				}
				if err != nil {
					return err
				}
				touch, err := w.write(ctx, tx, n, fns, now)
				if errors.Is(err, domain.ErrConflict) {
					retry = append(retry, id)
					continue
				}
				if err != nil {
					return fmt.Errorf("update node %s: %w", id, err)
				}
				if touch {
					seen = append(seen, id)
				}
			}
			if len(seen) == 0 {
				return nil
			}
			return tx.TouchNodes(ctx, seen, now)
		})
		if err != nil {
			w.p.log.WarnContext(ctx, "status write failed; retrying", "nodes", len(batch), "err", err)
			retry = retry[:0]
			for id := range batch {
				retry = append(retry, id)
			}
		}
		if len(retry) > 0 || (err != nil && len(touches) > 0) {
			w.mu.Lock()
			for _, id := range retry {
				w.pending[id] = append(batch[id], w.pending[id]...)
			}
			if err != nil {
				for _, id := range touches {
					w.touches[id] = struct{}{}
				}
			}
			w.mu.Unlock()
			if err != nil {
				return
			}
		}
	}
}

// write applies fns to n, read in tx, and stores the result by what changed (see statusWriter).
// touch says that only the last-seen time needs writing.
func (w *statusWriter) write(ctx context.Context, tx store.Tx, n *domain.Node, fns []func(*domain.Node), now time.Time) (touch bool, err error) {
	before := *n
	for _, fn := range fns {
		fn(n)
	}
	switch {
	case !mapsync.SameForMaps(&before, n):
		return false, tx.UpdateNode(ctx, n)
	case !sameStatus(&before, n):
		return false, tx.UpdateNodeStatus(ctx, n, true)
	case !sameTimes(&before, n) && now.Sub(before.UpdateTime) >= statusRefresh:
		return false, tx.UpdateNodeStatus(ctx, n, false)
	}
	// Only the last-seen time moved: written when the stored one is older than the refresh
	// interval (the offline sweep needs no more).
	return n.LastSeenTime.Sub(before.LastSeenTime) >= w.p.deps.OfflineAfter/3, nil
}

// statusView is n without the timestamps that change on every report or acknowledgement.
func statusView(n domain.Node) domain.Node {
	n.Meta, n.LastSeenTime, n.Sync.ApplyTime = domain.Meta{}, time.Time{}, time.Time{}
	n.Endpoints = slices.Clone(n.Endpoints)
	for i := range n.Endpoints {
		n.Endpoints[i].ObserveTime = time.Time{}
	}
	n.PeerPaths = slices.Clone(n.PeerPaths)
	for i := range n.PeerPaths {
		p := &n.PeerPaths[i]
		p.ReportTime, p.LastHandshakeTime, p.Latency = time.Time{}, time.Time{}, 0
	}
	return n
}

// sameStatus reports whether a and b differ in timestamps at most.
func sameStatus(a, b *domain.Node) bool { return reflect.DeepEqual(statusView(*a), statusView(*b)) }

// sameTimes reports whether a and b have the same timestamps other than the last-seen time.
func sameTimes(a, b *domain.Node) bool {
	x, y := *a, *b
	x.LastSeenTime, y.LastSeenTime = time.Time{}, time.Time{}
	return reflect.DeepEqual(x, y)
}

// pendingAfter is how long an agent may take to acknowledge before the API shows it pending.
const pendingAfter = 5 * time.Second

// sweepStreams keeps the last-seen time of streaming nodes fresh (so that no replica's sweeper
// marks them offline) and marks nodes that have not acknowledged their latest version pending.
func (w *statusWriter) sweepStreams() {
	now := w.p.now().UTC()
	// Half the offline time: another replica's sweeper sees the node at most that old (plus a
	// flush) and marks it offline only beyond the whole offline time.
	refresh := w.p.deps.OfflineAfter / 2
	var touch []string
	w.mu.Lock()
	for id, at := range w.touched {
		if now.Sub(at) >= refresh {
			w.touched[id] = now
			touch = append(touch, id)
		}
	}
	w.mu.Unlock()
	if len(touch) > 0 {
		w.mu.Lock()
		for _, id := range touch {
			w.touches[id] = struct{}{}
		}
		w.mu.Unlock()
	}
	w.p.streamsMu.Lock()
	var pend []*mapStream
	for _, ms := range w.p.streams {
		pend = append(pend, ms)
	}
	w.p.streamsMu.Unlock()
	for _, ms := range pend {
		ms.mu.Lock()
		cur := ms.wire()
		due := !ms.pendingMarked && ms.acked != cur && time.Since(ms.sentAt) > pendingAfter
		if due {
			ms.pendingMarked = true
		}
		ms.mu.Unlock()
		if due {
			w.pendingSync(ms.sub.NodeID, cur)
		}
	}
}

// sweepOffline marks nodes offline that have neither a stream (here or, judging by their last-seen
// time, on another replica) nor a recent report, and deletes ephemeral nodes offline for longer
// than their tenant allows. Relays without a recent report go offline too.
func (w *statusWriter) sweepOffline(ctx context.Context) error {
	p := w.p
	now := p.now().UTC()
	w.mu.Lock()
	for id, r := range w.reports {
		if now.Sub(r.seen) >= p.deps.OfflineAfter {
			delete(w.reports, id) // the next report is a full write anyway
		}
	}
	w.mu.Unlock()
	var stale, ephemeral []*domain.Node
	var relays []*domain.Relay
	yes := true
	err := p.deps.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		if stale, err = listAll(func(o store.ListOptions) (*store.Page[domain.Node], error) {
			return tx.ListNodes(ctx, store.NodeFilter{Status: domain.NodeOnline, LastSeenBefore: now.Add(-p.deps.OfflineAfter)}, o)
		}); err != nil {
			return err
		}
		if ephemeral, err = listAll(func(o store.ListOptions) (*store.Page[domain.Node], error) {
			return tx.ListNodes(ctx, store.NodeFilter{Status: domain.NodeOffline, Ephemeral: &yes}, o)
		}); err != nil {
			return err
		}
		relays, err = listAll(func(o store.ListOptions) (*store.Page[domain.Relay], error) {
			return tx.ListRelays(ctx, store.RelayFilter{}, o)
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("read nodes to sweep: %w", err)
	}
	cutoff := now.Add(-p.deps.OfflineAfter)
	for _, n := range stale {
		if p.hub.Online(n.ID) {
			continue
		}
		w.queue(n.ID, func(n *domain.Node) {
			if n.Status == domain.NodeOnline && n.LastSeenTime.Before(cutoff) {
				n.Status = domain.NodeOffline
			}
		})
	}
	for _, n := range ephemeral {
		timeout := p.loader.TenantSettings(n.TenantID).EphemeralOfflineTimeout
		if timeout <= 0 {
			timeout = p.deps.EphemeralTimeout
		}
		if p.hub.Online(n.ID) || now.Sub(n.LastSeenTime) < timeout {
			continue
		}
		if err := w.deleteEphemeral(ctx, n.ID, now.Add(-timeout)); err != nil {
			p.log.WarnContext(ctx, "delete ephemeral node", "node", n.ID, "err", err)
		}
	}
	for _, r := range relays {
		if r.Status == domain.RelayOnline && r.LastSeenTime.Before(cutoff) {
			err := p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
				cur, err := tx.GetRelay(ctx, r.ID)
				if err != nil || cur.Status != domain.RelayOnline || !cur.LastSeenTime.Before(cutoff) {
					return err
				}
				// A status write: the relay's version (etag) stays, relay maps are unaffected; the
				// relay_status event tells WatchEvents clients.
				cur.Status = domain.RelayOffline
				return tx.UpdateRelayStatus(ctx, cur, true)
			})
			if err != nil && !store.IsNotFound(err) {
				p.log.WarnContext(ctx, "mark relay offline", "relay", r.ID, "err", err)
			}
		}
	}
	return nil
}

func (w *statusWriter) deleteEphemeral(ctx context.Context, id string, cutoff time.Time) error {
	return w.p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		n, err := tx.GetNode(ctx, id)
		if store.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return err
		}
		if !n.Ephemeral || n.Status != domain.NodeOffline || !n.LastSeenTime.Before(cutoff) {
			return nil // came back meanwhile
		}
		if err := tx.DeleteNode(ctx, id, n.Version); err != nil {
			return err
		}
		before, _ := json.Marshal(n)
		return tx.AppendAudit(ctx, &domain.AuditEntry{
			TenantID: n.TenantID, ActorType: domain.ActorSystem, ActorName: "offline-sweeper", Action: "DeleteEphemeralNode",
			ResourceType: domain.ResourceNode, ResourceID: id, Before: before,
		})
	})
}
