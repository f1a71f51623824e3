package server

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/cloudvlan/cloudvlan/controller/internal/leanh2"
)

// handshakeTimeout bounds a TLS handshake on a direct listener (net/http's ReadHeaderTimeout plays
// that role elsewhere).
const handshakeTimeout = 10 * time.Second

// NodeHTTP2 is the HTTP/2 server of the node port: every agent holds one connection with one
// long-lived stream, so what each connection keeps matters more than throughput (ADR 010).
func NodeHTTP2() *leanh2.Server {
	return &leanh2.Server{
		// The largest frame a client may send; the read buffer grows to the largest frame received
		// and stays that size for the connection's life.
		MaxReadFrameSize: 16 << 10,
		// HTTP/2's default header table: agents fill a few hundred bytes of it, and clients that
		// do not wait for our SETTINGS may assume the default.
		HeaderTableSize:      4 << 10,
		MaxConcurrentStreams: 100,
	}
}

// direct serves a TLS listener with a leanh2 server for HTTP/2: each accepted connection is
// handshaken and handed to leanh2.Server.ServeConn in its own goroutine, which is then the
// connection's only goroutine besides its handlers. Clients that do not negotiate h2 are passed to a
// plain http.Server (HTTP/1.1).
type direct struct {
	log     *slog.Logger
	ctx     context.Context
	tls     *tls.Config
	handler http.Handler
	h1      *http.Server // HTTP/1.1 fallback
	h2      *leanh2.Server
	h1ln    *connQueue

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

func newDirect(ctx context.Context, log *slog.Logger, srv *http.Server, cfg *tls.Config, h2 *leanh2.Server, addr net.Addr) *direct {
	if h2.Log == nil {
		h2.Log = log
	}
	return &direct{log: log, ctx: ctx, tls: cfg, handler: srv.Handler, h1: srv, h2: h2, conns: map[net.Conn]struct{}{}, h1ln: newConnQueue(addr)}
}

// serve accepts until ln is closed.
func (d *direct) serve(ln net.Listener) error {
	h1err := make(chan error, 1)
	go func() { h1err <- d.h1.Serve(d.h1ln) }()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && !d.isClosed() {
				// Out of file descriptors, an aborted connection and the like: back off as
				// net/http does instead of giving up the port.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				d.log.Warn("accept", "err", err, "retry_in", delay)
				time.Sleep(delay)
				continue
			}
			_ = d.h1ln.Close()
			if e := <-h1err; e != nil && !errors.Is(e, http.ErrServerClosed) && !errors.Is(e, net.ErrClosed) {
				return e
			}
			return http.ErrServerClosed
		}
		delay = 0
		if !d.track(c) {
			_ = c.Close()
			continue
		}
		go d.handle(c)
	}
}

func (d *direct) handle(c net.Conn) {
	handedOff := false
	defer func() {
		if !handedOff {
			d.untrack(c)
			_ = c.Close()
		}
	}()
	tc := tls.Server(c, d.tls)
	hctx, cancel := context.WithTimeout(d.ctx, handshakeTimeout)
	err := tc.HandshakeContext(hctx)
	cancel()
	if err != nil {
		d.log.Debug("tls handshake", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	if tc.ConnectionState().NegotiatedProtocol != http2.NextProtoTLS {
		// net/http owns the connection from here (and its shutdown).
		d.untrack(c)
		handedOff = d.h1ln.push(tc)
		return
	}
	_ = d.h2.ServeConn(d.ctx, tc, d.handler)
}

func (d *direct) track(c net.Conn) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return false
	}
	d.conns[c] = struct{}{}
	d.wg.Add(1)
	return true
}

func (d *direct) untrack(c net.Conn) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.conns[c]; ok {
		delete(d.conns, c)
		d.wg.Done()
	}
}

func (d *direct) isClosed() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.closed
}

// shutdown stops accepting (the caller closes the listener), asks every HTTP/2 connection to go away
// and waits for them until ctx ends; then it closes what is left.
func (d *direct) shutdown(ctx context.Context, ln net.Listener) error {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
	_ = ln.Close()
	err := errors.Join(d.h2.Shutdown(ctx), d.h1.Shutdown(ctx)) // GOAWAY on HTTP/2, graceful HTTP/1.1
	done := make(chan struct{})
	go func() { d.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		d.close()
	}
	return err
}

// close closes every connection at once.
func (d *direct) close() {
	d.h2.Close()
	_ = d.h1.Close()
	d.mu.Lock()
	d.closed = true
	conns := make([]net.Conn, 0, len(d.conns))
	for c := range d.conns {
		conns = append(conns, c)
	}
	d.mu.Unlock()
	for _, c := range conns {
		_ = c.Close()
	}
}

// connQueue is a net.Listener fed with already accepted (and handshaken) connections.
type connQueue struct {
	addr net.Addr
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue(addr net.Addr) *connQueue {
	return &connQueue{addr: addr, ch: make(chan net.Conn), done: make(chan struct{})}
}

func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return q.addr }
