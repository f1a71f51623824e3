// Package nodeplane is the controller's machine plane on the node port (:8444): enrollment with a
// join token, mTLS authentication of every other call against the controller's CA and an in-memory
// revocation set, the network-map streams (snapshot, then coalesced per-node deltas from the engine,
// with bounded queues and snapshot resync for slow agents), acknowledgements with the state hash,
// status reports, hole punching, certificate renewal, admission control under overload, and the
// relay and vrouter control services.
//
// One Plane serves one controller replica. Replicas share only the store: each Plane's loader
// follows the store's change feed, so a change committed on any replica reaches every agent, and
// each Plane records its open streams in the store's stream registry, so that a session conflict
// spanning replicas is detected and a hole punch reaches a peer streaming from another replica
// (ADR 009).
package nodeplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/netmap"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/convert"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/fanout"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/mapsync"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1/nodev1connect"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1/relayv1connect"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1/vrouterv1connect"
)

// Deps are what a Plane needs. Store and Authority are required; zero limits and intervals take
// the defaults documented on each field.
type Deps struct {
	Store     store.Store
	Authority pki.Authority
	Log       *slog.Logger

	// ServerCert is the node port's certificate; nil issues one from Authority for ServerNames
	// (plus localhost, 127.0.0.1, ::1).
	ServerCert  *pki.ServerCert
	ServerNames []string
	// ControlEndpoints are the node-port host:port values returned by Enroll.
	ControlEndpoints []string

	// CertTTL is the validity of issued certificates when the tenant sets none (0: the authority's
	// default, 8 h).
	CertTTL time.Duration
	// History is the number of deltas the engine keeps per node for resumption (0: 64).
	History int

	// QueueLen bounds each stream's queue of deltas (0: 64); beyond it the stream resyncs.
	QueueLen int
	// Coalesce is how long a stream waits after a change for more before sending (0: 25 ms).
	Coalesce time.Duration
	// KeepAlive is the idle interval after which a stream sends a KeepAlive (0: 2 min; agents send
	// HTTP/2 pings every 30 s themselves, which keep middleboxes' state; each KeepAlive is a TLS
	// write per stream, the largest idle cost at 10,000 streams).
	KeepAlive time.Duration
	// SendTimeout ends a stream whose agent does not read a message within it (0: 30 s).
	SendTimeout time.Duration

	// FullMaps sends every change as a whole snapshot instead of a delta, the way controllers that
	// rebuild full maps work. It exists to measure what deltas save (netmapbench); never in
	// production.
	FullMaps bool

	// MaxStreams caps concurrent map streams (0: 50,000); StreamRate and StreamBurst cap how fast
	// streams are accepted (0: 2,000/s, burst 500). Beyond: ResourceExhausted with retry-after-ms.
	MaxStreams  int
	StreamRate  float64
	StreamBurst int
	// EnrollRate and EnrollBurst cap enrollments per client address (0: 5/s, burst 20) and
	// EnrollGlobalRate all enrollments (0: 200/s).
	EnrollRate       float64
	EnrollBurst      int
	EnrollGlobalRate float64

	// ReportInterval is what agents are told to report at (0: 30 s). OfflineAfter marks a node
	// without a stream or report for that long offline (0: 3 x ReportInterval). EphemeralTimeout is
	// the offline time after which an ephemeral node is deleted when its tenant sets none (0: 10 min).
	ReportInterval   time.Duration
	OfflineAfter     time.Duration
	EphemeralTimeout time.Duration
	// SweepInterval is how often the offline sweeper and the status writer run (0: 1 s).
	SweepInterval time.Duration
	// ReplicaHeartbeat is how often the replica marks itself alive in the store's stream registry
	// (0: 10 s); a replica not seen for 3 heartbeats is dead and its streams no longer count
	// (ADR 009).
	ReplicaHeartbeat time.Duration

	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (d *Deps) defaults() error {
	if d.Store == nil || d.Authority == nil {
		return errors.New("nodeplane: Store and Authority are required")
	}
	if d.Log == nil {
		d.Log = slog.Default()
	}
	set := func(v *time.Duration, def time.Duration) {
		if *v <= 0 {
			*v = def
		}
	}
	set(&d.Coalesce, 25*time.Millisecond)
	set(&d.KeepAlive, 2*time.Minute)
	set(&d.SendTimeout, 30*time.Second)
	set(&d.ReportInterval, 30*time.Second)
	set(&d.OfflineAfter, 3*d.ReportInterval)
	set(&d.EphemeralTimeout, 10*time.Minute)
	set(&d.SweepInterval, time.Second)
	set(&d.ReplicaHeartbeat, 10*time.Second)
	if d.MaxStreams <= 0 {
		d.MaxStreams = 50000
	}
	if d.StreamRate <= 0 {
		d.StreamRate = 2000
	}
	if d.StreamBurst <= 0 {
		d.StreamBurst = 500
	}
	if d.EnrollRate <= 0 {
		d.EnrollRate = 5
	}
	if d.EnrollBurst <= 0 {
		d.EnrollBurst = 20
	}
	if d.EnrollGlobalRate <= 0 {
		d.EnrollGlobalRate = 200
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	return nil
}

// NodeRevoker is the hook the API calls after deleting or quarantining a node.
type NodeRevoker interface {
	RevokeNode(ctx context.Context, tenantID, nodeID string)
}

// Plane is one replica's node plane.
type Plane struct {
	deps     Deps
	log      *slog.Logger
	auth     pki.Authority
	roots    *x509.CertPool
	verifier *pki.Verifier
	server   *pki.ServerCert
	validate protovalidate.Validator

	engine    *netmap.Engine
	peers     convert.SharedPeers
	loader    *mapsync.Loader
	hub       *fanout.Hub
	reg       *registry
	verified  verifiedConns
	status    *statusWriter
	streamReg *streamRegistry
	admit     *admission
	enroll    *enrollLimiter

	relays   resourceCache[domainRelay]
	vrouters resourceCache[domainVRouter]

	streamsMu sync.Mutex
	streams   map[*fanout.Sub]*mapStream

	configMu   sync.Mutex
	configWake chan struct{} // closed and replaced when relays or vrouters change

	closeOnce sync.Once
	closed    chan struct{}
}

// Aliases keep the cache declarations short.
type (
	domainRelay   = domain.Relay
	domainVRouter = domain.VRouter
)

var _ NodeRevoker = (*Plane)(nil)

// New builds a Plane and loads the network maps from the store. Call Run for the background work
// (change feed, status writes, offline sweeps) and serve Handler with TLSConfig.
func New(ctx context.Context, deps Deps) (*Plane, error) {
	if err := deps.defaults(); err != nil {
		return nil, err
	}
	v, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("nodeplane: validator: %w", err)
	}
	p := &Plane{
		deps: deps, log: deps.Log, auth: deps.Authority, roots: deps.Authority.Roots(),
		verifier: pki.VerifierFor(deps.Authority), validate: v,
		engine:     netmap.New(netmap.Options{History: deps.History}),
		hub:        fanout.New(deps.QueueLen),
		reg:        newRegistry(),
		streams:    map[*fanout.Sub]*mapStream{},
		configWake: make(chan struct{}),
		closed:     make(chan struct{}),
	}
	p.relays.ttl, p.vrouters.ttl = 5*time.Second, 5*time.Second
	p.admit = newAdmission(deps.MaxStreams, deps.StreamRate, deps.StreamBurst)
	p.enroll = newEnrollLimiter(deps.EnrollRate, deps.EnrollBurst, deps.EnrollGlobalRate)
	p.status = newStatusWriter(p)
	p.streamReg = newStreamRegistry(p, deps.ReplicaHeartbeat)
	p.hub.OnRemove(p.streamReg.removed)
	p.server = deps.ServerCert
	if p.server == nil {
		if p.server, err = pki.NewServerCert(ctx, deps.Authority, deps.ServerNames, 0, deps.Log); err != nil {
			return nil, fmt.Errorf("nodeplane: server certificate: %w", err)
		}
	}
	p.loader = mapsync.New(mapsync.Options{
		Store: deps.Store, Engine: p.engine, Sink: p, Observer: p, Log: deps.Log,
		OnChanges: p.onChanges,
	})
	if err := p.loader.Load(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// Handler serves every node-port service: EnrollmentService without a client certificate, and
// ControlService, RelayControlService and VRouterControlService behind mTLS authentication.
func (p *Plane) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle(nodev1connect.NewEnrollmentServiceHandler(enrollService{p}))
	authn := connect.WithInterceptors(authInterceptor{p})
	mux.Handle(nodev1connect.NewControlServiceHandler(controlService{p}, authn))
	mux.Handle(relayv1connect.NewRelayControlServiceHandler(relayService{p}, authn))
	mux.Handle(vrouterv1connect.NewVRouterControlServiceHandler(vrouterService{p}, authn))
	return withConnInfo(mux)
}

// TLSConfig is the node port's TLS configuration: TLS 1.3, the controller certificate, client
// certificates verified against the CA when given (Enroll is called without one).
func (p *Plane) TLSConfig() *tls.Config {
	return pki.NodePortTLSConfig(p.auth, p.server)
}

// Run follows the store's change feed and runs the status writer and offline sweeper until ctx
// ends or Close is called.
func (p *Plane) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.closed:
			cancel()
		case <-ctx.Done():
		}
	}()
	var wg sync.WaitGroup
	errc := make(chan error, 1)
	wg.Add(3)
	go func() {
		defer wg.Done()
		if err := p.loader.Run(ctx); err != nil {
			errc <- err
			cancel()
		}
	}()
	go func() {
		defer wg.Done()
		p.status.run(ctx)
	}()
	go func() {
		defer wg.Done()
		p.streamReg.run(ctx)
	}()
	wg.Wait()
	select {
	case err := <-errc:
		return err
	default:
		return nil
	}
}

