package nodeplane

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/netmap"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/convert"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/fanout"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

type controlService struct{ p *Plane }

func meshCaller(ctx context.Context) (*Caller, error) {
	c, ok := CallerFrom(ctx)
	if !ok {
		return nil, unauthenticated("not authenticated")
	}
	if c.NodeID == "" {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s has no mesh node", c.ID))
	}
	return c, nil
}

// WatchNetworkMap implements nodev1connect.ControlServiceHandler.
//
// Its goroutine stays parked in loop for the stream's life, one per agent: the frames beneath loop
// are kept small (the setup runs in openMapStream and returns), so that the runtime shrinks the
// goroutine's stack to 8 KiB instead of keeping 16 KiB.
func (s controlService) WatchNetworkMap(ctx context.Context, req *connect.Request[nodev1.WatchNetworkMapRequest], stream *connect.ServerStream[nodev1.WatchNetworkMapResponse]) error {
	ms, err := s.p.openMapStream(ctx, req.Msg, stream)
	if err != nil {
		return err
	}
	defer ms.close()
	return ms.loop(ctx)
}

// openMapStream admits and registers a stream and sends its first message. On success the caller
// must call close when the stream ends.
//
//go:noinline
func (p *Plane) openMapStream(ctx context.Context, msg *nodev1.WatchNetworkMapRequest, stream *connect.ServerStream[nodev1.WatchNetworkMapResponse]) (*mapStream, error) {
	c, err := meshCaller(ctx)
	if err != nil {
		return nil, err
	}
	if err := p.validate.Validate(msg); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	release, wait, ok := p.admit.acquire()
	if !ok {
		return nil, exhausted("controller busy: too many map streams", wait)
	}

	nwID, _, ok := p.loader.Network(c.NodeID)
	if !ok {
		// Enrolled a moment ago, maybe through another replica: apply the feed now.
		if err := p.loader.CatchUp(ctx); err != nil {
			release()
			return nil, connect.NewError(connect.CodeUnavailable, err)
		}
		if nwID, _, ok = p.loader.Network(c.NodeID); !ok {
			release()
			return nil, connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %s is not in any loaded network", c.NodeID))
		}
	}
	sub := fanout.NewSub(c.NodeID, msg.GetSessionId(), c.Addr)
	ms := &mapStream{p: p, sub: sub, caller: c, nwID: nwID, release: release}
	ci := connInfoFrom(ctx)
	ms.send = func(m *nodev1.WatchNetworkMapResponse) error {
		// A stuck agent must not hold this goroutine forever: past the deadline the stream is reset.
		rc := http.NewResponseController(ci.w)
		_ = rc.SetWriteDeadline(time.Now().Add(p.deps.SendTimeout))
		err := stream.Send(m)
		_ = rc.SetWriteDeadline(time.Time{})
		return err
	}
	others := p.hub.Add(sub)
	p.streamsMu.Lock()
	p.streams[sub] = ms
	p.streamsMu.Unlock()
	if err := p.detectConflict(ctx, c, sub, others); err != nil {
		ms.close()
		return nil, err
	}
	p.status.streamOpened(c)

	if err := ms.initial(msg.GetKnownVersion()); err != nil {
		ms.close()
		return nil, err
	}
	return ms, nil
}

// close unregisters the stream and gives back its admission slot.
func (ms *mapStream) close() {
	p := ms.p
	left := p.hub.Remove(ms.sub)
	p.streamsMu.Lock()
	delete(p.streams, ms.sub)
	p.streamsMu.Unlock()
	p.status.streamClosed(ms.caller, len(left))
	ms.release()
}

// mapStream is the server side of one WatchNetworkMap stream. It mirrors the agent's state (what
// it was sent) to judge acknowledgements by the same hash the agent computes.
type mapStream struct {
	p       *Plane
	sub     *fanout.Sub
	caller  *Caller
	nwID    netmap.NetworkID
	send    func(*nodev1.WatchNetworkMapResponse) error
	release func() // the admission slot

	mu             sync.Mutex
	mirror         netmapstate.State
	epoch, version uint64 // what the agent holds, once it applied what was sent
	hashAt         uint64 // wire version the cached hash is of
	hash           string
	sentAt         time.Time
	acked          uint64
	pendingMarked  bool
}

func (ms *mapStream) wire() uint64 { return convert.WireVersion(ms.epoch, ms.version) }

