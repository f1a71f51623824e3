// Package testctl is a stand-in for the controller's node port and a real relay, for the agent's
// end-to-end tests and its data-plane benchmark: a real gRPC server on real mTLS that enrolls nodes,
// computes each node's view (every other node, with a packet filter allowing the pairs not denied),
// streams snapshots and deltas, relays hole punches and checks acknowledged hashes.
package testctl

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/agent/internal/testpki"
	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayserver "github.com/cloudvlan/cloudvlan/relay/server"
	"github.com/cloudvlan/cloudvlan/relay/stun"
)

// Controller is a real gRPC server on real mTLS playing the controller's node port: it enrolls
// nodes, computes each node's view (every other node, with a packet filter allowing the pairs not
// denied), streams snapshots and deltas, relays hole punches and records acknowledgements.
type Controller struct {
	nodev1.UnimplementedControlServiceServer
	nodev1.UnimplementedEnrollmentServiceServer
	ca   *testpki.CA
	addr string
	srv  *grpc.Server
	log  func(format string, args ...any)

	mu        sync.Mutex
	nodes     map[string]*node
	order     []string
	deny      map[[2]string]bool // [src, dst] node ids whose traffic dst refuses
	relayMap  *nodev1.RelayMap
	keepalive time.Duration
	acked     map[string]uint64 // node -> highest version acknowledged with the right hash
}

type node struct {
	id, name  string
	key       [32]byte
	v4, v6    netip.Addr
	endpoints []string
	out       chan *nodev1.WatchNetworkMapResponse
	sent      *nodev1.NetworkMap
	hashes    map[uint64]string
}

// Domain is the mesh domain of the test cvlan; Token is the join token the controller accepts.
const (
	Domain = "c1.mesh.test"
	Token  = "cvj_test_token_0123456789"
)

// NewController starts a controller on addr (host:port, port 0 picks one). logf receives diagnostics
// (t.Logf fits); nil discards them.
func NewController(ca *testpki.CA, addr string, logf func(format string, args ...any)) (*Controller, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return NewControllerOn(ca, ln, logf)
}

// NewControllerOn serves on ln (for example a socket created inside a network namespace).
func NewControllerOn(ca *testpki.CA, ln net.Listener, logf func(format string, args ...any)) (*Controller, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	c := &Controller{ca: ca, log: logf, nodes: map[string]*node{}, deny: map[[2]string]bool{}, acked: map[string]uint64{}}
	var extra []net.IP
	if ta, ok := ln.Addr().(*net.TCPAddr); ok && !ta.IP.IsUnspecified() {
		extra = append(extra, ta.IP)
	}
	sc, err := c.ca.ServerCert(extra...)
	if err != nil {
		ln.Close()
		return nil, err
	}
	c.addr = ln.Addr().String()
	c.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: c.ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven})))
	nodev1.RegisterControlServiceServer(c.srv, c)
	nodev1.RegisterEnrollmentServiceServer(c.srv, c)
	go c.srv.Serve(ln)
	return c, nil
}

// SetKeepalive sets the persistent keepalive given to every peer (0 disables it).
func (c *Controller) SetKeepalive(d time.Duration) {
	c.mu.Lock()
	c.keepalive = d
	c.mu.Unlock()
	c.pushAll()
}

// Addr returns the node port address.
func (c *Controller) Addr() string { return c.addr }

// SetRelayMap sets the relay map sent to nodes.
func (c *Controller) SetRelayMap(rm *nodev1.RelayMap) {
	c.mu.Lock()
	c.relayMap = rm
	c.mu.Unlock()
	c.pushAll()
}

// Stop takes the controller away (every stream and connection dies).
func (c *Controller) Stop() {
	c.srv.Stop()
	c.mu.Lock()
	for _, n := range c.nodes {
		n.out = nil
	}
	c.mu.Unlock()
}

func (c *Controller) Enroll(_ context.Context, r *nodev1.EnrollRequest) (*nodev1.EnrollResponse, error) {
	if r.GetJoinToken() != "cvj_test_token_0123456789" {
		return nil, status.Error(codes.Unauthenticated, "unknown token")
	}
	c.mu.Lock()
	i := len(c.order) + 1
	n := &node{id: fmt.Sprintf("n%d", i), name: r.GetName(), key: [32]byte(r.GetWireguardPublicKey()),
		v4: netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}), v6: netip.MustParseAddr(fmt.Sprintf("fd7a:115c:a1e0::%d", i)), hashes: map[uint64]string{}}
	c.nodes[n.id] = n
	c.order = append(c.order, n.id)
	c.mu.Unlock()
	chain, err := c.ca.IssueCSR(r.GetCsrDer(), testpki.Leaf{ID: identity.ID{TrustDomain: identity.DefaultTrustDomain, TenantID: "t1", Kind: identity.KindNode, ResourceID: n.id}, WGKey: n.key})
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	return &nodev1.EnrollResponse{
		Identity:            &nodev1.NodeIdentity{NodeId: n.id, TenantId: "t1", CvlanId: "c1", Name: n.name, Ipv4Address: n.v4.String() + "/10", Ipv6Address: n.v6.String() + "/64", Kind: nodev1.IdentityKind_IDENTITY_KIND_NODE},
		CertificateChainDer: chain, RootCaDer: c.ca.Root.Raw, CertificateExpireTime: timestamppb.New(time.Now().Add(time.Hour)),
		ControlEndpoints: []string{c.addr},
	}, nil
}