// Close ends every open stream (agents reconnect elsewhere) and stops Run.
func (p *Plane) Close() error {
	p.closeOnce.Do(func() {
		close(p.closed)
		p.hub.CloseAll(connect.NewError(connect.CodeUnavailable, errors.New("controller shutting down")))
	})
	return nil
}

// RevokeNode closes a deleted or quarantined node's streams at once and refuses its certificate
// from now on. The API calls it after committing; the change feed does the same on every replica.
func (p *Plane) RevokeNode(ctx context.Context, tenantID, nodeID string) {
	p.revoke(tenantID, nodeID, "revoked by an administrator")
}

func (p *Plane) revoke(tenantID, nodeID, reason string) {
	p.reg.revoke(nodeID, reason)
	if n := p.hub.CloseNode(nodeID, unauthenticated("node %s: %s", nodeID, reason)); n > 0 {
		p.log.Info("closed streams of revoked node", "tenant", tenantID, "node", nodeID, "streams", n, "reason", reason)
	}
}

// Streams returns the number of open network-map streams.
func (p *Plane) Streams() int { return p.hub.Len() }

// Engine returns the replica's network-map engine (read-only use: benchmarks, diagnostics).
func (p *Plane) Engine() *netmap.Engine { return p.engine }

// CatchUp applies every committed change now instead of at the next feed wake-up.
func (p *Plane) CatchUp(ctx context.Context) error { return p.loader.CatchUp(ctx) }

