package nodeplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"time"
	"weak"

	"connectrpc.com/connect"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// connInfo is what the HTTP layer knows about a call and Connect does not pass on: the TLS state
// (client certificate) and the response writer (per-send write deadlines on streams).
type connInfo struct {
	tls  *tls.ConnectionState
	w    http.ResponseWriter
	addr string
}

type connInfoKey struct{}

// withConnInfo stores the connection details in the request context for the interceptor.
func withConnInfo(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ci := &connInfo{tls: r.TLS, w: w, addr: r.RemoteAddr}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), connInfoKey{}, ci)))
	})
}

func connInfoFrom(ctx context.Context) *connInfo {
	ci, _ := ctx.Value(connInfoKey{}).(*connInfo)
	return ci
}

// Caller is the authenticated identity of a node-port call.
type Caller struct {
	// ID is the identity from the client certificate.
	ID identity.ID
	// WGKey is the WireGuard key the certificate carries (zero for relays without one).
	WGKey [32]byte
	// NodeID is the caller's mesh node: the node itself, or a vrouter's node; empty for relays.
	NodeID string
	// Addr is the remote host:port.
	Addr string
	// NotAfter is when the certificate the connection presented expires.
	NotAfter time.Time
}

type callerKey struct{}

// CallerFrom returns the caller the interceptor authenticated.
func CallerFrom(ctx context.Context) (*Caller, bool) {
	c, ok := ctx.Value(callerKey{}).(*Caller)
	return c, ok
}

// registry is the in-memory revocation set: nodes known live, nodes known deleted or quarantined.
// The change feed (through the loader) and the NodeRevoker hook keep it current; a node it has not
// heard of is looked up in the store once.
type registry struct {
	mu      sync.RWMutex
	live    map[string]string // node id -> tenant id
	revoked map[string]string // node id -> reason
	// validUntil is the newest certificate expiry issued per identity (renewals): a connection
	// whose handshake certificate expired stays usable while its identity holds a newer one.
	validUntil map[string]time.Time
}

func newRegistry() *registry {
	return &registry{live: map[string]string{}, revoked: map[string]string{}, validUntil: map[string]time.Time{}}
}

func (r *registry) setLive(tenantID, nodeID string) {
	r.mu.Lock()
	r.live[nodeID] = tenantID
	delete(r.revoked, nodeID)
	r.mu.Unlock()
}

func (r *registry) revoke(nodeID, reason string) {
	r.mu.Lock()
	delete(r.live, nodeID)
	r.revoked[nodeID] = reason
	r.mu.Unlock()
}

// state returns (tenant, "", true) for a live node, ("", reason, true) for a revoked one and
// ok == false when unknown.
func (r *registry) state(nodeID string) (tenant, reason string, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if t, ok := r.live[nodeID]; ok {
		return t, "", true
	}
	if why, ok := r.revoked[nodeID]; ok {
		return "", why, true
	}
	return "", "", false
}

func (r *registry) renewed(id string, notAfter time.Time) {
	r.mu.Lock()
	if notAfter.After(r.validUntil[id]) {
		r.validUntil[id] = notAfter
	}
	r.mu.Unlock()
}

func (r *registry) certValidUntil(id string) time.Time {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.validUntil[id]
}

// authInterceptor authenticates every call of the services it wraps (all node-port services but
// EnrollmentService).
type authInterceptor struct{ p *Plane }

func (a authInterceptor) WrapUnary(next connect.UnaryFunc) connect.UnaryFunc {
	return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
		ctx, err := a.p.authenticate(ctx)
		if err != nil {
			return nil, err
		}
		return next(ctx, req)
	}
}

func (a authInterceptor) WrapStreamingClient(next connect.StreamingClientFunc) connect.StreamingClientFunc {
	return next
}

func (a authInterceptor) WrapStreamingHandler(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
	return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
		ctx, err := a.p.authenticate(ctx)
		if err != nil {
			return err
		}
		return next(ctx, conn)
	}
}

