// Package server is the cvlan-relay data plane: it accepts TLS connections
// upgraded from HTTP at /relay, authenticates clients by their node
// certificate, and forwards opaque WireGuard packets between clients of the
// same tenant, addressed by WireGuard public key, locally or through one hop
// of the region mesh.
package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/bufpool"
	"github.com/cloudvlan/cloudvlan/relay/internal/identity"
)

// Server is a relay. Create it with New, serve with Run.
type Server struct {
	cfg  Config
	log  *slog.Logger
	pool *bufpool.Pool
	// bwPool holds bufio.Writers lent to connections only while they have
	// something to write, so that idle connections hold no write buffer.
	bwPool sync.Pool

	mu       sync.RWMutex
	local    map[frame.Key]*route
	remote   map[frame.Key]*route
	watchers map[*conn]struct{}
	conns    map[*conn]struct{}
	clients  int
	meshIn   int
	meshOut  int
	closing  bool
	retired  counters
	rejects  [numRejectReasons]atomic.Uint64
	connWG   sync.WaitGroup
	nextConn atomic.Uint64
	// onlyTenant is set when this is a tenant's own relay.
	onlyTenant string
}

// New checks cfg and returns a Server.
func New(cfg Config) (*Server, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg:      cfg,
		log:      cfg.Logger.With("relay", cfg.RelayID),
		pool:     bufpool.New(frame.MaxPayload),
		local:    make(map[frame.Key]*route),
		remote:   make(map[frame.Key]*route),
		watchers: make(map[*conn]struct{}),
		conns:    make(map[*conn]struct{}),
	}
	s.bwPool.New = func() any { return bufio.NewWriterSize(nil, 16<<10) }
	cert, err := cfg.Certificate.Certificate()
	if err != nil {
		return nil, fmt.Errorf("relay server: certificate: %w", err)
	}
	leaf := cert.Leaf
	if leaf == nil && len(cert.Certificate) > 0 {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, fmt.Errorf("relay server: certificate: %w", err)
		}
	}
	self, err := identity.FromCertificate(leaf, cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("relay server: own certificate: %w", err)
	}
	if self.Kind != identity.KindRelay {
		return nil, fmt.Errorf("relay server: own certificate names a %s, not a relay", self.Kind)
	}
	// A tenant's own relay serves that tenant only.
	s.onlyTenant = self.Tenant
	if s.cfg.RelayID == "" {
		s.cfg.RelayID = self.ID
		s.log = cfg.Logger.With("relay", self.ID)
	}
	return s, nil
}

// TLSConfig returns the listener's TLS configuration: TLS 1.3 only, the
// relay's certificate from the CertificateSource, client certificates
// verified against the roots when given (the /relay handler requires one;
// /healthz does not).
func (s *Server) TLSConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.cfg.Certificate.Certificate()
		},
		ClientAuth:                  tls.VerifyClientCertIfGiven,
		ClientCAs:                   s.cfg.Roots,
		NextProtos:                  []string{"http/1.1"},
		DynamicRecordSizingDisabled: true,
	}
}

// Handler serves /relay (the upgrade) and /healthz.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(frame.Path, s.serveRelay)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		if s.Healthy() {
			_, _ = w.Write([]byte("ok\n"))
			return
		}
		http.Error(w, "shutting down", http.StatusServiceUnavailable)
	})
	return mux
}

// Healthy reports whether the relay accepts clients.
func (s *Server) Healthy() bool {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return !s.closing
}

// Run serves TLS on ln and keeps the mesh links up until ctx is done, then
// shuts down gracefully: clients get a Restarting frame, connections are
// closed, goroutines are gone when Run returns.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	hs := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		// ReadTimeout and WriteTimeout also bound the TLS handshake, so a
		// peer that stalls before the upgrade is dropped; after the
		// upgrade the connection clears them and keeps its own timeouts.
		ReadTimeout:  15 * time.Second,
		WriteTimeout: 15 * time.Second,
		IdleTimeout:  30 * time.Second,
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		ErrorLog:     slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext:  func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	tln := tls.NewListener(tcpNoDelay{ln}, s.TLSConfig())
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(tln) }()

	var meshWG sync.WaitGroup
	meshCtx, stopMesh := context.WithCancel(ctx)
	for _, u := range s.cfg.MeshPeers {
		meshWG.Add(1)
		go func() {
			defer meshWG.Done()
			s.runMeshLink(meshCtx, u)
		}()
	}
	s.log.Info("relay serving", "addr", ln.Addr().String(), "mesh_peers", len(s.cfg.MeshPeers))

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-errc:
	}
	stopMesh()
	shutCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = hs.Shutdown(shutCtx)
	if serveErr == nil {
		<-errc
	}
	s.shutdownConns(shutCtx)
	meshWG.Wait()
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return fmt.Errorf("relay serve: %w", serveErr)
	}
	return nil
}

// tcpNoDelay makes sure accepted TCP connections do not wait to coalesce:
// the relay batches itself and flushes when its queue is empty.
type tcpNoDelay struct{ net.Listener }

func (l tcpNoDelay) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	return c, err
}