func (c *Controller) caller(ctx context.Context) (*node, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, status.Error(codes.Unauthenticated, "no peer")
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.VerifiedChains) == 0 {
		return nil, status.Error(codes.Unauthenticated, "client certificate required")
	}
	id, _, err := identity.FromCertificate(ti.State.PeerCertificates[0])
	if err != nil {
		return nil, status.Error(codes.Unauthenticated, err.Error())
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[id.ResourceID]
	if n == nil {
		return nil, status.Error(codes.PermissionDenied, "unknown node")
	}
	return n, nil
}

// mapFor computes n's view. Callers hold c.mu.
func (c *Controller) mapFor(n *node) *nodev1.NetworkMap {
	m := &nodev1.NetworkMap{
		Self:         &nodev1.NodeSelf{NodeId: n.id, TenantId: "t1", CvlanId: "c1", Name: n.name, Fqdn: n.name + "." + Domain, Addresses: []string{n.v4.String() + "/10", n.v6.String() + "/64"}},
		PacketFilter: &nodev1.PacketFilter{},
		Dns:          &nodev1.DnsConfig{Domain: Domain, ExtraRecords: []*nodev1.DnsRecord{{Name: "db." + Domain, Addresses: []string{"100.64.9.9"}}}},
		RelayMap:     c.relayMap,
	}
	for _, id := range c.order {
		p := c.nodes[id]
		if p == n {
			continue
		}
		m.Peers = append(m.Peers, &nodev1.Peer{
			NodeId: p.id, WireguardPublicKey: p.key[:], Name: p.name, Fqdn: p.name + "." + Domain,
			Addresses:  []string{p.v4.String() + "/32", p.v6.String() + "/128"},
			AllowedIps: []string{p.v4.String() + "/32", p.v6.String() + "/128"},
			Endpoints:  p.endpoints, HomeRelayId: "r1", Online: true,
			PersistentKeepalive: durationpb.New(c.keepalive),
		})
		if !c.deny[[2]string{p.id, n.id}] {
			m.PacketFilter.Rules = append(m.PacketFilter.Rules, &nodev1.FilterRule{
				Action: nodev1.FilterAction_FILTER_ACTION_ALLOW, SourcePrefixes: []string{p.v4.String() + "/32", p.v6.String() + "/128"},
				DestinationPrefixes: []string{n.v4.String() + "/32", n.v6.String() + "/128"}, Protocol: nodev1.FilterProtocol_FILTER_PROTOCOL_ANY,
			})
		}
	}
	sort.Slice(m.Peers, func(i, j int) bool { return m.Peers[i].NodeId < m.Peers[j].NodeId })
	return m
}

// pushLocked sends n the difference between what it has and its current view, as a delta.
func (c *Controller) pushLocked(n *node) {
	if n.out == nil {
		return
	}
	m := c.mapFor(n)
	if n.sent == nil {
		m.Version = 1
		n.hashes[1] = netmapstate.Hash(m)
		n.sent = m
		n.out <- &nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Snapshot{Snapshot: m}}
		return
	}
	d := &nodev1.NetworkMapDelta{BaseVersion: n.sent.Version, Version: n.sent.Version + 1}
	old := map[string]*nodev1.Peer{}
	for _, p := range n.sent.Peers {
		old[p.NodeId] = p
	}
	for _, p := range m.Peers {
		if o, ok := old[p.NodeId]; !ok || !proto.Equal(o, p) {
			d.PeersUpserted = append(d.PeersUpserted, p)
		}
		delete(old, p.NodeId)
	}
	for id := range old {
		d.PeersRemoved = append(d.PeersRemoved, id)
	}
	if !proto.Equal(m.PacketFilter, n.sent.PacketFilter) {
		d.PacketFilter = m.PacketFilter
	}
	if !proto.Equal(m.RelayMap, n.sent.RelayMap) {
		d.RelayMap = m.RelayMap
	}
	if len(d.PeersUpserted) == 0 && len(d.PeersRemoved) == 0 && d.PacketFilter == nil && d.RelayMap == nil {
		return
	}
	m.Version = d.Version
	n.hashes[m.Version] = netmapstate.Hash(m)
	n.sent = m
	n.out <- &nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Delta{Delta: d}}
}

func (c *Controller) pushAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range c.order {
		c.pushLocked(c.nodes[id])
	}
}

// SetDeny changes the policy: dst refuses traffic from src (or allows it again).
func (c *Controller) SetDeny(src, dst string, deny bool) {
	c.mu.Lock()
	c.deny[[2]string{src, dst}] = deny
	c.mu.Unlock()
	c.pushAll()
}

