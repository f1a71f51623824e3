package controlclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/agent/internal/testpki"
	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeController is a real gRPC server behind real mTLS; each WatchNetworkMap call takes its script
// from the streams channel.
type fakeController struct {
	nodev1.UnimplementedControlServiceServer
	nodev1.UnimplementedEnrollmentServiceServer
	ca       *testpki.CA
	validity time.Duration

	streams chan func(req *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error
	acks    chan *nodev1.AckNetworkMapRequest
	reports chan *nodev1.ReportStatusRequest
	opened  chan streamInfo

	mu     sync.Mutex
	hashes map[uint64]string
	ln     *trackingListener
}

// trackingListener remembers accepted connections so a test can cut them all.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

func (l *trackingListener) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}

type streamInfo struct {
	knownVersion uint64
	at           time.Time
	serial       string
}

func (f *fakeController) nodeLeaf(pub [32]byte) testpki.Leaf {
	return testpki.Leaf{ID: identity.ID{TrustDomain: identity.DefaultTrustDomain, TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}, WGKey: pub, Validity: f.validity}
}

func (f *fakeController) Enroll(_ context.Context, r *nodev1.EnrollRequest) (*nodev1.EnrollResponse, error) {
	if r.GetJoinToken() != "cvj_0123456789abcdefghij" {
		return nil, status.Error(codes.Unauthenticated, "unknown token")
	}
	var pub [32]byte
	copy(pub[:], r.GetWireguardPublicKey())
	chain, err := f.ca.IssueCSR(r.GetCsrDer(), f.nodeLeaf(pub))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &nodev1.EnrollResponse{Identity: &nodev1.NodeIdentity{NodeId: "n1", TenantId: "t1"}, CertificateChainDer: chain, RootCaDer: f.ca.Root.Raw}, nil
}

func (f *fakeController) WatchNetworkMap(req *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error {
	p, _ := peer.FromContext(s.Context())
	ti := p.AuthInfo.(credentials.TLSInfo)
	f.opened <- streamInfo{knownVersion: req.GetKnownVersion(), at: time.Now(), serial: ti.State.PeerCertificates[0].SerialNumber.String()}
	select {
	case script := <-f.streams:
		return script(req, s)
	case <-s.Context().Done():
		return s.Context().Err()
	}
}

func (f *fakeController) AckNetworkMap(_ context.Context, r *nodev1.AckNetworkMapRequest) (*nodev1.AckNetworkMapResponse, error) {
	f.mu.Lock()
	want := f.hashes[r.GetVersion()]
	f.mu.Unlock()
	f.acks <- r
	return &nodev1.AckNetworkMapResponse{InSync: want == r.GetStateHash()}, nil
}

func (f *fakeController) ReportStatus(_ context.Context, r *nodev1.ReportStatusRequest) (*nodev1.ReportStatusResponse, error) {
	select {
	case f.reports <- r:
	default:
	}
	return &nodev1.ReportStatusResponse{ReportInterval: durationpb.New(time.Hour)}, nil
}

func (f *fakeController) RenewCertificate(ctx context.Context, r *nodev1.RenewCertificateRequest) (*nodev1.RenewCertificateResponse, error) {
	p, _ := peer.FromContext(ctx)
	leaf := p.AuthInfo.(credentials.TLSInfo).State.PeerCertificates[0]
	_, key, err := identity.FromCertificate(leaf)
	if err != nil {
		return nil, status.Error(codes.PermissionDenied, err.Error())
	}
	chain, err := f.ca.IssueCSR(r.GetCsrDer(), f.nodeLeaf(key))
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &nodev1.RenewCertificateResponse{CertificateChainDer: chain, CertificateExpireTime: timestamppb.New(time.Now().Add(f.validity))}, nil
}

func (f *fakeController) record(m *nodev1.NetworkMap) {
	f.mu.Lock()
	f.hashes[m.GetVersion()] = netmapstate.Hash(m)
	f.mu.Unlock()
}

func startController(t *testing.T, validity time.Duration) (*fakeController, string) {
	t.Helper()
	ca, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	sc, err := ca.ServerCert()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeController{ca: ca, validity: validity, hashes: map[uint64]string{},
		streams: make(chan func(*nodev1.WatchNetworkMapRequest, grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error, 4),
		acks:    make(chan *nodev1.AckNetworkMapRequest, 16), reports: make(chan *nodev1.ReportStatusRequest, 16), opened: make(chan streamInfo, 16)}
	// Client certificates are verified when presented; Enroll is the one RPC allowed without one.
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven})))
	nodev1.RegisterControlServiceServer(srv, f)
	nodev1.RegisterEnrollmentServiceServer(srv, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ln = &trackingListener{Listener: ln}
	go srv.Serve(f.ln)
	t.Cleanup(srv.Stop)
	return f, ln.Addr().String()
}