// shutdownConns tells every connection to restart elsewhere and closes it.
func (s *Server) shutdownConns(ctx context.Context) {
	s.mu.Lock()
	s.closing = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	in := uint32(s.cfg.RestartReconnectIn / time.Millisecond)
	for_ := uint32(s.cfg.RestartTryFor / time.Millisecond)
	for _, c := range conns {
		if c.role == roleClient {
			c.q.PushControl(item{typ: frame.TypeRestarting, restartIn: in, restartFor: for_})
		}
		c.q.PushControl(item{typ: typeCloseAfterFlush})
	}
	done := make(chan struct{})
	go func() { s.connWG.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-ctx.Done():
	}
	for _, c := range conns {
		c.close(nil)
	}
	<-done
}

// Stats returns a snapshot of the counters.
func (s *Server) Stats() Stats {
	st := Stats{RelayID: s.cfg.RelayID, Region: s.cfg.Region, Drops: map[string]uint64{}, Rejects: map[string]uint64{}}
	s.mu.RLock()
	st.Clients, st.MeshPeersIn, st.MeshPeersOut, st.RemoteKeys = s.clients, s.meshIn, s.meshOut, len(s.remote)
	s.retired.addTo(&st)
	for c := range s.conns {
		c.stats.addTo(&st)
	}
	s.mu.RUnlock()
	for i := range s.rejects {
		if v := s.rejects[i].Load(); v > 0 {
			st.Rejects[RejectReason(i).String()] = v
		}
	}
	return st
}

func (s *Server) reject(r RejectReason) { s.rejects[r].Add(1) }

// serveRelay authenticates the client, applies admission control, switches
// protocols and runs the connection.
func (s *Server) serveRelay(w http.ResponseWriter, r *http.Request) {
	if !strings.EqualFold(r.Header.Get("Upgrade"), frame.UpgradeProtocol) {
		http.Error(w, "expected Upgrade: "+frame.UpgradeProtocol, http.StatusUpgradeRequired)
		return
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		s.reject(RejectUnauthenticated)
		http.Error(w, "client certificate required", http.StatusUnauthorized)
		return
	}
	id, err := identity.FromCertificate(r.TLS.PeerCertificates[0], s.cfg.TrustDomain)
	if err != nil {
		s.reject(RejectUnauthenticated)
		s.log.Info("refused client", "remote", r.RemoteAddr, "err", err)
		http.Error(w, "certificate identity not accepted", http.StatusForbidden)
		return
	}
	// A tenant's relay admits that tenant's nodes, shared relays of the
	// region and relays of the same tenant.
	if s.onlyTenant != "" && id.Tenant != s.onlyTenant && (id.IsClient() || id.Tenant != "") {
		s.reject(RejectUnauthenticated)
		s.log.Info("refused client of another tenant", "remote", r.RemoteAddr, "tenant", id.Tenant)
		http.Error(w, "this relay serves another tenant", http.StatusForbidden)
		return
	}
	role := roleClient
	if id.Kind == identity.KindRelay {
		role = roleMeshIn
	}
	c := s.newConn(role, id)
	if err := s.admit(c); err != nil {
		s.reject(RejectAdmission)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	nc, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.unregister(c)
		s.log.Error("hijack failed", "err", err)
		return
	}
	_ = nc.SetDeadline(time.Time{})
	br := brw.Reader
	if br.Buffered() == 0 {
		br = bufio.NewReaderSize(nc, s.cfg.ReadBufferSize)
	} else {
		br = bufio.NewReaderSize(br, s.cfg.ReadBufferSize)
	}
	c.attach(nc, br)
	// Reachable before the client learns it is connected, so that a peer
	// told "connected" can be sent to at once.
	s.activate(c)
	// The 101 response and the ServerHello go out in one write.
	bw := s.bwPool.Get().(*bufio.Writer)
	bw.Reset(nc)
	_, _ = bw.WriteString("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + frame.UpgradeProtocol + "\r\n\r\n")
	fw := frame.NewWriter(bw)
	_ = fw.WriteServerHello(frame.Key(id.WGKey))
	_ = nc.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	err = bw.Flush()
	bw.Reset(nil)
	s.bwPool.Put(bw)
	if err != nil {
		c.close(err)
		s.finish(c)
		return
	}
	// A fresh goroutine, so that the HTTP server's goroutine (with the
	// stack grown by the TLS handshake, and its buffers) ends here: an idle
	// connection then costs only what it needs.
	go c.run()
}

// admit registers c if the admission limit allows it.
func (s *Server) admit(c *conn) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return errors.New("relay is shutting down")
	}
	if c.role == roleClient {
		// A reconnecting client replaces its old connection, so it is
		// admitted even at the limit (its old connection may not have
		// noticed yet that it is dead).
		if _, replacing := s.local[c.key]; s.clients >= s.cfg.MaxClients && !replacing {
			return fmt.Errorf("relay full (%d clients)", s.clients)
		}
		s.clients++
	} else {
		s.meshIn++
	}
	s.conns[c] = struct{}{}
	s.connWG.Add(1)
	return nil
}

// unregister undoes admit for a connection that never ran.
func (s *Server) unregister(c *conn) {
	s.mu.Lock()
	s.dropConnLocked(c)
	s.mu.Unlock()
	s.connWG.Done()
}

func (s *Server) dropConnLocked(c *conn) {
	if _, ok := s.conns[c]; !ok {
		return
	}
	delete(s.conns, c)
	switch c.role {
	case roleClient:
		s.clients--
	case roleMeshIn:
		s.meshIn--
	case roleMeshOut:
		s.meshOut--
	}
	c.stats.moveTo(&s.retired)
}