func (c *Controller) WatchNetworkMap(req *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error {
	n, err := c.caller(s.Context())
	if err != nil {
		return err
	}
	out := make(chan *nodev1.WatchNetworkMapResponse, 64)
	c.mu.Lock()
	n.out = out
	if n.sent == nil || req.GetKnownVersion() != n.sent.Version {
		n.sent = nil // the node holds another version: start over with a snapshot
	}
	c.pushLocked(n)
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if n.out == out {
			n.out = nil
		}
		c.mu.Unlock()
	}()
	for {
		select {
		case <-s.Context().Done():
			return s.Context().Err()
		case m := <-out:
			if err := s.Send(m); err != nil {
				return err
			}
		}
	}
}

func (c *Controller) AckNetworkMap(ctx context.Context, r *nodev1.AckNetworkMapRequest) (*nodev1.AckNetworkMapResponse, error) {
	n, err := c.caller(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	ok := r.GetError() == "" && n.hashes[r.GetVersion()] == r.GetStateHash()
	if ok && r.GetVersion() > c.acked[n.id] {
		c.acked[n.id] = r.GetVersion()
	}
	if !ok {
		c.log("node %s acked version %d with hash %s error %q: not in sync", n.id, r.GetVersion(), r.GetStateHash(), r.GetError())
	}
	return &nodev1.AckNetworkMapResponse{InSync: ok}, nil
}

func (c *Controller) ReportStatus(ctx context.Context, r *nodev1.ReportStatusRequest) (*nodev1.ReportStatusResponse, error) {
	n, err := c.caller(ctx)
	if err != nil {
		return nil, err
	}
	var eps []string
	for _, e := range r.GetEndpoints() {
		eps = append(eps, e.GetAddress())
	}
	c.mu.Lock()
	changed := fmt.Sprint(eps) != fmt.Sprint(n.endpoints)
	n.endpoints = eps
	c.mu.Unlock()
	if changed {
		c.pushAll()
	}
	return &nodev1.ReportStatusResponse{ReportInterval: durationpb.New(2 * time.Second)}, nil
}

func (c *Controller) RequestHolePunch(ctx context.Context, r *nodev1.RequestHolePunchRequest) (*nodev1.RequestHolePunchResponse, error) {
	n, err := c.caller(ctx)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.nodes[r.GetPeerNodeId()]
	if p == nil || p.out == nil {
		return &nodev1.RequestHolePunchResponse{}, nil
	}
	select {
	case p.out <- &nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_HolePunch{HolePunch: &nodev1.HolePunch{PeerNodeId: n.id, WireguardPublicKey: n.key[:], Endpoints: n.endpoints}}}:
		return &nodev1.RequestHolePunchResponse{Delivered: true}, nil
	default:
		return &nodev1.RequestHolePunchResponse{}, nil
	}
}

// StartRelay runs a real cvlan-relay server on loopback and returns its relay map and a stop function.
func StartRelay(ca *testpki.CA, log *slog.Logger) (*nodev1.RelayMap, func(), error) {
	return StartRelayAt(ca, log, "127.0.0.1:0")
}

// StartRelayAt runs the relay on addr (an IP address and port).
func StartRelayAt(ca *testpki.CA, log *slog.Logger, addr string) (*nodev1.RelayMap, func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: ln.Addr().(*net.TCPAddr).IP})
	if err != nil {
		ln.Close()
		return nil, nil, err
	}
	return StartRelayOn(ca, log, ln, pc)
}

// StartRelayOn runs the relay on ln, and its STUN responder on pc unless pc is nil.
func StartRelayOn(ca *testpki.CA, log *slog.Logger, ln net.Listener, pc *net.UDPConn) (*nodev1.RelayMap, func(), error) {
	host := ln.Addr().(*net.TCPAddr).IP
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := ca.Issue(&key.PublicKey, testpki.Leaf{ID: identity.ID{TrustDomain: identity.DefaultTrustDomain, Kind: identity.KindRelay, ResourceID: "r1"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1), host}, DNSNames: []string{"localhost"}})
	if err != nil {
		return nil, nil, err
	}
	srv, err := relayserver.New(relayserver.Config{Certificate: relayserver.StaticCertificate{Cert: &tls.Certificate{Certificate: chain, PrivateKey: key}},
		Roots: ca.Pool(), RelayID: "r1", Region: "test", Logger: log, RateLimitBytes: -1})
	if err != nil {
		return nil, nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- srv.Run(ctx, ln) }()
	node := &nodev1.RelayNode{RelayId: "r1", Hostname: "localhost", Url: "https://" + ln.Addr().String() + "/relay"}
	waits := 1
	if pc != nil {
		waits++
		node.StunAddress = pc.LocalAddr().String()
		go func() { done <- stun.Serve(ctx, pc, log) }()
	}
	stop := func() {
		cancel()
		for range waits {
			<-done
		}
		if pc != nil {
			pc.Close()
		}
	}
	return &nodev1.RelayMap{Regions: []*nodev1.RelayRegion{{RegionId: "reg1", Code: "test", Relays: []*nodev1.RelayNode{node}}}}, stop, nil
}
