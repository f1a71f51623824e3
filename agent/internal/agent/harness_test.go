package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
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
)

// testController is a real gRPC server on real mTLS playing the controller's node port: it enrolls
// nodes, computes each node's view (every other node, with a packet filter allowing the pairs not
// denied), streams snapshots and deltas, relays hole punches and records acknowledgements.
type testController struct {
	nodev1.UnimplementedControlServiceServer
	nodev1.UnimplementedEnrollmentServiceServer
	t    *testing.T
	ca   *testpki.CA
	addr string
	srv  *grpc.Server

	mu       sync.Mutex
	nodes    map[string]*ctlNode
	order    []string
	deny     map[[2]string]bool // [src, dst] node ids whose traffic dst refuses
	relayMap *nodev1.RelayMap
	acked    map[string]uint64 // node -> highest version acknowledged with the right hash
}

type ctlNode struct {
	id, name  string
	key       [32]byte
	v4, v6    netip.Addr
	endpoints []string
	out       chan *nodev1.WatchNetworkMapResponse
	sent      *nodev1.NetworkMap
	hashes    map[uint64]string
}

const testDomain = "c1.mesh.test"

func newTestController(t *testing.T, ca *testpki.CA, addr string) *testController {
	c := &testController{t: t, ca: ca, nodes: map[string]*ctlNode{}, deny: map[[2]string]bool{}, acked: map[string]uint64{}}
	c.start(addr)
	return c
}

func (c *testController) start(addr string) {
	sc, err := c.ca.ServerCert()
	if err != nil {
		c.t.Fatal(err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		c.t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	c.srv = grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{sc}, ClientCAs: c.ca.Pool(), ClientAuth: tls.VerifyClientCertIfGiven})))
	nodev1.RegisterControlServiceServer(c.srv, c)
	nodev1.RegisterEnrollmentServiceServer(c.srv, c)
	go c.srv.Serve(ln)
	c.t.Cleanup(c.srv.Stop)
}

// stop takes the controller away (every stream and connection dies).
func (c *testController) stop() {
	c.srv.Stop()
	c.mu.Lock()
	for _, n := range c.nodes {
		n.out = nil
	}
	c.mu.Unlock()
}

