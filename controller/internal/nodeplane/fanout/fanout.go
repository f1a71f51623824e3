// Package fanout delivers network-map deltas from the engine to the open agent streams of one
// controller replica. Delivery never blocks: each stream has a bounded queue, and a stream whose
// queue overflows (a slow or stuck agent) drops what it holds and is marked for a snapshot resync,
// so it costs a fixed amount of memory and never delays the others.
package fanout

import (
	"slices"
	"sync"

	"github.com/cloudvlan/cloudvlan/controller/internal/netmap"
)

// DefaultQueueLen is the queue bound per stream when Hub is built with 0.
const DefaultQueueLen = 64

// Item is one queued delta.
type Item struct {
	Delta *netmap.Delta
}

// Sub is one open stream of a node.
type Sub struct {
	// NodeID, SessionID and Addr identify the stream (Addr is the remote host:port).
	NodeID, SessionID, Addr string

	max    int
	mu     sync.Mutex
	queue  []Item
	posted []any
	resync bool
	closed bool
	err    error

	wake chan struct{}
	done chan struct{}
}

// NewSub returns a stream record; add it to a Hub to receive deltas.
func NewSub(nodeID, sessionID, addr string) *Sub {
	return &Sub{NodeID: nodeID, SessionID: sessionID, Addr: addr, wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// Wake receives a value (coalesced) when something was queued or a resync was asked for.
func (s *Sub) Wake() <-chan struct{} { return s.wake }

// Done is closed when the stream was closed by Close (revocation, conflict, shutdown).
func (s *Sub) Done() <-chan struct{} { return s.done }

// Err returns the reason given to Close.
func (s *Sub) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Take empties the queue. When resync is true the stream must send a snapshot and ignore items.
func (s *Sub) Take() (items []Item, resync bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	items, resync = s.queue, s.resync
	s.queue, s.resync = nil, false
	return items, resync
}

// maxPosted bounds the out-of-band messages (hole punches) waiting on a stream; they are hints, so
// dropping the excess is harmless.
const maxPosted = 16

// Post queues an out-of-band message for the stream (e.g. a hole-punch request). It reports false
// when the stream is closed or its message queue is full.
func (s *Sub) Post(m any) bool {
	s.mu.Lock()
	ok := !s.closed && len(s.posted) < maxPosted
	if ok {
		s.posted = append(s.posted, m)
	}
	s.mu.Unlock()
	if ok {
		s.notify()
	}
	return ok
}

// TakePosted empties the out-of-band message queue.
func (s *Sub) TakePosted() []any {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.posted
	s.posted = nil
	return p
}

// QueueLen returns the number of queued items (for tests and metrics).
func (s *Sub) QueueLen() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

func (s *Sub) notify() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Sub) push(it Item) {
	s.mu.Lock()
	switch {
	case s.closed || s.resync:
		// A pending snapshot will include this change.
	case len(s.queue) >= s.max:
		// The agent is not keeping up: a snapshot later is cheaper than unbounded memory now.
		s.queue, s.resync = nil, true
	default:
		s.queue = append(s.queue, it)
	}
	s.mu.Unlock()
	s.notify()
}

// Resync asks the stream to send a snapshot next.
func (s *Sub) Resync() {
	s.mu.Lock()
	s.queue, s.resync = nil, true
	s.mu.Unlock()
	s.notify()
}

// Close ends the stream with err (the handler returns it). Later calls do nothing.
func (s *Sub) Close(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed, s.err, s.queue = true, err, nil
	close(s.done)
}

// Hub indexes the open streams by node id.
type Hub struct {
	queueLen int
	onRemove func(*Sub)
	mu       sync.RWMutex
	subs     map[string][]*Sub
	n        int
}

// OnRemove sets a function called (outside the hub's lock) after each Remove of a registered
// stream (the replica's stream registry). Set it before streams are added.
func (h *Hub) OnRemove(fn func(*Sub)) { h.onRemove = fn }

// New returns an empty Hub whose streams queue up to queueLen deltas (0: DefaultQueueLen).
func New(queueLen int) *Hub {
	if queueLen <= 0 {
		queueLen = DefaultQueueLen
	}
	return &Hub{queueLen: queueLen, subs: make(map[string][]*Sub)}
}

// Add registers s and returns the node's other open streams (for session-conflict detection).
func (h *Hub) Add(s *Sub) (others []*Sub) {
	s.max = h.queueLen
	h.mu.Lock()
	defer h.mu.Unlock()
	others = append(others, h.subs[s.NodeID]...)
	h.subs[s.NodeID] = append(h.subs[s.NodeID], s)
	h.n++
	return others
}

// Remove unregisters s and returns the node's streams still open.
func (h *Hub) Remove(s *Sub) (left []*Sub) {
	left, removed := h.remove(s)
	if removed && h.onRemove != nil {
		h.onRemove(s)
	}
	return left
}

func (h *Hub) remove(s *Sub) (left []*Sub, removed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	list := h.subs[s.NodeID]
	for i, o := range list {
		if o == s {
			list = append(list[:i:i], list[i+1:]...)
			h.n--
			removed = true
			break
		}
	}
	if len(list) == 0 {
		delete(h.subs, s.NodeID)
		return nil, removed
	}
	h.subs[s.NodeID] = list
	return append([]*Sub(nil), list...), removed
}

// Deliver queues each delta on its node's streams.
func (h *Hub) Deliver(ds []*netmap.Delta) {
	if len(ds) == 0 {
		return
	}
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, d := range ds {
		for _, s := range h.subs[d.NodeID] {
			s.push(Item{Delta: d})
		}
	}
}

// Resync asks every stream of the given nodes for a snapshot.
func (h *Hub) Resync(nodeIDs []string) {
	h.mu.RLock()
	defer h.mu.RUnlock()
	for _, id := range nodeIDs {
		for _, s := range h.subs[id] {
			s.Resync()
		}
	}
}

// CloseNode closes every stream of a node with err and returns how many there were.
func (h *Hub) CloseNode(nodeID string, err error) int {
	h.mu.RLock()
	list := append([]*Sub(nil), h.subs[nodeID]...)
	h.mu.RUnlock()
	for _, s := range list {
		s.Close(err)
	}
	return len(list)
}

// Streams returns the open streams of a node.
func (h *Hub) Streams(nodeID string) []*Sub {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return append([]*Sub(nil), h.subs[nodeID]...)
}

// Has reports whether s is registered.
func (h *Hub) Has(s *Sub) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return slices.Contains(h.subs[s.NodeID], s)
}

// Online reports whether the node has an open stream here.
func (h *Hub) Online(nodeID string) bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.subs[nodeID]) > 0
}

// Len returns the number of open streams.
func (h *Hub) Len() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.n
}

// NodeIDs returns the ids of the nodes with an open stream.
func (h *Hub) NodeIDs() []string {
	h.mu.RLock()
	defer h.mu.RUnlock()
	out := make([]string, 0, len(h.subs))
	for id := range h.subs {
		out = append(out, id)
	}
	return out
}

// CloseAll closes every stream with err (shutdown).
func (h *Hub) CloseAll(err error) {
	h.mu.RLock()
	var all []*Sub
	for _, l := range h.subs {
		all = append(all, l...)
	}
	h.mu.RUnlock()
	for _, s := range all {
		s.Close(err)
	}
}
