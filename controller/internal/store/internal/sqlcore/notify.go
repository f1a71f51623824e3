package sqlcore

import (
	"context"
	"sync"
)

// Notifier fans a "something changed" signal out to watchers. A signal is coalesced per watcher
// (channel capacity one) and never blocks the notifier, so a slow watcher cannot stall commits.
type Notifier struct {
	mu   sync.Mutex
	subs map[chan struct{}]struct{}
}

// Subscribe returns a channel that receives a value after each Notify (coalesced) and is closed
// when ctx is done.
func (n *Notifier) Subscribe(ctx context.Context) <-chan struct{} {
	ch := make(chan struct{}, 1)
	n.mu.Lock()
	if n.subs == nil {
		n.subs = make(map[chan struct{}]struct{})
	}
	n.subs[ch] = struct{}{}
	n.mu.Unlock()
	context.AfterFunc(ctx, func() {
		n.mu.Lock()
		delete(n.subs, ch)
		close(ch)
		n.mu.Unlock()
	})
	return ch
}

// Notify wakes every watcher.
func (n *Notifier) Notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for ch := range n.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}
