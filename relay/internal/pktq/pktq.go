// Package pktq is a bounded queue that drops its oldest entry when full, with
// a wake-up channel for one consumer goroutine.
//
// Producers never block: a slow consumer loses old packets instead of
// slowing the goroutines that feed it. Control entries (PushControl) are
// exempt from the data bound because losing them would desynchronise state
// (mesh presence), but they have a hard cap of their own.
package pktq

import "sync"

// Queue holds entries of type T. The zero value is not usable; use New.
type Queue[T any] struct {
	mu      sync.Mutex
	items   []T
	head    int
	max     int
	hardMax int
	closed  bool
	ready   chan struct{}
	space   chan struct{}
}

// New returns a queue that holds at most max data entries and hardMax entries
// in all.
func New[T any](max, hardMax int) *Queue[T] {
	if hardMax < max {
		hardMax = max
	}
	return &Queue[T]{max: max, hardMax: hardMax, ready: make(chan struct{}, 1), space: make(chan struct{}, 1)}
}

// Ready is signalled after pushes; the consumer then drains with Pop.
func (q *Queue[T]) Ready() <-chan struct{} { return q.ready }

// Space is signalled after Pop removed entries, for a producer that chose to
// wait briefly instead of dropping.
func (q *Queue[T]) Space() <-chan struct{} { return q.space }

// Max returns the data bound.
func (q *Queue[T]) Max() int { return q.max }

// Full reports whether a data Push would drop the oldest entry now.
func (q *Queue[T]) Full() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)-q.head >= q.max
}

func (q *Queue[T]) signal() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// PushResult says what Push did.
type PushResult int

// Push results.
const (
	// Pushed: the entry was queued.
	Pushed PushResult = iota
	// PushedDropped: the entry was queued and the oldest entry was dropped
	// (returned to the caller for release).
	PushedDropped
	// Closed: the queue is closed; the entry was not queued.
	Closed
	// Overflow: a control entry hit the hard cap; it was not queued.
	Overflow
	// Full: TryPush found the queue full; the entry was not queued.
	Full
)

func (q *Queue[T]) append(v T) {
	if len(q.items) == cap(q.items) && q.head > 0 {
		n := copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items = q.items[:n]
		q.head = 0
	}
	q.items = append(q.items, v)
}

// Push queues a data entry. When the queue already holds max entries the
// oldest one is removed and returned so that the caller can release and
// count it.
func (q *Queue[T]) Push(v T) (dropped T, res PushResult) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return dropped, Closed
	}
	res = Pushed
	if len(q.items)-q.head >= q.max {
		var zero T
		dropped = q.items[q.head]
		q.items[q.head] = zero
		q.head++
		res = PushedDropped
	}
	wasEmpty := len(q.items) == q.head
	q.append(v)
	q.mu.Unlock()
	// The consumer drains to empty before it waits again, so only the push
	// onto an empty queue needs to wake it.
	if wasEmpty {
		q.signal()
	}
	return dropped, res
}

// TryPush queues a data entry unless the queue is full (result Full) or
// closed. It returns the queue length after the push.
func (q *Queue[T]) TryPush(v T) (PushResult, int) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return Closed, 0
	}
	n := len(q.items) - q.head
	if n >= q.max {
		q.mu.Unlock()
		return Full, n
	}
	q.append(v)
	q.mu.Unlock()
	if n == 0 {
		q.signal()
	}
	return Pushed, n + 1
}

// PushControl queues an entry that must not be dropped for space. It fails
// with Overflow at the hard cap; the consumer should then give up the
// connection.
func (q *Queue[T]) PushControl(v T) PushResult {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return Closed
	}
	if len(q.items)-q.head >= q.hardMax {
		q.mu.Unlock()
		return Overflow
	}
	wasEmpty := len(q.items) == q.head
	q.append(v)
	q.mu.Unlock()
	if wasEmpty {
		q.signal()
	}
	return Pushed
}

// Pop appends up to n entries to out, oldest first. If entries remain it
// re-signals Ready so that another waiting consumer is woken.
func (q *Queue[T]) Pop(out []T, n int) []T {
	q.mu.Lock()
	avail := len(q.items) - q.head
	if n > avail {
		n = avail
	}
	out = append(out, q.items[q.head:q.head+n]...)
	var zero T
	for i := q.head; i < q.head+n; i++ {
		q.items[i] = zero
	}
	q.head += n
	left := len(q.items) - q.head
	if left == 0 {
		q.items = q.items[:0]
		q.head = 0
	}
	q.mu.Unlock()
	if left > 0 {
		q.signal()
	}
	if n > 0 {
		select {
		case q.space <- struct{}{}:
		default:
		}
	}
	return out
}

// PopOne removes and returns the oldest entry, if any.
func (q *Queue[T]) PopOne() (v T, ok bool) {
	q.mu.Lock()
	if len(q.items) == q.head {
		q.mu.Unlock()
		return v, false
	}
	var zero T
	v = q.items[q.head]
	q.items[q.head] = zero
	q.head++
	left := len(q.items) - q.head
	if left == 0 {
		q.items = q.items[:0]
		q.head = 0
	}
	q.mu.Unlock()
	if left > 0 {
		q.signal()
	}
	return v, true
}

// Len returns the number of queued entries.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) - q.head
}

// Close marks the queue closed and returns the entries still queued, so the
// caller can release them. Later pushes fail with Closed.
func (q *Queue[T]) Close() []T {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.closed = true
	rest := q.items[q.head:]
	q.items, q.head = nil, 0
	q.signalLocked()
	return rest
}

func (q *Queue[T]) signalLocked() {
	select {
	case q.ready <- struct{}{}:
	default:
	}
}
