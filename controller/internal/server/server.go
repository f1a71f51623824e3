// Package server wires the controller's listeners: the API port (Connect, gRPC and gRPC-Web over HTTPS,
// with reflection, health and the UI), the node port (mTLS gRPC) and the metrics port.
package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"connectrpc.com/grpchealth"
	"connectrpc.com/grpcreflect"
	"golang.org/x/net/http2"

	"github.com/cloudvlan/cloudvlan/controller/internal/leanh2"
)

// Listener is one port the controller serves.
type Listener struct {
	// Name is used in logs ("api", "node", "metrics").
	Name string
	// Addr is the listen address (host:port).
	Addr string
	// TLS, when set, serves HTTPS with HTTP/2; nil serves plain HTTP/1.1 (metrics only).
	TLS *tls.Config
	// Handler serves the port.
	Handler http.Handler
	// HTTP2, when set with TLS, serves each HTTP/2 connection on this lean server instead of
	// net/http's (see NodeHTTP2; the node port). Clients that do not negotiate h2 still get HTTP/1.1.
	HTTP2 *leanh2.Server
}

// runner is one listener being served.
type runner struct {
	name     string
	ln       net.Listener
	serve    func() error
	shutdown func(context.Context) error
	close    func()
}

// Serve runs every listener until ctx is done, then shuts them down gracefully. It returns the first
// error that stopped a listener, or nil after a clean shutdown. ready, when not nil, is called with the
// bound addresses once every port listens (useful with ":0").
func Serve(ctx context.Context, log *slog.Logger, listeners []Listener, ready func(map[string]net.Addr)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	runners := make([]runner, 0, len(listeners))
	bound := make(map[string]net.Addr, len(listeners))
	fail := func(err error) error {
		for _, r := range runners {
			_ = r.ln.Close()
		}
		return err
	}
	for _, l := range listeners {
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			return fail(fmt.Errorf("listen %s on %s: %w", l.Name, l.Addr, err))
		}
		srv := &http.Server{
			Handler:           l.Handler,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
			BaseContext:       func(net.Listener) context.Context { return ctx },
		}
		r := runner{name: l.Name, ln: ln}
		switch {
		case l.TLS != nil && l.HTTP2 != nil:
			cfg := l.TLS.Clone()
			cfg.NextProtos = []string{http2.NextProtoTLS, "http/1.1"}
			srv.TLSConfig = cfg
			d := newDirect(ctx, log, srv, cfg, l.HTTP2, ln.Addr())
			r.serve = func() error { return d.serve(ln) }
			r.shutdown = func(ctx context.Context) error { return d.shutdown(ctx, ln) }
			r.close = d.close
		default:
			if l.TLS != nil {
				cfg := l.TLS.Clone()
				cfg.NextProtos = []string{http2.NextProtoTLS, "http/1.1"}
				srv.TLSConfig = cfg
				if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
					_ = ln.Close()
					return fail(fmt.Errorf("configure http2 for %s: %w", l.Name, err))
				}
				r.ln = tls.NewListener(ln, cfg)
			}
			sln := r.ln
			r.serve = func() error { return srv.Serve(sln) }
			r.shutdown = srv.Shutdown
			r.close = func() { _ = srv.Close() }
		}
		runners = append(runners, r)
		bound[l.Name] = ln.Addr()
	}

	errc := make(chan error, len(runners))
	for _, r := range runners {
		log.Info("listening", "port", r.name, "addr", r.ln.Addr().String())
		go func() {
			if err := r.serve(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", r.name, err)
				return
			}
			errc <- nil
		}()
	}
	if ready != nil {
		ready(bound)
	}

	var firstErr error
	select {
	case <-ctx.Done():
	case firstErr = <-errc:
		cancel()
	}
	shutdownCtx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	defer stop()
	for _, r := range runners {
		if err := r.shutdown(shutdownCtx); err != nil {
			// Long-lived streams do not end by themselves: close what is left.
			r.close()
		}
	}
	return firstErr
}

// MountIntrospection mounts gRPC health and server reflection (v1 and v1alpha) for services on mux.
func MountIntrospection(mux *http.ServeMux, services []string) {
	// Health is listed too, so that grpcurl users find it; reflection lists itself.
	listed := append(append([]string(nil), services...), grpchealth.HealthV1ServiceName)
	reflector := grpcreflect.NewStaticReflector(listed...)
	mux.Handle(grpcreflect.NewHandlerV1(reflector))
	mux.Handle(grpcreflect.NewHandlerV1Alpha(reflector))
	mux.Handle(grpchealth.NewHandler(grpchealth.NewStaticChecker(services...)))
}

// Running is a Serve started in the background by Start.
type Running struct {
	// Addrs are the bound addresses by listener name.
	Addrs  map[string]net.Addr
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// Start runs Serve in a goroutine and returns once every listener is bound, or with Serve's error
// if it stopped before that.
func Start(ctx context.Context, log *slog.Logger, listeners []Listener) (*Running, error) {
	ctx, cancel := context.WithCancel(ctx)
	r := &Running{cancel: cancel, done: make(chan struct{})}
	ready := make(chan map[string]net.Addr, 1)
	go func() {
		defer close(r.done)
		r.err = Serve(ctx, log, listeners, func(m map[string]net.Addr) { ready <- m })
	}()
	select {
	case r.Addrs = <-ready:
		return r, nil
	case <-r.done:
		cancel()
		if r.err == nil {
			r.err = errors.New("server stopped before listening")
		}
		return nil, r.err
	}
}

// Stop begins the shutdown (Serve's context ends) and returns at once; Wait waits for it.
func (r *Running) Stop() { r.cancel() }

// Wait blocks until Serve has returned and returns its error.
func (r *Running) Wait() error {
	<-r.done
	return r.err
}
