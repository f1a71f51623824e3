// Package leanh2 is an HTTP/2 server for connections that stay open for hours with little traffic:
// the controller's node port, where every agent holds one connection with one long-lived stream.
//
// It keeps one goroutine per connection (the frame reader, which also answers SETTINGS, PING and
// flow control) plus one per open request (the handler). A handler writes its response frames
// itself, under the connection's write lock; nothing is buffered between writes, so an idle
// connection keeps no write buffer, and the hpack encoder keeps no dynamic table. golang.org/x/net's
// server, by comparison, keeps a serve loop and a frame reader per connection and a 4 KiB buffered
// writer per stream (ADR 010).
//
// Frame parsing and hpack are golang.org/x/net/http2's. What this package implements is the server
// side of RFC 9113 that gRPC clients use: requests, response headers, DATA and trailers, flow
// control in both directions, SETTINGS, PING, RST_STREAM and GOAWAY. Server push and priorities
// are not implemented (priorities are advisory; push is disabled by not using it).
package leanh2

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Server serves HTTP/2 connections. Its zero value is usable; fields must not change once it serves.
type Server struct {
	// MaxConcurrentStreams is the number of requests a connection may have open at once (default 100).
	MaxConcurrentStreams uint32
	// MaxReadFrameSize is the largest frame a client may send (default and minimum 16 KiB). The read
	// buffer grows to the largest frame received and stays that size for the connection's life.
	MaxReadFrameSize uint32
	// MaxHeaderListSize bounds a request's decoded header list (default 64 KiB).
	MaxHeaderListSize uint32
	// HeaderTableSize is the hpack dynamic table a client may fill per connection (default 4 KiB,
	// HTTP/2's).
	HeaderTableSize uint32
	// WriteTimeout bounds a single write to a connection when the handler set no write deadline
	// (default 30 s). A connection whose write times out is closed: its peer stopped reading.
	WriteTimeout time.Duration
	// PrefaceTimeout bounds the wait for the client's connection preface (default 10 s).
	PrefaceTimeout time.Duration
	// Log receives connection-level errors at debug level (default: discarded).
	Log *slog.Logger

	mu       sync.Mutex
	conns    map[*conn]struct{}
	draining bool
	idle     chan struct{} // closed when draining and the last connection ended
}

const (
	defaultMaxStreams   = 100
	minMaxFrameSize     = 16 << 10
	defaultHeaderList   = 64 << 10
	defaultHeaderTable  = 4 << 10
	defaultWriteTimeout = 30 * time.Second
	defaultPreface      = 10 * time.Second
	// initialWindow is HTTP/2's default window, which this server keeps for every stream and the
	// connection: it bounds what a connection can make the server buffer to 64 KiB.
	initialWindow = 65535
	// windowUpdateAt is how much read data the server returns in one WINDOW_UPDATE.
	windowUpdateAt = 16 << 10
)

func (s *Server) maxStreams() uint32 {
	if s.MaxConcurrentStreams == 0 {
		return defaultMaxStreams
	}
	return s.MaxConcurrentStreams
}

func (s *Server) maxReadFrame() uint32 {
	return max(s.MaxReadFrameSize, minMaxFrameSize)
}

func (s *Server) maxHeaderList() uint32 {
	if s.MaxHeaderListSize == 0 {
		return defaultHeaderList
	}
	return s.MaxHeaderListSize
}

func (s *Server) headerTable() uint32 {
	if s.HeaderTableSize == 0 {
		return defaultHeaderTable
	}
	return s.HeaderTableSize
}

func (s *Server) writeTimeout() time.Duration {
	if s.WriteTimeout <= 0 {
		return defaultWriteTimeout
	}
	return s.WriteTimeout
}

func (s *Server) prefaceTimeout() time.Duration {
	if s.PrefaceTimeout <= 0 {
		return defaultPreface
	}
	return s.PrefaceTimeout
}

func (s *Server) log() *slog.Logger {
	if s.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return s.Log
}

// ErrServerClosed is returned by ServeConn once Shutdown or Close was called.
var ErrServerClosed = errors.New("leanh2: server closed")

// ServeConn serves one connection whose TLS handshake completed with "h2" negotiated, until the
// client closes it, a protocol error or ctx ends it. Each request runs h in a goroutine of its own,
// with a context derived from ctx. ServeConn returns when the connection and its handlers are done.
func (s *Server) ServeConn(ctx context.Context, tc *tls.Conn, h http.Handler) error {
	c := newConn(ctx, s, tc, h)
	if !s.track(c) {
		_ = tc.Close()
		return ErrServerClosed
	}
	defer s.untrack(c)
	return c.serve()
}

func (s *Server) track(c *conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining {
		return false
	}
	if s.conns == nil {
		s.conns = map[*conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	return true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, c)
	if s.draining && len(s.conns) == 0 && s.idle != nil {
		close(s.idle)
		s.idle = nil
	}
}

// Shutdown stops taking connections, sends GOAWAY on every connection (open requests may finish,
// new ones are refused) and waits until every connection has ended or ctx is done, returning
// ctx's error in that case. Connections end once their open requests have.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.draining = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	var idle chan struct{}
	if len(s.conns) > 0 {
		if s.idle == nil {
			s.idle = make(chan struct{})
		}
		idle = s.idle
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.goAway()
	}
	if idle == nil {
		return nil
	}
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close closes every connection at once; their handlers' contexts are canceled.
func (s *Server) Close() {
	s.mu.Lock()
	s.draining = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		c.close(errors.New("server closed"))
	}
}
