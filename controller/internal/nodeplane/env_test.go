package nodeplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/server"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/pgtest"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/sqlite"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// cluster is the package's throw-away PostgreSQL (replica tests); nil-safe: without PostgreSQL
// binaries those tests skip (and fail under CI=true).
var cluster *pgtest.Cluster

func TestMain(m *testing.M) {
	code := pgtest.Main(m, &cluster)
	if code == 0 {
		if err := goleak.Find(
			// glog (pulled in by a step-ca dependency) starts its flush daemon in init.
			goleak.IgnoreTopFunction("github.com/golang/glog.(*fileSink).flushDaemon"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goroutine leak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// env is one controller replica with its store, CA and node port on loopback.
type env struct {
	t      testing.TB
	st     store.Store
	ca     pki.Authority
	p      *Plane
	addr   string
	tenant *domain.Tenant
	cvlan  *domain.Cvlan
	root   *x509.CertPool
	cancel context.CancelFunc
	done   chan struct{}
	// stopServe closes the node port and waits for it.
	stopServe func()
}

type envOpt func(*Deps)

func newCA(t testing.TB) pki.Authority {
	ca, err := pki.NewEmbedded(context.Background(), t.TempDir(), pki.WithLogger(quiet()))
	if err != nil {
		t.Fatalf("CA: %v", err)
	}
	t.Cleanup(func() { _ = ca.Close() })
	return ca
}

func newSQLite(t testing.TB) store.Store {
	st, err := sqlite.Open(context.Background(), sqlite.Config{Path: t.TempDir() + "/cv.db", Logger: quiet()})
	if err != nil {
		t.Fatalf("store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

// seed creates a tenant with one cvlan and an allow-all policy.
func seed(t testing.TB, st store.Store, settings domain.TenantSettings) (*domain.Tenant, *domain.Cvlan) {
	ctx := context.Background()
	ten := &domain.Tenant{Name: "acme", Settings: settings}
	if err := st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx, ten) }); err != nil {
		t.Fatal(err)
	}
	cv := &domain.Cvlan{TenantID: ten.ID, Name: "office", DNSDomain: "mesh.test"}
	err := st.Tx(ctx, store.TenantScope(ten.ID), func(tx store.Tx) error {
		if err := tx.CreateCvlan(ctx, cv); err != nil {
			return err
		}
		return tx.CreatePolicy(ctx, &domain.Policy{TenantID: ten.ID, Name: "all", Enabled: true, Rules: []domain.PolicyRule{{
			Action: domain.ActionAllow, Sources: []domain.PolicyTarget{{Any: true}}, Destinations: []domain.PolicyTarget{{Any: true}}, Protocol: domain.ProtocolAny,
		}}})
	})
	if err != nil {
		t.Fatal(err)
	}
	return ten, cv
}

func newEnv(t testing.TB, opts ...envOpt) *env {
	st := newSQLite(t)
	ten, cv := seed(t, st, domain.TenantSettings{})
	return startEnv(t, st, newCA(t), ten, cv, opts...)
}

func startEnv(t testing.TB, st store.Store, ca pki.Authority, ten *domain.Tenant, cv *domain.Cvlan, opts ...envOpt) *env {
	ctx, cancel := context.WithCancel(context.Background())
	d := Deps{Store: st, Authority: ca, Log: quiet(), SweepInterval: 100 * time.Millisecond, Coalesce: 10 * time.Millisecond}
	for _, o := range opts {
		o(&d)
	}
	p, err := New(ctx, d)
	if err != nil {
		cancel()
		t.Fatalf("New: %v", err)
	}
	e := &env{t: t, st: st, ca: ca, p: p, tenant: ten, cvlan: cv, root: ca.Roots(), cancel: cancel, done: make(chan struct{})}
	go func() { defer close(e.done); _ = p.Run(ctx) }()
	// The node port is served as cvlan-controller serves it (server.Serve with its HTTP/2 server).
	r, err := server.Start(ctx, quiet(), []server.Listener{{Name: "node", Addr: "127.0.0.1:0", TLS: p.TLSConfig(), Handler: p.Handler(), HTTP2: server.NodeHTTP2()}})
	if err != nil {
		cancel()
		t.Fatalf("node port: %v", err)
	}
	e.addr = r.Addrs["node"].String()
	e.stopServe = func() { r.Stop(); _ = r.Wait() }
	t.Cleanup(e.stop)
	return e
}

func (e *env) stop() {
	select {
	case <-e.done:
		return
	default:
	}
	_ = e.p.Close()
	e.stopServe()
	e.cancel()
	<-e.done
}

// token creates a join token in the env's tenant and returns its secret.
func (e *env) token(t testing.TB, mut func(*domain.JoinToken)) string {
	t.Helper()
	secret, label, hash, err := auth.NewSecret(auth.JoinTokenPrefix)
	if err != nil {
		t.Fatal(err)
	}
	jt := &domain.JoinToken{TenantID: e.tenant.ID, Prefix: label, Hash: hash, Kind: domain.NodeKindNode, CvlanID: e.cvlan.ID, ExpireTime: time.Now().Add(time.Hour)}
	if mut != nil {
		mut(jt)
	}
	ctx := context.Background()
	if err := e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error { return tx.CreateJoinToken(ctx, jt) }); err != nil {
		t.Fatal(err)
	}
	return secret
}

// agent is a simulated node: keys generated locally, enrolled, a gRPC client over mTLS.
type agent struct {
	wg   [32]byte
	key  *ecdsa.PrivateKey
	id   *nodev1.NodeIdentity
	cert atomic.Pointer[tls.Certificate]
	cc   *grpc.ClientConn
	ctl  nodev1.ControlServiceClient
}

func csrDER(t testing.TB, key *ecdsa.PrivateKey) []byte {
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// dial returns a gRPC client connection to the node port presenting cert (nil: none).
func (e *env) dial(t testing.TB, cert func() *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: e.root, ServerName: "localhost", MinVersion: tls.VersionTLS13}
	if cert != nil {
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert(), nil }
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

func (e *env) enrollReq(t testing.TB, secret string, key *ecdsa.PrivateKey, wg [32]byte, host string) *nodev1.EnrollRequest {
	return &nodev1.EnrollRequest{JoinToken: secret, WireguardPublicKey: wg[:], CsrDer: csrDER(t, key), Hostname: host, Os: "linux/amd64", AgentVersion: "test"}
}

func randWG(t testing.TB) [32]byte {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		t.Fatal(err)
	}
	return k
}

// enroll enrolls a new agent with the token and connects its control client.
func (e *env) enroll(t testing.TB, secret, host string) *agent {
	t.Helper()
	a := &agent{wg: randWG(t), key: newKey(t)}
	cc := e.dial(t, nil)
	resp, err := nodev1.NewEnrollmentServiceClient(cc).Enroll(context.Background(), e.enrollReq(t, secret, a.key, a.wg, host))
	if err != nil {
		t.Fatalf("enroll %s: %v", host, err)
	}
	a.id = resp.GetIdentity()
	a.setChain(resp.GetCertificateChainDer())
	a.cc = e.dial(t, func() *tls.Certificate { return a.cert.Load() })
	a.ctl = nodev1.NewControlServiceClient(a.cc)
	return a
}

func (a *agent) setChain(chain [][]byte) {
	leaf, _ := x509.ParseCertificate(chain[0])
	a.cert.Store(&tls.Certificate{Certificate: chain, PrivateKey: a.key, Leaf: leaf})
}

// watcher reads one WatchNetworkMap stream into a netmapstate-like record.
type recv struct {
	msg *nodev1.WatchNetworkMapResponse
	err error
	at  time.Time
}

func (a *agent) watch(t testing.TB, ctx context.Context, known uint64, session string) (<-chan recv, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(ctx)
	s, err := a.ctl.WatchNetworkMap(ctx, &nodev1.WatchNetworkMapRequest{KnownVersion: known, SessionId: session})
	if err != nil {
		cancel()
		t.Fatalf("watch: %v", err)
	}
	ch := make(chan recv, 1024)
	go func() {
		defer close(ch)
		for {
			m, err := s.Recv()
			select {
			case ch <- recv{m, err, time.Now()}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	return ch, cancel
}

// next returns the next non-keepalive message within d.
func next(t testing.TB, ch <-chan recv, d time.Duration) recv {
	t.Helper()
	deadline := time.After(d)
	for {
		select {
		case r, ok := <-ch:
			if !ok {
				return recv{err: errors.New("stream channel closed")}
			}
			if r.err == nil && r.msg.GetKeepAlive() != nil {
				continue
			}
			return r
		case <-deadline:
			t.Fatalf("no message within %s", d)
			return recv{}
		}
	}
}

// setNode changes a node in the store (as the API would).
func (e *env) setNode(t testing.TB, id string, fn func(*domain.Node)) {
	t.Helper()
	ctx := context.Background()
	err := e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		n, err := tx.GetNode(ctx, id)
		if err != nil {
			return err
		}
		fn(n)
		return tx.UpdateNode(ctx, n)
	})
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) getNode(t testing.TB, id string) *domain.Node {
	t.Helper()
	ctx := context.Background()
	var n *domain.Node
	err := e.st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		var err error
		n, err = tx.GetNode(ctx, id)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var _ = netip.Addr{}
