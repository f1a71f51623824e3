package auth

import (
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// KeyedLimiter is a token bucket per key (a principal id or a peer IP). Buckets idle long enough
// to be full again are dropped, so the map stays bounded by the number of recently active keys.
type KeyedLimiter struct {
	limit rate.Limit
	burst int

	mu      sync.Mutex
	buckets map[string]*bucket
	sweep   time.Time
}

type bucket struct {
	l    *rate.Limiter
	seen time.Time
}

// NewKeyedLimiter allows each key burst events at once and limit events per second afterwards.
func NewKeyedLimiter(limit rate.Limit, burst int) *KeyedLimiter {
	return &KeyedLimiter{limit: limit, burst: burst, buckets: make(map[string]*bucket)}
}

// Allow reports whether key may perform one more event now.
func (k *KeyedLimiter) Allow(key string) bool {
	now := time.Now()
	k.mu.Lock()
	defer k.mu.Unlock()
	if now.Sub(k.sweep) > time.Minute {
		k.sweep = now
		idle := time.Minute
		if k.limit > 0 {
			if full := time.Duration(float64(k.burst) / float64(k.limit) * float64(time.Second)); full > idle {
				idle = full
			}
		}
		for key, b := range k.buckets {
			if now.Sub(b.seen) > idle {
				delete(k.buckets, key)
			}
		}
	}
	b := k.buckets[key]
	if b == nil {
		b = &bucket{l: rate.NewLimiter(k.limit, k.burst)}
		k.buckets[key] = b
	}
	b.seen = now
	return b.l.AllowN(now, 1)
}