// initial sends the deltas since known when the engine still holds them, else a snapshot.
func (ms *mapStream) initial(known uint64) error {
	if known == 0 {
		return ms.sendSnapshot()
	}
	snap, err := ms.p.engine.Snapshot(ms.nwID, ms.sub.NodeID)
	if err != nil {
		return ms.snapshotErr(err)
	}
	tag, ver := convert.SplitWireVersion(known)
	if tag != convert.EpochTag(snap.Epoch) || ver > snap.Version {
		return ms.sendSnapshot()
	}
	ds, err := ms.p.engine.DeltasSince(ms.nwID, ms.sub.NodeID, snap.Epoch, ver)
	if err != nil {
		return ms.sendSnapshot()
	}
	// Deltas after the snapshot's version arrive through the queue as well.
	ds = slices.DeleteFunc(slices.Clone(ds), func(d *netmap.Delta) bool { return d.Version > snap.Version })
	_, nw, _ := ms.p.loader.Network(ms.sub.NodeID)
	m := convert.Snapshot(&snap, nw, ms.p.peers.Get)
	ms.mu.Lock()
	ms.mirror.ApplySnapshot(m)
	ms.epoch, ms.version, ms.sentAt = snap.Epoch, snap.Version, time.Now()
	ms.mu.Unlock()
	if len(ds) == 0 {
		// Already current: a heartbeat tells the agent the stream is up.
		return ms.send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_KeepAlive{KeepAlive: &nodev1.KeepAlive{SendTime: timestamppb.Now()}}})
	}
	d, ok := convert.Merge(ds, nw, ms.p.peers.Get)
	if !ok {
		return ms.sendSnapshot()
	}
	return ms.send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Delta{Delta: d}})
}

func (ms *mapStream) snapshotErr(err error) error {
	if errors.Is(err, netmap.ErrUnknownNode) || errors.Is(err, netmap.ErrUnknownNetwork) {
		return connect.NewError(connect.CodeFailedPrecondition, fmt.Errorf("node %s has no network map: %w", ms.sub.NodeID, err))
	}
	return connect.NewError(connect.CodeInternal, err)
}

func (ms *mapStream) sendSnapshot() error {
	snap, err := ms.p.engine.Snapshot(ms.nwID, ms.sub.NodeID)
	if err != nil {
		return ms.snapshotErr(err)
	}
	_, nw, _ := ms.p.loader.Network(ms.sub.NodeID)
	m := convert.Snapshot(&snap, nw, ms.p.peers.Get)
	ms.mu.Lock()
	ms.mirror.ApplySnapshot(m)
	ms.epoch, ms.version, ms.sentAt, ms.pendingMarked = snap.Epoch, snap.Version, time.Now(), false
	ms.mu.Unlock()
	return ms.send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Snapshot{Snapshot: m}})
}

func (ms *mapStream) loop(ctx context.Context) error {
	// One timer serves the keep-alive, the certificate expiry and the coalescing wait: every
	// agent holds one such stream, so what each keeps counts.
	t := streamTimes{keep: time.Now().Add(ms.p.deps.KeepAlive), expiry: ms.caller.NotAfter}
	timer := time.NewTimer(time.Until(t.next()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ms.sub.Done():
			return ms.sub.Err()
		case <-ms.sub.Wake():
			// Wait a moment so that a burst of changes goes out as one message.
			if t.flush.IsZero() {
				t.flush = time.Now().Add(ms.p.deps.Coalesce)
			}
		case <-timer.C:
			if err := ms.onTimer(&t); err != nil {
				return err
			}
		}
		timer.Reset(time.Until(t.next()))
	}
}

// streamTimes are a stream's deadlines.
type streamTimes struct {
	keep   time.Time // the next keep-alive
	expiry time.Time // the end of the client certificate
	flush  time.Time // zero: nothing waits to be sent
}

func (t *streamTimes) next() time.Time {
	n := earliest(t.keep, t.expiry)
	if !t.flush.IsZero() {
		n = earliest(n, t.flush)
	}
	return n
}

