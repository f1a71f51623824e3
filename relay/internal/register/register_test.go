package register

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/types/known/durationpb"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeCA signs CSRs with a one-level CA (enough for the client's checks).
type fakeCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newFakeCA(t *testing.T) *fakeCA {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &fakeCA{cert: c, key: k}
}

func (ca *fakeCA) sign(pub any, uri string, ttl time.Duration, server bool) []byte {
	u, _ := url.Parse(uri)
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, NotBefore: time.Now().Add(-time.Second), NotAfter: time.Now().Add(ttl),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	if u != nil {
		tmpl.URIs = []*url.URL{u}
	}
	if server {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	return der
}

// fakeController serves the calls the relay makes.
type fakeController struct {
	nodev1.UnimplementedEnrollmentServiceServer
	nodev1.UnimplementedControlServiceServer
	relayv1.UnimplementedRelayControlServiceServer
	ca  *fakeCA
	ttl time.Duration

	mu      sync.Mutex
	kind    []string
	reports []*relayv1.ReportRelayStatusRequest
	renewed int
}

func (f *fakeController) Enroll(ctx context.Context, req *nodev1.EnrollRequest) (*nodev1.EnrollResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.kind = md.Get(identityKindHeader)
	f.mu.Unlock()
	if req.GetJoinToken() != "cvj_goodtokengoodtoken" {
		return nil, errors.New("unknown join token")
	}
	if len(req.GetWireguardPublicKey()) != 32 {
		return nil, errors.New("want a 32-byte key")
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	return &nodev1.EnrollResponse{
		Identity:            &nodev1.NodeIdentity{Kind: nodev1.IdentityKind_IDENTITY_KIND_RELAY, ResourceId: "r1", SpiffeId: "spiffe://td/relay/r1"},
		CertificateChainDer: [][]byte{f.ca.sign(csr.PublicKey, "spiffe://td/relay/r1", f.ttl, false)},
		RootCaDer:           f.ca.cert.Raw, ControlEndpoints: []string{"127.0.0.1:1"},
	}, nil
}

func callerURI(ctx context.Context) string {
	p, _ := peer.FromContext(ctx)
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 || len(ti.State.PeerCertificates[0].URIs) == 0 {
		return ""
	}
	return ti.State.PeerCertificates[0].URIs[0].String()
}

func (f *fakeController) RenewCertificate(ctx context.Context, req *nodev1.RenewCertificateRequest) (*nodev1.RenewCertificateResponse, error) {
	uri := callerURI(ctx)
	if uri == "" {
		return nil, errors.New("no client certificate")
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.renewed++
	f.mu.Unlock()
	return &nodev1.RenewCertificateResponse{CertificateChainDer: [][]byte{f.ca.sign(csr.PublicKey, uri, f.ttl, false)}}, nil
}

func (f *fakeController) WatchRelayConfig(req *relayv1.WatchRelayConfigRequest, s grpc.ServerStreamingServer[relayv1.WatchRelayConfigResponse]) error {
	if callerURI(s.Context()) == "" {
		return errors.New("no client certificate")
	}
	if err := s.Send(&relayv1.WatchRelayConfigResponse{RegionId: "eu", MeshPeers: []*relayv1.MeshPeer{{RelayId: "r2", Url: "https://r2/relay"}}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (f *fakeController) ReportRelayStatus(ctx context.Context, req *relayv1.ReportRelayStatusRequest) (*relayv1.ReportRelayStatusResponse, error) {
	if callerURI(ctx) == "" {
		return nil, errors.New("no client certificate")
	}
	f.mu.Lock()
	f.reports = append(f.reports, req)
	f.mu.Unlock()
	return &relayv1.ReportRelayStatusResponse{ReportInterval: durationpb.New(7 * time.Second)}, nil
}

func startFake(t *testing.T, ttl time.Duration) (*fakeController, string) {
	t.Helper()
	ca := newFakeCA(t)
	f := &fakeController{ca: ca, ttl: ttl}
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvCert := tls.Certificate{Certificate: [][]byte{ca.sign(&k.PublicKey, "", time.Hour, true)}, PrivateKey: k}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srvCert},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: pool, MinVersion: tls.VersionTLS13})))
	nodev1.RegisterEnrollmentServiceServer(gs, f)
	nodev1.RegisterControlServiceServer(gs, f)
	relayv1.RegisterRelayControlServiceServer(gs, f)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	return f, ln.Addr().String()
}

func TestEnrollSaveRenewWatchReport(t *testing.T) {
	f, addr := startFake(t, time.Hour)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.cert)

	// Without the controller's CA the first call must fail: no token to an unverified server.
	if _, err := Enroll(ctx, EnrollOptions{Target: addr, Token: "cvj_goodtokengoodtoken"}); err == nil {
		t.Fatal("enrolled with an unverified controller")
	}
	if _, err := Enroll(ctx, EnrollOptions{Target: addr, Token: "cvj_badtokenbadtokenbad", RootCAs: roots}); err == nil {
		t.Fatal("enrolled with a bad token")
	}
	st, err := Enroll(ctx, EnrollOptions{Target: addr, Token: "cvj_goodtokengoodtoken", RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	if f.kind == nil || f.kind[0] != "relay" || st.RelayID != "r1" {
		t.Fatalf("kind header %v relay id %q", f.kind, st.RelayID)
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := st.Save(dir); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", fi.Mode())
	}
	for _, n := range []string{keyFile, certFile, rootFile, identityFile} {
		if fi, err := os.Stat(filepath.Join(dir, n)); err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", n, fi, err)
		}
	}
	loaded, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Key.Equal(st.Key) || loaded.RelayID != "r1" || len(loaded.ControlEndpoints) != 1 {
		t.Fatalf("loaded %+v", loaded)
	}
	if _, err := Load(t.TempDir()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("empty dir: %v", err)
	}

	creds, err := NewCredentials(loaded)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := Dial(addr, loaded, creds, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	before, _ := creds.Certificate()
	if err := cl.Renew(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := creds.Certificate()
	if after.Leaf.SerialNumber.Cmp(before.Leaf.SerialNumber) == 0 || after.PrivateKey == before.PrivateKey {
		t.Fatal("renewal did not change certificate and key")
	}
	reloaded, err := Load(dir)
	if err != nil || !reloaded.Key.Equal(after.PrivateKey) {
		t.Fatalf("renewed state not saved: %v", err)
	}

	got := make(chan *relayv1.WatchRelayConfigResponse, 1)
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl.WatchConfig(wctx, "v", func(m *relayv1.WatchRelayConfigResponse) { got <- m })
	}()
	select {
	case m := <-got:
		if m.GetRegionId() != "eu" || len(m.GetMeshPeers()) != 1 {
			t.Fatalf("config %v", m)
		}
	case <-ctx.Done():
		t.Fatal("no config")
	}
	wcancel()
	<-done

	iv, err := cl.Report(ctx, Status{URLs: []string{"https://127.0.0.1:443/relay"}, Clients: 3, Packets: 10, Drops: map[string]uint64{"queue_full": 2}, Started: time.Now()})
	if err != nil || iv != 7*time.Second {
		t.Fatalf("report: %v %v", iv, err)
	}
	f.mu.Lock()
	r := f.reports[0]
	f.mu.Unlock()
	if r.GetCounters().GetConnectedClients() != 3 || r.GetCounters().GetDrops()["queue_full"] != 2 {
		t.Fatalf("report %v", r)
	}
}

func TestRunRenewalRenewsAtTwoThirds(t *testing.T) {
	f, addr := startFake(t, 3*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	roots := x509.NewCertPool()
	roots.AddCert(f.ca.cert)
	st, err := Enroll(ctx, EnrollOptions{Target: addr, Token: "cvj_goodtokengoodtoken", RootCAs: roots})
	if err != nil {
		t.Fatal(err)
	}
	creds, _ := NewCredentials(st)
	cl, err := Dial(addr, st, creds, t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	rctx, rcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); cl.RunRenewal(rctx) }()
	// Certificates live 4 s (back-dated 1 s): renewals are due about every 2.7 s.
	deadline := time.Now().Add(15 * time.Second)
	for {
		f.mu.Lock()
		n := f.renewed
		f.mu.Unlock()
		if n >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d renewals", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	rcancel()
	<-done
	f.mu.Lock()
	n := f.renewed
	f.mu.Unlock()
	if n > 4 {
		t.Fatalf("%d renewals: renewing long before two thirds of the lifetime", n)
	}
	if c, _ := creds.Certificate(); time.Until(c.Leaf.NotAfter) <= 0 {
		t.Fatal("serving an expired certificate")
	}
}
