package nodeplane

import (
	"context"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"github.com/google/uuid"

	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/fanout"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// streamRegistry publishes this replica's network-map streams to the store's stream registry and
// delivers the hole punches other replicas address to it (ADR 009).
//
// Opens and closes are batched: a flush runs as soon as one is pending (whatever accumulated during
// the previous flush goes in the next), in one store transaction that other replicas' flushes are
// serialised with; it reports, per opened stream, the streams of the same node under another session
// on other live replicas, and the stream's replica raises the incident. A flush also runs every
// heartbeat with nothing pending: it marks the replica alive and expires dead replicas' rows. Nothing
// here touches nodes or the change feed.
type streamRegistry struct {
	p         *Plane
	id        string        // this replica: random per Plane
	heartbeat time.Duration // how often the replica marks itself alive
	stale     time.Duration // a replica not seen for this long is dead

	mu      sync.Mutex
	pending map[*fanout.Sub]*regStream // opened, not registered yet
	live    map[*fanout.Sub]*regStream // registered
	closed  []string                   // ids of registered streams closed since the last flush
	remote  map[string]*Caller         // nodes with a conflict raised against another replica
	synced  bool                       // a sync succeeded (the replica is registered)
	wake    chan struct{}
}

// regStream is one stream of this replica in the registry.
type regStream struct {
	id     string
	c      *Caller
	sub    *fanout.Sub
	at     time.Time
	judged bool // a local conflict was raised at open: not judged again against other replicas
}

func newStreamRegistry(p *Plane, heartbeat time.Duration) *streamRegistry {
	return &streamRegistry{
		p: p, id: uuid.NewString(), heartbeat: heartbeat, stale: 3 * heartbeat,
		pending: map[*fanout.Sub]*regStream{}, live: map[*fanout.Sub]*regStream{}, remote: map[string]*Caller{},
		wake: make(chan struct{}, 1),
	}
}

// opened queues a stream for registration; the flush judges it against other replicas' streams.
func (r *streamRegistry) opened(c *Caller, sub *fanout.Sub) { r.add(c, sub, false) }

// openedJudged queues a stream for registration whose conflict was raised already.
func (r *streamRegistry) openedJudged(c *Caller, sub *fanout.Sub) { r.add(c, sub, true) }

func (r *streamRegistry) add(c *Caller, sub *fanout.Sub, judged bool) {
	r.mu.Lock()
	r.pending[sub] = &regStream{id: uuid.NewString(), c: c, sub: sub, at: r.p.now().UTC(), judged: judged}
	r.mu.Unlock()
	r.notify()
}

// removed is the hub's OnRemove hook: a stream ended.
func (r *streamRegistry) removed(sub *fanout.Sub) {
	r.mu.Lock()
	if _, ok := r.pending[sub]; ok {
		// Never registered: nothing to undo.
		delete(r.pending, sub)
		r.mu.Unlock()
		return
	}
	rs, ok := r.live[sub]
	if ok {
		delete(r.live, sub)
		r.closed = append(r.closed, rs.id)
	}
	r.mu.Unlock()
	if ok {
		r.notify()
	}
}

func (r *streamRegistry) notify() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// run flushes on every open and close and every heartbeat, and takes the hole punches addressed to
// this replica whenever the store's Watch wakes (PostHolePunches wakes it in every process). When
// ctx ends it removes the replica's rows.
func (r *streamRegistry) run(ctx context.Context) {
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := r.p.deps.Store.DropReplica(dctx, r.id); err != nil {
			r.p.log.WarnContext(dctx, "stream registry: drop replica", "replica", r.id, "err", err)
		}
	}()
	watch, err := r.p.deps.Store.Watch(ctx)
	if err != nil {
		if ctx.Err() == nil {
			r.p.log.WarnContext(ctx, "stream registry: watch store; hole punches from other replicas arrive at heartbeats only", "err", err)
		}
		watch = nil
	}
	tick := time.NewTicker(r.heartbeat)
	defer tick.Stop()
	r.flush(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
			r.flush(ctx)
		case _, ok := <-watch:
			if !ok {
				watch = nil
				continue
			}
			r.takeHolePunches(ctx)
		case <-tick.C:
			r.flush(ctx)
			r.takeHolePunches(ctx)
			r.checkRemoteConflicts(ctx)
		}
	}
}