// Deliver implements mapsync.Sink.
func (p *Plane) Deliver(ds []*netmap.Delta) { p.hub.Deliver(ds) }

// Resync implements mapsync.Sink.
func (p *Plane) Resync(nodeIDs []string) { p.hub.Resync(nodeIDs) }

// NodeLive implements mapsync.Observer.
func (p *Plane) NodeLive(n *domain.Node) { p.reg.setLive(n.TenantID, n.ID) }

// NodeRevoked implements mapsync.Observer.
func (p *Plane) NodeRevoked(tenantID, nodeID, reason string) { p.revoke(tenantID, nodeID, reason) }

func (p *Plane) onChanges(evs []domain.ChangeEvent) {
	wake := false
	for _, e := range evs {
		switch e.ResourceType {
		case domain.ResourceRelay:
			p.relays.drop(e.ResourceID)
			wake = true
		case domain.ResourceVRouter:
			p.vrouters.drop(e.ResourceID)
			wake = true
		case domain.ResourceRegion:
			wake = true
		}
	}
	if wake {
		p.configMu.Lock()
		close(p.configWake)
		p.configWake = make(chan struct{})
		p.configMu.Unlock()
	}
}

// configChanged returns a channel closed at the next relay, region or vrouter change.
func (p *Plane) configChanged() <-chan struct{} {
	p.configMu.Lock()
	defer p.configMu.Unlock()
	return p.configWake
}

// followConfig streams a relay's or vrouter's configuration: load(id) now and after every relay,
// region or vrouter change, sent whenever it differs from the last one. skip (optional) says
// whether the first configuration is one the caller already has. It returns when the caller goes
// away, the resource is deleted (Unauthenticated) or the controller shuts down.
func followConfig[T proto.Message](ctx context.Context, p *Plane, kind, id string, load func(context.Context, string) (T, error), skip func(T) bool, send func(T) error) error {
	var last T
	sent := false
	for {
		wake := p.configChanged()
		cfg, err := load(ctx, id)
		if store.IsNotFound(err) {
			return unauthenticated("%s %s was deleted", kind, id)
		}
		if err != nil {
			return toConnect(err)
		}
		if sent && !proto.Equal(cfg, last) || !sent && (skip == nil || !skip(cfg)) {
			if err := send(cfg); err != nil {
				return err
			}
		}
		last, sent = cfg, true
		select {
		case <-ctx.Done():
			return nil
		case <-p.closed:
			return connect.NewError(connect.CodeUnavailable, fmt.Errorf("controller shutting down"))
		case <-wake:
		}
	}
}

func (p *Plane) now() time.Time { return p.deps.Now() }
