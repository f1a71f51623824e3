// Package interceptor holds the cross-cutting connect-go interceptors of the user-facing API:
// panic recovery, request ids and logging, authentication, authorization from one table,
// protovalidate request validation and rate limits. Handlers never repeat this work.
package interceptor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"time"

	"connectrpc.com/connect"
)

// RequestIDHeader carries the request id back to the caller (and into the audit log).
const RequestIDHeader = "X-Request-Id"

// RequestInfo describes the call being served; the audit log records it.
type RequestInfo struct {
	ID        string
	Procedure string
	Peer      string
	UserAgent string
}

type requestInfoKey struct{}

// RequestInfoFrom returns the request info of ctx (zero outside an intercepted call).
func RequestInfoFrom(ctx context.Context) RequestInfo {
	ri, _ := ctx.Value(requestInfoKey{}).(RequestInfo)
	return ri
}

// WithRequestInfo returns ctx carrying ri (for tests and non-RPC callers of the handlers).
func WithRequestInfo(ctx context.Context, ri RequestInfo) context.Context {
	return context.WithValue(ctx, requestInfoKey{}, ri)
}

// funcs adapts a pair of wrap functions to connect.Interceptor.
type funcs struct {
	unary  func(connect.UnaryFunc) connect.UnaryFunc
	stream func(connect.StreamingHandlerFunc) connect.StreamingHandlerFunc
}

func (f funcs) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc { return f.unary(next) }
func (f funcs) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}
func (f funcs) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return f.stream(next)
}

// callInfo is what every interceptor needs of a unary request or a stream.
type callInfo struct {
	procedure string
	peer      string
	header    http.Header
	respHdr   http.Header
}

// around builds an interceptor from one function run around both unary calls and streams. msg is
// the unary request message (nil for streams: their first message is read by the handler).
func around(fn func(ctx context.Context, ci callInfo, msg any, next func(context.Context) error) error) connect.Interceptor {
	return funcs{
		unary: func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				if req.Spec().IsClient {
					return next(ctx, req)
				}
				var resp connect.AnyResponse
				hdr := http.Header{}
				ci := callInfo{req.Spec().Procedure, req.Peer().Addr, req.Header(), hdr}
				err := fn(ctx, ci, req.Any(), func(ctx context.Context) error {
					var err error
					resp, err = next(ctx, req)
					return err
				})
				if resp != nil {
					for k, v := range hdr {
						resp.Header()[k] = v
					}
				}
				var ce *connect.Error
				if errors.As(err, &ce) {
					for k, v := range hdr {
						ce.Meta()[k] = v
					}
				}
				return resp, err
			}
		},
		stream: func(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
			return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
				ci := callInfo{conn.Spec().Procedure, conn.Peer().Addr, conn.RequestHeader(), conn.ResponseHeader()}
				return fn(ctx, ci, nil, func(ctx context.Context) error { return next(ctx, conn) })
			}
		},
	}
}

// Recover turns a handler panic into an Internal error and logs the stack, so that one bad
// request cannot take the controller down.
func Recover(log *slog.Logger) connect.Interceptor {
	return around(func(ctx context.Context, ci callInfo, _ any, next func(context.Context) error) (err error) {
		defer func() {
			if r := recover(); r != nil {
				log.ErrorContext(ctx, "panic in handler", "rpc", ci.procedure, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
				err = connect.NewError(connect.CodeInternal, errors.New("internal error"))
			}
		}()
		return next(ctx)
	})
}

// Log assigns the request id (returned in X-Request-Id), records the request info for the audit
// log and logs every call with its outcome and duration.
func Log(log *slog.Logger) connect.Interceptor {
	return around(func(ctx context.Context, ci callInfo, _ any, next func(context.Context) error) error {
		ri := RequestInfo{ID: newRequestID(), Procedure: ci.procedure, Peer: ci.peer, UserAgent: ci.header.Get("User-Agent")}
		ci.respHdr.Set(RequestIDHeader, ri.ID)
		start := time.Now()
		err := next(WithRequestInfo(ctx, ri))
		attrs := []any{"rpc", ci.procedure, "request_id", ri.ID, "peer", ci.peer, "duration", time.Since(start)}
		if err != nil {
			code := connect.CodeOf(err)
			attrs = append(attrs, "code", code.String(), "err", err)
			if code == connect.CodeInternal || code == connect.CodeUnknown {
				log.ErrorContext(ctx, "rpc failed", attrs...)
				return err
			}
		}
		log.DebugContext(ctx, "rpc", attrs...)
		return err
	})
}

func newRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