// flush writes the pending opens and closes and judges the opened streams.
func (r *streamRegistry) flush(ctx context.Context) {
	r.mu.Lock()
	opened := make([]*regStream, 0, len(r.pending))
	for sub, rs := range r.pending {
		opened = append(opened, rs)
		delete(r.pending, sub)
	}
	closed := r.closed
	r.closed = nil
	r.mu.Unlock()

	now := r.p.now().UTC()
	sync := store.StreamSync{ReplicaID: r.id, Now: now, StaleBefore: now.Add(-r.stale), Closed: closed}
	for _, rs := range opened {
		sync.Opened = append(sync.Opened, store.MapStream{
			ID: rs.id, ReplicaID: r.id, NodeID: rs.c.NodeID, SessionID: rs.sub.SessionID, Addr: rs.sub.Addr, OpenTime: rs.at,
		})
	}
	res, err := r.p.deps.Store.SyncMapStreams(ctx, sync)
	r.mu.Lock()
	if err != nil {
		// Try again at the next flush; a stream closed meanwhile is dropped there.
		for _, rs := range opened {
			r.pending[rs.sub] = rs
		}
		r.closed = append(r.closed, closed...)
		r.mu.Unlock()
		if ctx.Err() == nil {
			r.p.log.WarnContext(ctx, "stream registry: sync", "replica", r.id, "err", err)
		}
		return
	}
	conflicts := res.Conflicts
	if res.Joined && r.synced {
		// Another replica took this one for dead (it stalled past the stale time) and deleted its
		// streams: register them again, judged like new ones (a stream opened elsewhere meanwhile
		// did not see them).
		for sub, rs := range r.live {
			rs.judged = false
			r.pending[sub] = rs
			delete(r.live, sub)
		}
		r.p.log.WarnContext(ctx, "stream registry: this replica was expired as dead; registering its streams again", "replica", r.id, "streams", len(r.pending))
		defer r.notify()
	}
	r.synced = true
	var judge []*regStream
	for _, rs := range opened {
		if !r.p.hub.Has(rs.sub) {
			// Ended during the flush: its removal found nothing to undo yet.
			r.closed = append(r.closed, rs.id)
			continue
		}
		r.live[rs.sub] = rs
		if !rs.judged && len(conflicts[rs.id]) > 0 {
			judge = append(judge, rs)
		}
	}
	r.mu.Unlock()
	for _, rs := range judge {
		var addrs []string
		for _, o := range conflicts[rs.id] {
			addrs = append(addrs, o.Addr)
		}
		r.mu.Lock()
		r.remote[rs.c.NodeID] = rs.c
		r.mu.Unlock()
		// On quarantine raiseConflict closes this replica's streams; the node's quarantine reaches
		// the other replicas through the change feed and closes theirs.
		if err := r.p.raiseConflict(ctx, rs.c, rs.sub.Addr, addrs, true); err != nil && connect.CodeOf(err) != connect.CodeUnauthenticated {
			r.p.log.WarnContext(ctx, "stream registry: record conflict", "node", rs.c.NodeID, "err", err)
		}
	}
}

// checkRemoteConflicts ends the conflicts raised against other replicas once the node's streams
// are down to one session (the local case ends when a stream of the pair closes here).
func (r *streamRegistry) checkRemoteConflicts(ctx context.Context) {
	r.mu.Lock()
	nodes := make([]*Caller, 0, len(r.remote))
	for _, c := range r.remote {
		nodes = append(nodes, c)
	}
	r.mu.Unlock()
	liveAfter := r.p.now().UTC().Add(-r.stale)
	for _, c := range nodes {
		ms, err := r.p.deps.Store.MapStreams(ctx, c.NodeID, liveAfter)
		if err != nil {
			return
		}
		var sessions []string
		for _, m := range ms {
			sessions = append(sessions, m.SessionID)
		}
		for _, s := range r.p.hub.Streams(c.NodeID) {
			sessions = append(sessions, s.SessionID)
		}
		slices.Sort(sessions)
		if len(slices.Compact(sessions)) > 1 {
			continue
		}
		r.mu.Lock()
		delete(r.remote, c.NodeID)
		r.mu.Unlock()
		r.p.status.conflictEnded(c.NodeID)
	}
}

// forwardHolePunch addresses a hole punch to every other live replica holding a stream of peerID
// and reports whether there was one.
func (r *streamRegistry) forwardHolePunch(ctx context.Context, fromNodeID string, wgKey []byte, peerID string) bool {
	ms, err := r.p.deps.Store.MapStreams(ctx, peerID, r.p.now().UTC().Add(-r.stale))
	if err != nil {
		r.p.log.WarnContext(ctx, "stream registry: look up peer's streams", "peer", peerID, "err", err)
		return false
	}
	var posts []store.HolePunchPost
	for _, m := range ms {
		if m.ReplicaID == r.id || slices.ContainsFunc(posts, func(h store.HolePunchPost) bool { return h.ReplicaID == m.ReplicaID }) {
			continue
		}
		posts = append(posts, store.HolePunchPost{ReplicaID: m.ReplicaID, NodeID: peerID, FromNodeID: fromNodeID, WGKey: wgKey})
	}
	if len(posts) == 0 {
		return false
	}
	if err := r.p.deps.Store.PostHolePunches(ctx, posts); err != nil {
		r.p.log.WarnContext(ctx, "stream registry: post hole punch", "peer", peerID, "err", err)
		return false
	}
	return true
}

// takeHolePunches posts the hole punches addressed to this replica to the local streams.
func (r *streamRegistry) takeHolePunches(ctx context.Context) {
	hps, err := r.p.deps.Store.TakeHolePunches(ctx, r.id)
	if err != nil {
		if ctx.Err() == nil {
			r.p.log.WarnContext(ctx, "stream registry: take hole punches", "replica", r.id, "err", err)
		}
		return
	}
	for _, h := range hps {
		r.p.postHolePunch(h.FromNodeID, h.WGKey, h.NodeID)
	}
}