// onTimer does what is due: the coalesced flush, the certificate check, the keep-alive.
//
//go:noinline
func (ms *mapStream) onTimer(t *streamTimes) error {
	p := ms.p
	now := time.Now()
	if !t.flush.IsZero() && !now.Before(t.flush) {
		t.flush = time.Time{}
		if err := ms.flush(); err != nil {
			return err
		}
		t.keep = time.Now().Add(p.deps.KeepAlive)
	}
	if !now.Before(t.expiry) {
		// The certificate the stream was opened with ran out: it lives on only while the identity
		// holds a renewed one.
		until := p.reg.certValidUntil(ms.caller.ID.String())
		if !now.Before(until) {
			return unauthenticated("client certificate expired at %s and was not renewed", ms.caller.NotAfter.UTC().Format(time.RFC3339))
		}
		t.expiry = until
	}
	if !now.Before(t.keep) {
		if err := ms.send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_KeepAlive{KeepAlive: &nodev1.KeepAlive{SendTime: timestamppb.Now()}}}); err != nil {
			return err
		}
		t.keep = time.Now().Add(p.deps.KeepAlive)
	}
	return nil
}

func earliest(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// flush sends what the queue holds: posted hole punches, then one merged delta or a snapshot.
func (ms *mapStream) flush() error {
	for _, m := range ms.sub.TakePosted() {
		if hp, ok := m.(*nodev1.HolePunch); ok {
			if err := ms.send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_HolePunch{HolePunch: hp}}); err != nil {
				return err
			}
		}
	}
	items, resync := ms.sub.Take()
	if resync || (ms.p.deps.FullMaps && len(items) > 0) {
		return ms.sendSnapshot()
	}
	ms.mu.Lock()
	epoch, version := ms.epoch, ms.version
	ms.mu.Unlock()
	var ds []*netmap.Delta
	for _, it := range items {
		if it.Delta.Resync {
			return ms.sendSnapshot()
		}
		if it.Delta.Epoch == epoch && it.Delta.Version <= version {
			continue // already in what the agent was sent
		}
		ds = append(ds, it.Delta)
	}
	if len(ds) == 0 {
		return nil
	}
	if ds[0].Epoch != epoch || ds[0].BaseVersion != version {
		return ms.sendSnapshot()
	}
	_, nw, _ := ms.p.loader.Network(ms.sub.NodeID)
	d, ok := convert.Merge(ds, nw, ms.p.peers.Get)
	if !ok {
		return ms.sendSnapshot()
	}
	last := ds[len(ds)-1]
	ms.mu.Lock()
	err := ms.mirror.ApplyDelta(d)
	if err == nil {
		ms.epoch, ms.version, ms.sentAt, ms.pendingMarked = last.Epoch, last.Version, time.Now(), false
	}
	ms.mu.Unlock()
	if err != nil {
		return ms.sendSnapshot()
	}
	return ms.send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Delta{Delta: d}})
}

// judge compares an acknowledgement with what this stream sent. ok is false when the version is
// not of this stream's epoch (the agent acknowledges a map another replica or an older engine sent).
func (ms *mapStream) judge(version uint64, hash, applyErr string) (sync domain.NodeSync, ok bool) {
	ms.mu.Lock()
	tag, _ := convert.SplitWireVersion(version)
	if tag != convert.EpochTag(ms.epoch) {
		ms.mu.Unlock()
		return domain.NodeSync{}, false
	}
	cur := ms.wire()
	ms.acked = version
	sync = domain.NodeSync{DesiredVersion: cur, AppliedVersion: version, AppliedHash: hash, Error: applyErr, ApplyTime: time.Now()}
	resync := false
	switch {
	case applyErr != "":
		sync.State = domain.SyncFailed
	case version < cur:
		sync.State = domain.SyncPending
	case version > cur:
		sync.State, sync.Error = domain.SyncFailed, fmt.Sprintf("acknowledged version %d was never sent (current %d)", version, cur)
		resync = true
	default:
		if ms.hashAt != cur {
			ms.hash, ms.hashAt = ms.mirror.Hash(), cur
		}
		if ms.hash == hash || (len(hash) == len(ms.hash) && netmapstate.LegacyHash(ms.mirror.Map()) == hash) {
			// The second form is what agents before the incremental hash send (O(peers), only
			// for them).
			sync.State = domain.SyncInSync
		} else {
			sync.State = domain.SyncFailed
			sync.Error = fmt.Sprintf("state hash %s differs from the controller's %s", hash, ms.hash)
			resync = true
		}
	}
	ms.mu.Unlock()
	if resync {
		// Self-healing: whatever the agent holds, a snapshot replaces it.
		ms.sub.Resync()
	}
	return sync, true
}