// authenticate verifies the connection's client certificate and that its identity is not revoked.
func (p *Plane) authenticate(ctx context.Context) (context.Context, error) {
	ci := connInfoFrom(ctx)
	if ci == nil || ci.tls == nil {
		return ctx, unauthenticated("a client certificate issued by this controller is required")
	}
	var (
		peer pki.Peer
		err  error
	)
	if leaf := firstCert(ci.tls.PeerCertificates); leaf != nil {
		if cp, ok := p.verified.get(leaf); ok && p.now().Before(cp.NotAfter) {
			peer = cp
		} else if peer, err = p.verifier.VerifyConnection(ci.tls); err == nil {
			p.verified.put(leaf, peer)
		}
	} else {
		peer, err = p.verifier.VerifyConnection(ci.tls)
	}
	if errors.Is(err, pki.ErrCertificateExpired) {
		peer, err = p.extended(ci.tls.PeerCertificates)
	}
	if err != nil {
		return ctx, unauthenticated("client certificate refused: %v", err)
	}
	c := &Caller{ID: peer.ID, WGKey: peer.WGKey, Addr: ci.addr, NotAfter: peer.NotAfter}
	if err := p.checkLive(ctx, c); err != nil {
		return ctx, err
	}
	return context.WithValue(ctx, callerKey{}, c), nil
}

func firstCert(cs []*x509.Certificate) *x509.Certificate {
	if len(cs) == 0 {
		return nil
	}
	return cs[0]
}

// verifiedConns remembers the verified identity of each connection's client certificate: every
// call on a connection presents the same parsed certificate, and verifying its chain (two ECDSA
// signature checks) on every acknowledgement and report was the node port's largest CPU cost. The
// entry is dropped with the certificate (when the connection is gone); expiry and revocation are
// still checked on every call.
type verifiedConns struct {
	mu sync.Mutex
	m  map[weak.Pointer[x509.Certificate]]pki.Peer
}

func (v *verifiedConns) get(leaf *x509.Certificate) (pki.Peer, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	p, ok := v.m[weak.Make(leaf)]
	return p, ok
}

func (v *verifiedConns) put(leaf *x509.Certificate, p pki.Peer) {
	wp := weak.Make(leaf)
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[weak.Pointer[x509.Certificate]]pki.Peer{}
	}
	if _, ok := v.m[wp]; ok {
		return
	}
	// The cached Peer must not keep the certificate alive, or the entry would never go.
	p.Leaf = nil
	v.m[wp] = p
	runtime.AddCleanup(leaf, v.drop, wp)
}

func (v *verifiedConns) drop(wp weak.Pointer[x509.Certificate]) {
	v.mu.Lock()
	delete(v.m, wp)
	v.mu.Unlock()
}

