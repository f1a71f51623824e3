package interceptor

import (
	"context"
	"fmt"
	"net"

	"connectrpc.com/connect"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
)

// RateLimit limits the listed procedures per principal (or per peer IP for unauthenticated
// calls) with one shared keyed limiter: ResourceExhausted when the caller's bucket is empty. It
// runs after Auth, so the principal is known.
func RateLimit(l *auth.KeyedLimiter, procedures ...string) connect.Interceptor {
	limited := make(map[string]bool, len(procedures))
	for _, p := range procedures {
		limited[p] = true
	}
	return around(func(ctx context.Context, ci callInfo, _ any, next func(context.Context) error) error {
		if !limited[ci.procedure] {
			return next(ctx)
		}
		key := "ip:" + hostOf(ci.peer)
		if p := auth.PrincipalFrom(ctx); p != nil {
			key = "principal:" + p.ID
		}
		if !l.Allow(key) {
			return connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("rate limit exceeded for %s; retry later", ci.procedure))
		}
		return next(ctx)
	})
}

func hostOf(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}
