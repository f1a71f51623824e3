package nodeplane

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"
)

// admission sheds load before it hurts: a cap on concurrent streams and a token bucket on how fast
// new streams are accepted (each costs a snapshot). A refused agent is told how long to wait, with
// jitter so that a reconnect storm spreads out instead of returning in lockstep.
type admission struct {
	max  int64
	cur  atomic.Int64
	rate *rate.Limiter
}

func newAdmission(max int, perSec float64, burst int) *admission {
	return &admission{max: int64(max), rate: rate.NewLimiter(rate.Limit(perSec), burst)}
}

// acquire admits one stream; release must be called when it ends. On refusal it returns how long
// the agent should wait.
func (a *admission) acquire() (release func(), retryAfter time.Duration, ok bool) {
	if a.cur.Add(1) > a.max {
		a.cur.Add(-1)
		return nil, jitter(2 * time.Second), false
	}
	r := a.rate.Reserve()
	if d := r.Delay(); d > 0 {
		r.Cancel()
		a.cur.Add(-1)
		// Spread the retries over the time the backlog needs to drain.
		return nil, jitter(max(d, 100*time.Millisecond) * 2), false
	}
	var once sync.Once
	return func() { once.Do(func() { a.cur.Add(-1) }) }, 0, true
}

// jitter returns a duration in [d, 2d).
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d + rand.N(d)
}

// enrollLimiter limits enrollment attempts per client address and in total. Tokens carry 256
// random bits, so this is not about guessing: it keeps a misbehaving script from turning the
// CA and the store into a bottleneck for everyone.
type enrollLimiter struct {
	perAddr float64
	burst   int
	global  *rate.Limiter

	mu    sync.Mutex
	addrs map[string]*rate.Limiter
}

func newEnrollLimiter(perAddr float64, burst int, global float64) *enrollLimiter {
	return &enrollLimiter{
		perAddr: perAddr, burst: burst,
		global: rate.NewLimiter(rate.Limit(global), max(burst, int(global))),
		addrs:  map[string]*rate.Limiter{},
	}
}

// allow reports whether one more attempt from host may go ahead, else how long to wait.
func (l *enrollLimiter) allow(host string) (time.Duration, bool) {
	l.mu.Lock()
	lim := l.addrs[host]
	if lim == nil {
		if len(l.addrs) >= 10000 {
			// Bounded memory: forgetting every address only gives them a fresh burst.
			l.addrs = map[string]*rate.Limiter{}
		}
		lim = rate.NewLimiter(rate.Limit(l.perAddr), l.burst)
		l.addrs[host] = lim
	}
	l.mu.Unlock()
	if r := lim.Reserve(); r.Delay() > 0 {
		d := r.Delay()
		r.Cancel()
		return jitter(d), false
	}
	if r := l.global.Reserve(); r.Delay() > 0 {
		d := r.Delay()
		r.Cancel()
		return jitter(d), false
	}
	return 0, true
}