// extended accepts a connection whose handshake certificate has expired since, when the same
// identity was issued a newer certificate (RenewCertificate) that is still valid: the agent keeps
// its connection and streams across renewals, new connections present the new certificate, and a
// node that stopped renewing loses the connection when its last certificate expires.
func (p *Plane) extended(chain []*x509.Certificate) (pki.Peer, error) {
	if len(chain) == 0 {
		return pki.Peer{}, pki.ErrNoClientCertificate
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	// The chain was valid during its lifetime (the handshake checked it too).
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots: p.roots, Intermediates: inter, CurrentTime: leaf.NotAfter.Add(-time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return pki.Peer{}, fmt.Errorf("%w: %w", pki.ErrUntrusted, err)
	}
	id, key, err := identity.FromCertificate(leaf)
	if err != nil || id.TrustDomain != p.auth.TrustDomain() {
		return pki.Peer{}, fmt.Errorf("%w: %v", pki.ErrForeignIdentity, err)
	}
	until := p.reg.certValidUntil(id.String())
	if until.IsZero() {
		// Renewed through another replica: the store has the newest expiry.
		until = p.storedCertExpiry(id)
		p.reg.renewed(id.String(), until)
	}
	if !p.now().Before(until) {
		return pki.Peer{}, fmt.Errorf("%w: expired %s and not renewed", pki.ErrCertificateExpired, leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	return pki.Peer{ID: id, WGKey: key, Serial: leaf.SerialNumber.String(), NotAfter: until, Leaf: leaf}, nil
}

// storedCertExpiry returns the expiry of the newest certificate the store recorded for id (nodes
// and relays; zero when unknown).
func (p *Plane) storedCertExpiry(id identity.ID) time.Time {
	var until time.Time
	ctx := context.Background()
	_ = p.deps.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		switch id.Kind {
		case identity.KindNode:
			if n, err := tx.GetNode(ctx, id.ResourceID); err == nil {
				until = n.CertExpireTime
			}
		case identity.KindRelay:
			if r, err := tx.GetRelay(ctx, id.ResourceID); err == nil {
				until = r.CertExpireTime
			}
		}
		return nil
	})
	return until
}

// checkLive refuses revoked identities and fills in the caller's mesh node.
func (p *Plane) checkLive(ctx context.Context, c *Caller) error {
	switch c.ID.Kind {
	case identity.KindNode:
		c.NodeID = c.ID.ResourceID
		return p.checkNode(ctx, c.ID.TenantID, c.NodeID)
	case identity.KindRelay:
		_, err := p.relayOf(ctx, c.ID.ResourceID)
		if err != nil {
			return unauthenticated("relay %s is not registered: %v", c.ID.ResourceID, err)
		}
		return nil
	case identity.KindVRouter:
		v, err := p.vrouterOf(ctx, c.ID.ResourceID)
		if err != nil {
			return unauthenticated("vrouter %s is not registered: %v", c.ID.ResourceID, err)
		}
		if v.TenantID != c.ID.TenantID {
			return unauthenticated("vrouter %s belongs to another tenant", c.ID.ResourceID)
		}
		c.NodeID = v.NodeID
		if c.NodeID != "" {
			return p.checkNode(ctx, c.ID.TenantID, c.NodeID)
		}
		return nil
	}
	return unauthenticated("unsupported identity kind %q", c.ID.Kind)
}

func (p *Plane) checkNode(ctx context.Context, tenantID, nodeID string) error {
	tenant, reason, known := p.reg.state(nodeID)
	if !known {
		var n *domain.Node
		err := p.deps.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
			var err error
			n, err = tx.GetNode(ctx, nodeID)
			return err
		})
		switch {
		case store.IsNotFound(err):
			p.reg.revoke(nodeID, "node deleted")
			reason = "node deleted"
		case err != nil:
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("look up node: %w", err))
		case n.Status == domain.NodeQuarantined:
			reason = "node quarantined"
			p.reg.revoke(nodeID, reason)
		default:
			tenant = n.TenantID
			p.reg.setLive(n.TenantID, n.ID)
		}
	}
	if reason != "" {
		return unauthenticated("node %s is revoked: %s", nodeID, reason)
	}
	if tenant != tenantID {
		return unauthenticated("node %s does not belong to tenant %s", nodeID, tenantID)
	}
	return nil
}

// resourceCache remembers relay and vrouter records briefly: they are read on every call of theirs,
// which are few (reports every 30 s, one stream).
type resourceCache[T any] struct {
	mu  sync.Mutex
	ttl time.Duration
	m   map[string]cached[T]
}

type cached[T any] struct {
	v  *T
	at time.Time
}

func (c *resourceCache[T]) get(id string, now time.Time) (*T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[id]
	if !ok || now.Sub(e.at) > c.ttl {
		return nil, false
	}
	return e.v, true
}

func (c *resourceCache[T]) put(id string, v *T, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) > 10000 {
		c.m = map[string]cached[T]{}
	}
	c.m[id] = cached[T]{v, now}
}

func (c *resourceCache[T]) drop(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

func (p *Plane) relayOf(ctx context.Context, id string) (*domain.Relay, error) {
	if r, ok := p.relays.get(id, p.now()); ok {
		return r, nil
	}
	var r *domain.Relay
	err := p.deps.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		r, err = tx.GetRelay(ctx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	p.relays.put(id, r, p.now())
	return r, nil
}

func (p *Plane) vrouterOf(ctx context.Context, id string) (*domain.VRouter, error) {
	if v, ok := p.vrouters.get(id, p.now()); ok {
		return v, nil
	}
	var v *domain.VRouter
	err := p.deps.Store.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		v, err = tx.GetVRouter(ctx, id)
		return err
	})
	if err != nil {
		return nil, err
	}
	p.vrouters.put(id, v, p.now())
	return v, nil
}