// AckNetworkMap implements nodev1connect.ControlServiceHandler.
func (s controlService) AckNetworkMap(ctx context.Context, req *connect.Request[nodev1.AckNetworkMapRequest]) (*connect.Response[nodev1.AckNetworkMapResponse], error) {
	p := s.p
	c, err := meshCaller(ctx)
	if err != nil {
		return nil, err
	}
	if err := p.validate.Validate(req.Msg); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	m := req.Msg
	var (
		sync   domain.NodeSync
		judged bool
	)
	for _, ms := range p.streamsOf(c.NodeID) {
		if sync, judged = ms.judge(m.GetVersion(), m.GetStateHash(), m.GetError()); judged {
			break
		}
	}
	if !judged {
		// No stream of ours sent that version: record what the agent says without a verdict.
		sync = domain.NodeSync{State: domain.SyncPending, AppliedVersion: m.GetVersion(), AppliedHash: m.GetStateHash(), Error: m.GetError(), ApplyTime: time.Now()}
		if m.GetError() != "" {
			sync.State = domain.SyncFailed
		}
	}
	p.status.ack(c, sync)
	return connect.NewResponse(&nodev1.AckNetworkMapResponse{InSync: sync.State == domain.SyncInSync}), nil
}

func (p *Plane) streamsOf(nodeID string) []*mapStream {
	subs := p.hub.Streams(nodeID)
	out := make([]*mapStream, 0, len(subs))
	p.streamsMu.Lock()
	defer p.streamsMu.Unlock()
	for _, s := range subs {
		if ms := p.streams[s]; ms != nil {
			out = append(out, ms)
		}
	}
	return out
}

var endpointTypes = map[nodev1.EndpointType]domain.EndpointType{
	nodev1.EndpointType_ENDPOINT_TYPE_LOCAL: domain.EndpointLocal, nodev1.EndpointType_ENDPOINT_TYPE_STUN: domain.EndpointSTUN,
	nodev1.EndpointType_ENDPOINT_TYPE_PUBLIC: domain.EndpointPublic,
}

var pathTypes = map[nodev1.PathType]domain.PathType{
	nodev1.PathType_PATH_TYPE_DIRECT: domain.PathDirect, nodev1.PathType_PATH_TYPE_RELAYED: domain.PathRelayed,
}

// ReportStatus implements nodev1connect.ControlServiceHandler.
func (s controlService) ReportStatus(ctx context.Context, req *connect.Request[nodev1.ReportStatusRequest]) (*connect.Response[nodev1.ReportStatusResponse], error) {
	p := s.p
	c, err := meshCaller(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	if err := p.validate.Validate(m); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	now := p.now().UTC()
	r := report{homeRelay: m.GetHomeRelayId(), agentVersion: m.GetAgentVersion(), os: m.GetOs()}
	for _, e := range m.GetEndpoints() {
		ap, err := netip.ParseAddrPort(e.GetAddress())
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("endpoint %q: %w", e.GetAddress(), err))
		}
		r.endpoints = append(r.endpoints, domain.NodeEndpoint{Address: ap, Type: endpointTypes[e.GetType()], ObserveTime: now})
	}
	for _, ps := range m.GetPeers() {
		pp := domain.NodePeerPath{
			PeerNodeID: ps.GetPeerNodeId(), Path: pathTypes[ps.GetPath()], RelayID: ps.GetRelayId(), Endpoint: ps.GetEndpoint(),
			Latency: ps.GetLatency().AsDuration(), ReportTime: now,
		}
		if ps.GetLastHandshakeTime() != nil {
			pp.LastHandshakeTime = ps.GetLastHandshakeTime().AsTime()
		}
		r.paths = append(r.paths, pp)
	}
	for _, s := range m.GetAdvertisedRoutes() {
		pr, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("advertised route %q: %w", s, err))
		}
		r.routes = append(r.routes, pr.Masked())
	}
	r.routesSet = true
	p.status.report(c, r)
	return connect.NewResponse(&nodev1.ReportStatusResponse{ReportInterval: durationpb.New(p.deps.ReportInterval)}), nil
}