type recHandler struct {
	maps  chan *nodev1.NetworkMap
	holes chan *nodev1.HolePunch
}

func (h *recHandler) ApplyMap(_ context.Context, m *nodev1.NetworkMap) error {
	h.maps <- proto.Clone(m).(*nodev1.NetworkMap)
	return nil
}
func (h *recHandler) HolePunch(hp *nodev1.HolePunch) { h.holes <- hp }
func (h *recHandler) Status() *nodev1.ReportStatusRequest {
	return &nodev1.ReportStatusRequest{AgentVersion: "test", Endpoints: []*nodev1.Endpoint{{Address: "127.0.0.1:1", Type: nodev1.EndpointType_ENDPOINT_TYPE_LOCAL}}}
}

type memStore struct {
	mu    sync.Mutex
	maps  int
	certs int
}

func (s *memStore) SaveNetworkMap(*nodev1.NetworkMap) error {
	s.mu.Lock()
	s.maps++
	s.mu.Unlock()
	return nil
}
func (s *memStore) SaveTLS(*ecdsa.PrivateKey, [][]byte) error {
	s.mu.Lock()
	s.certs++
	s.mu.Unlock()
	return nil
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(15 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

func TestEnrollRejectsUnknownToken(t *testing.T) {
	f, addr := startController(t, time.Hour)
	_, err := Enroll(t.Context(), EnrollOptions{Target: addr, Token: "cvj_wrongwrongwrongwrong", RootCAs: f.ca.Pool()})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("err = %v, want Unauthenticated", err)
	}
}

func TestStreamAckResumeRetryAfterAndRenewal(t *testing.T) {
	// A 6 s certificate: renewal is due 4 s after issue, inside the test's lifetime.
	f, addr := startController(t, 6*time.Second)
	e, err := Enroll(t.Context(), EnrollOptions{Target: addr, Token: "cvj_0123456789abcdefghij", RootCAs: f.ca.Pool(), Hostname: "h"})
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := WireGuardPublicKey(e.WireGuardKey)
	leaf, _ := x509.ParseCertificate(e.Chain[0])
	if _, k, err := identity.FromCertificate(leaf); err != nil || k != pub {
		t.Fatalf("certificate identity: key %x err %v, want key %x", k, err, pub)
	}

	h := &recHandler{maps: make(chan *nodev1.NetworkMap, 8), holes: make(chan *nodev1.HolePunch, 1)}
	store := &memStore{}
	c, err := New(Config{Target: addr, Enrollment: e, Handler: h, Store: store, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	defer func() { cancel(); <-done }()

	snap := &nodev1.NetworkMap{Version: 1, Self: &nodev1.NodeSelf{NodeId: "n1"}, Peers: []*nodev1.Peer{{NodeId: "b"}, {NodeId: "a"}}}
	delta := &nodev1.NetworkMapDelta{Version: 2, BaseVersion: 1, PeersRemoved: []string{"a"}, PeersUpserted: []*nodev1.Peer{{NodeId: "c"}}}
	after := &nodev1.NetworkMap{Version: 2, Self: snap.Self, Peers: []*nodev1.Peer{{NodeId: "b"}, {NodeId: "c"}}}
	f.record(snap)
	f.record(after)
	renewedSeen := make(chan struct{})

	// Stream 1: snapshot, delta, a hole punch, then it waits for the renewal and proves the open stream
	// survives it by delivering one more delta, and ends with UNAVAILABLE.
	f.streams <- func(req *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error {
		s.Send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Snapshot{Snapshot: snap}})
		s.Send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Delta{Delta: delta}})
		s.Send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_HolePunch{HolePunch: &nodev1.HolePunch{PeerNodeId: "b", Endpoints: []string{"127.0.0.1:9"}}}})
		<-renewedSeen
		f.record(&nodev1.NetworkMap{Version: 3, Self: snap.Self, Peers: []*nodev1.Peer{{NodeId: "b"}}})
		s.Send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Delta{Delta: &nodev1.NetworkMapDelta{Version: 3, BaseVersion: 2, PeersRemoved: []string{"c"}}}})
		<-s.Context().Done()
		return s.Context().Err()
	}
	first := recv(t, f.opened, "first stream")
	if first.knownVersion != 0 {
		t.Fatalf("first stream known_version %d, want 0", first.knownVersion)
	}
	if m := recv(t, h.maps, "snapshot"); len(m.Peers) != 2 || m.Version != 1 {
		t.Fatalf("snapshot applied as %v", m)
	}
	if a := recv(t, f.acks, "ack 1"); a.Version != 1 || a.StateHash != netmapstate.Hash(snap) {
		t.Fatalf("ack 1 = %v, want hash %s", a, netmapstate.Hash(snap))
	}
	if m := recv(t, h.maps, "delta"); !proto.Equal(m, after) {
		t.Fatalf("delta applied as %v, want %v", m, after)
	}
	if a := recv(t, f.acks, "ack 2"); a.Version != 2 || a.StateHash != netmapstate.Hash(after) {
		t.Fatalf("ack 2 = %v", a)
	}
	if hp := recv(t, h.holes, "hole punch"); hp.PeerNodeId != "b" {
		t.Fatalf("hole punch %v", hp)
	}
	if r := recv(t, f.reports, "status report"); r.AgentVersion != "test" {
		t.Fatalf("report %v", r)
	}
	for !c.InSync() {
		time.Sleep(10 * time.Millisecond)
	}

	// Renewal happens at 2/3 of 6 s; wait for it.
	deadline := time.Now().Add(15 * time.Second)
	for c.Renewals() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("certificate was not renewed")
		}
		time.Sleep(50 * time.Millisecond)
	}
	newSerial := c.Certificate().Leaf.SerialNumber.String()
	if newSerial == first.serial {
		t.Fatal("renewal kept the serial")
	}
	close(renewedSeen)
	if m := recv(t, h.maps, "delta after renewal on the same stream"); m.Version != 3 {
		t.Fatalf("map after renewal %v", m)
	}
	recv(t, f.acks, "ack 3")
	// Cut every connection (a controller restart): the client must come back on a new TLS connection.
	f.ln.closeAll()

	// Stream 2 (after UNAVAILABLE): resumes from version 3 with the renewed certificate, then the
	// controller sheds load with a retry-after trailer.
	f.streams <- func(req *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error {
		s.SetTrailer(metadata.Pairs("retry-after-ms", "1200"))
		return status.Error(codes.ResourceExhausted, "overloaded")
	}
	second := recv(t, f.opened, "second stream")
	if second.knownVersion != 3 {
		t.Fatalf("resume known_version %d, want 3", second.knownVersion)
	}
	if second.serial != newSerial {
		t.Fatalf("new connection presented serial %s, want renewed %s", second.serial, newSerial)
	}
	f.streams <- func(req *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error {
		<-s.Context().Done()
		return nil
	}
	third := recv(t, f.opened, "third stream")
	if gap := third.at.Sub(second.at); gap < 1200*time.Millisecond {
		t.Fatalf("reconnected %v after RESOURCE_EXHAUSTED, want >= 1.2 s (retry-after-ms)", gap)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if store.maps != 3 || store.certs < 1 {
		t.Fatalf("stored %d maps and %d certificates, want 3 and >= 1", store.maps, store.certs)
	}
}
