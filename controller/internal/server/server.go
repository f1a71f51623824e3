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
}

// Serve runs every listener until ctx is done, then shuts them down gracefully. It returns the first
// error that stopped a listener, or nil after a clean shutdown. ready, when not nil, is called with the
// bound addresses once every port listens (useful with ":0").
func Serve(ctx context.Context, log *slog.Logger, listeners []Listener, ready func(map[string]net.Addr)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	servers := make([]*http.Server, 0, len(listeners))
	bound := make(map[string]net.Addr, len(listeners))
	lns := make([]net.Listener, 0, len(listeners))
	for _, l := range listeners {
		ln, err := net.Listen("tcp", l.Addr)
		if err != nil {
			for _, o := range lns {
				_ = o.Close()
			}
			return fmt.Errorf("listen %s on %s: %w", l.Name, l.Addr, err)
		}
		srv := &http.Server{
			Handler:           l.Handler,
			ReadHeaderTimeout: 10 * time.Second,
			ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelDebug),
			BaseContext:       func(net.Listener) context.Context { return ctx },
		}
		if l.TLS != nil {
			cfg := l.TLS.Clone()
			cfg.NextProtos = []string{"h2", "http/1.1"}
			srv.TLSConfig = cfg
			if err := http2.ConfigureServer(srv, &http2.Server{}); err != nil {
				return fmt.Errorf("configure http2 for %s: %w", l.Name, err)
			}
			ln = tls.NewListener(ln, cfg)
		}
		servers = append(servers, srv)
		lns = append(lns, ln)
		bound[l.Name] = ln.Addr()
	}

	errc := make(chan error, len(servers))
	for i, srv := range servers {
		name, ln := listeners[i].Name, lns[i]
		log.Info("listening", "port", name, "addr", ln.Addr().String())
		go func() {
			if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", name, err)
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
	for _, srv := range servers {
		if err := srv.Shutdown(shutdownCtx); err != nil {
			// Long-lived streams do not end by themselves: close what is left.
			_ = srv.Close()
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