// RequestHolePunch implements nodev1connect.ControlServiceHandler.
func (s controlService) RequestHolePunch(ctx context.Context, req *connect.Request[nodev1.RequestHolePunchRequest]) (*connect.Response[nodev1.RequestHolePunchResponse], error) {
	p := s.p
	c, err := meshCaller(ctx)
	if err != nil {
		return nil, err
	}
	if err := p.validate.Validate(req.Msg); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	peerID := req.Msg.GetPeerNodeId()
	if !p.isPeer(c.NodeID, peerID) {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("node %s is not in your network map", peerID))
	}
	// Delivered: queued on a stream of the peer on this replica or, when it has none here, handed to
	// the other replicas that the stream registry shows holding a live stream of it (they queue it
	// on their next store wake-up, milliseconds later; ADR 009).
	delivered := p.postHolePunch(c.NodeID, c.WGKey[:], peerID)
	if !delivered {
		delivered = p.streamReg.forwardHolePunch(ctx, c.NodeID, c.WGKey[:], peerID)
	}
	return connect.NewResponse(&nodev1.RequestHolePunchResponse{Delivered: delivered}), nil
}

// isPeer reports whether peerID is in nodeID's view.
func (p *Plane) isPeer(nodeID, peerID string) bool {
	for _, ms := range p.streamsOf(nodeID) {
		ms.mu.Lock()
		_, ok := ms.mirror.Peer(peerID)
		ms.mu.Unlock()
		if ok {
			return true
		}
	}
	nwID, _, ok := p.loader.Network(nodeID)
	if !ok {
		return false
	}
	snap, err := p.engine.Snapshot(nwID, nodeID)
	if err != nil {
		return false
	}
	for _, pe := range snap.View.Peers {
		if pe.NodeID == peerID {
			return true
		}
	}
	return false
}

// RenewCertificate implements nodev1connect.ControlServiceHandler.
func (s controlService) RenewCertificate(ctx context.Context, req *connect.Request[nodev1.RenewCertificateRequest]) (*connect.Response[nodev1.RenewCertificateResponse], error) {
	p := s.p
	c, ok := CallerFrom(ctx)
	if !ok {
		return nil, unauthenticated("not authenticated")
	}
	if err := p.validate.Validate(req.Msg); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	csr, err := x509.ParseCertificateRequest(req.Msg.GetCsrDer())
	if err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("malformed certificate request: %w", err))
	}
	ttl := p.deps.CertTTL
	if t := p.loader.TenantSettings(c.ID.TenantID).NodeCertificateTTL; t > 0 {
		ttl = t
	}
	var wg []byte
	if c.WGKey != ([32]byte{}) {
		wg = c.WGKey[:]
	}
	var dns []string
	if c.ID.Kind == identity.KindRelay {
		if leafDNS := p.relayDNS(ctx, c.ID.ResourceID); len(leafDNS) > 0 {
			dns = leafDNS
		}
	}
	chain, err := p.auth.Sign(ctx, pki.SignRequest{CSR: csr, ID: c.ID, WGKey: wg, DNSNames: dns, TTL: ttl})
	if err != nil {
		return nil, toConnect(fmt.Errorf("renew certificate: %w", err))
	}
	p.reg.renewed(c.ID.String(), chain.Leaf.NotAfter)
	if c.NodeID != "" {
		p.status.certificate(c, chain.Leaf.SerialNumber.String(), chain.Leaf.NotAfter)
	}
	if c.ID.Kind == identity.KindRelay {
		err := p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
			r, err := tx.GetRelay(ctx, c.ID.ResourceID)
			if err != nil {
				return err
			}
			r.CertExpireTime = chain.Leaf.NotAfter
			return tx.UpdateRelay(ctx, r)
		})
		if err != nil {
			p.log.WarnContext(ctx, "record relay certificate", "relay", c.ID.ResourceID, "err", err)
		}
	}
	return connect.NewResponse(&nodev1.RenewCertificateResponse{
		CertificateChainDer: chain.DER(), CertificateExpireTime: timestamppb.New(chain.Leaf.NotAfter),
	}), nil
}

func (p *Plane) relayDNS(ctx context.Context, id string) []string {
	r, err := p.relayOf(ctx, id)
	if err != nil {
		return nil
	}
	var out []string
	for _, a := range r.Addresses {
		if ap, err := netip.ParseAddrPort(a); err == nil {
			out = append(out, ap.Addr().String())
			continue
		}
		if h, _, err := net.SplitHostPort(a); err == nil {
			out = append(out, h)
		}
	}
	return out
}