func (c *testController) Enroll(_ context.Context, r *nodev1.EnrollRequest) (*nodev1.EnrollResponse, error) {
	if r.GetJoinToken() != "cvj_test_token_0123456789" {
		return nil, status.Error(codes.Unauthenticated, "unknown token")
	}
	c.mu.Lock()
	i := len(c.order) + 1
	n := &ctlNode{id: fmt.Sprintf("n%d", i), name: r.GetName(), key: [32]byte(r.GetWireguardPublicKey()),
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

func (c *testController) caller(ctx context.Context) (*ctlNode, error) {
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
func (c *testController) mapFor(n *ctlNode) *nodev1.NetworkMap {
	m := &nodev1.NetworkMap{
		Self:         &nodev1.NodeSelf{NodeId: n.id, TenantId: "t1", CvlanId: "c1", Name: n.name, Fqdn: n.name + "." + testDomain, Addresses: []string{n.v4.String() + "/10", n.v6.String() + "/64"}},
		PacketFilter: &nodev1.PacketFilter{},
		Dns:          &nodev1.DnsConfig{Domain: testDomain, ExtraRecords: []*nodev1.DnsRecord{{Name: "db." + testDomain, Addresses: []string{"100.64.9.9"}}}},
		RelayMap:     c.relayMap,
	}
	for _, id := range c.order {
		p := c.nodes[id]
		if p == n {
			continue
		}
		m.Peers = append(m.Peers, &nodev1.Peer{
			NodeId: p.id, WireguardPublicKey: p.key[:], Name: p.name, Fqdn: p.name + "." + testDomain,
			Addresses:  []string{p.v4.String() + "/32", p.v6.String() + "/128"},
			AllowedIps: []string{p.v4.String() + "/32", p.v6.String() + "/128"},
			Endpoints:  p.endpoints, HomeRelayId: "r1", Online: true,
			PersistentKeepalive: durationpb.New(0),
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
func (c *testController) pushLocked(n *ctlNode) {
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

func (c *testController) pushAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, id := range c.order {
		c.pushLocked(c.nodes[id])
	}
}

// setDeny changes the policy: dst refuses traffic from src (or allows it again).
func (c *testController) setDeny(src, dst string, deny bool) {
	c.mu.Lock()
	c.deny[[2]string{src, dst}] = deny
	c.mu.Unlock()
	c.pushAll()
}

func (c *testController) WatchNetworkMap(req *nodev1.WatchNetworkMapRequest, s grpc.ServerStreamingServer[nodev1.WatchNetworkMapResponse]) error {
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

func (c *testController) AckNetworkMap(ctx context.Context, r *nodev1.AckNetworkMapRequest) (*nodev1.AckNetworkMapResponse, error) {
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
		c.t.Logf("node %s acked version %d with hash %s error %q: not in sync", n.id, r.GetVersion(), r.GetStateHash(), r.GetError())
	}
	return &nodev1.AckNetworkMapResponse{InSync: ok}, nil
}

func (c *testController) ReportStatus(ctx context.Context, r *nodev1.ReportStatusRequest) (*nodev1.ReportStatusResponse, error) {
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

func (c *testController) RequestHolePunch(ctx context.Context, r *nodev1.RequestHolePunchRequest) (*nodev1.RequestHolePunchResponse, error) {
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

// startRelay runs a real cvlan-relay server on loopback and returns its relay map.
func startRelay(t *testing.T, ca *testpki.CA) *nodev1.RelayMap {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	chain, err := ca.Issue(&key.PublicKey, testpki.Leaf{ID: identity.ID{TrustDomain: identity.DefaultTrustDomain, Kind: identity.KindRelay, ResourceID: "r1"},
		IPs: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := relayserver.New(relayserver.Config{Certificate: relayserver.StaticCertificate{Cert: &tls.Certificate{Certificate: chain, PrivateKey: key}},
		Roots: ca.Pool(), RelayID: "r1", Region: "test", Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ln) }()
	t.Cleanup(func() { cancel(); <-done })
	return &nodev1.RelayMap{Regions: []*nodev1.RelayRegion{{RegionId: "reg1", Code: "test", Relays: []*nodev1.RelayNode{{
		RelayId: "r1", Hostname: "localhost", Url: "https://" + ln.Addr().String() + "/relay"}}}}}
}

func quietLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("AGENT_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// mesh is a controller, a relay and agents in netstack mode on loopback.
type mesh struct {
	t      *testing.T
	ca     *testpki.CA
	ctl    *testController
	agents []*Agent
	dirs   []string
}

type blocker struct {
	mu      sync.Mutex
	blocked map[netip.AddrPort]bool
	all     bool
}

func (b *blocker) drop(a netip.AddrPort) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.all || b.blocked[a]
}

func (b *blocker) set(all bool) {
	b.mu.Lock()
	b.all = all
	b.mu.Unlock()
}

func newMesh(t *testing.T, withRelay bool) *mesh {
	ca, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{t: t, ca: ca}
	m.ctl = newTestController(t, ca, "127.0.0.1:0")
	if withRelay {
		m.ctl.relayMap = startRelay(t, ca)
	}
	return m
}

func (m *mesh) options(dir, name string, drop func(netip.AddrPort) bool) Options {
	return Options{StateDir: dir, Controller: m.ctl.addr, Token: "cvj_test_token_0123456789", ControllerCA: m.ca.Pool(), Name: name,
		Netstack: true, ListenIP: netip.MustParseAddr("127.0.0.1"), DropDirect: drop, Logger: quietLogger(),
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
}

func (m *mesh) add(name string, drop func(netip.AddrPort) bool) *Agent {
	dir := m.t.TempDir()
	a, err := Start(m.t.Context(), m.options(dir, name, drop))
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(a.Close)
	m.agents = append(m.agents, a)
	m.dirs = append(m.dirs, dir)
	return a
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func addr4(a *Agent) netip.Addr { return a.Engine.Addresses()[0].Addr() }
func addr6(a *Agent) netip.Addr { return a.Engine.Addresses()[1].Addr() }

// serveEcho runs a TCP echo server on a's overlay address.
func serveEcho(t *testing.T, a *Agent, ip netip.Addr, port uint16) {
	ln, err := a.Engine.Net().ListenTCPAddrPort(netip.AddrPortFrom(ip, port))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

// tcpEcho dials from a to ip:port, sends a message and reads it back within d.
func tcpEcho(from *Agent, to netip.AddrPort, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := from.Engine.Net().DialContextTCPAddrPort(ctx, to)
	if err != nil {
		return fmt.Errorf("dial %s: %w", to, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	msg := []byte(fmt.Sprintf("hello %s at %d", to, time.Now().UnixNano()))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// ping sends one ICMP echo from a to ip and waits for the reply within d.
func ping(from *Agent, to netip.Addr, d time.Duration) error {
	c, err := from.Engine.Net().DialPingAddr(netip.Addr{}, to)
	if err != nil {
		return fmt.Errorf("ping socket: %w", err)
	}
	defer c.Close()
	req := icmp.Echo{Seq: 1, Data: []byte("cloudvlan")}
	var typ icmp.Type = ipv4.ICMPTypeEcho
	proto := 1
	if to.Is6() {
		typ, proto = ipv6.ICMPTypeEchoRequest, 58
	}
	b, _ := (&icmp.Message{Type: typ, Body: &req}).Marshal(nil)
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("ping write: %w", err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("ping read: %w", err)
	}
	rep, err := icmp.ParseMessage(proto, buf[:n])
	if err != nil {
		return fmt.Errorf("ping parse: %w", err)
	}
	if e, ok := rep.Body.(*icmp.Echo); !ok || string(e.Data) != "cloudvlan" {
		return fmt.Errorf("ping: unexpected reply %v", rep)
	}
	return nil
}

// eventually retries f until it succeeds or d passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
