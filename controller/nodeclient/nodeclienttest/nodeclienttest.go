// Package nodeclienttest is a stand-in controller for nodeclient's users' unit tests: a one-level CA
// and a gRPC server with real TLS that serves Enroll and RenewCertificate the way the controller does
// for one identity. The real controller is what end-to-end tests use.
package nodeclienttest

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
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// Token is the one join token the Controller accepts.
const Token = "cvj_goodtokengoodtoken"

// Controller serves EnrollmentService and ControlService.RenewCertificate.
type Controller struct {
	nodev1.UnimplementedEnrollmentServiceServer
	nodev1.UnimplementedControlServiceServer

	// Addr is the listening host:port; Roots verify its certificate.
	Addr  string
	Roots *x509.CertPool

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	ttl   time.Duration
	id    *nodev1.NodeIdentity

	mu      sync.Mutex
	kind    []string
	renewed int
}

// Start serves a controller that enrolls id with certificates living ttl (back-dated by one second).
// register adds the kind's own services (nil for none).
func Start(t testing.TB, ttl time.Duration, id *nodev1.NodeIdentity, register func(*grpc.Server)) *Controller {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"}, NotBefore: time.Now().Add(-time.Hour),
		NotAfter: time.Now().Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	c := &Controller{ca: ca, caKey: k, ttl: ttl, id: id, Roots: x509.NewCertPool()}
	c.Roots.AddCert(ca)
	sk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	srvCert := tls.Certificate{Certificate: [][]byte{c.sign(&sk.PublicKey, "", time.Hour, true)}, PrivateKey: sk}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{srvCert},
		ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: c.Roots, MinVersion: tls.VersionTLS13})))
	nodev1.RegisterEnrollmentServiceServer(gs, c)
	nodev1.RegisterControlServiceServer(gs, c)
	if register != nil {
		register(gs)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Addr = ln.Addr().String()
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	return c
}

// Root is the CA certificate.
func (c *Controller) Root() *x509.Certificate { return c.ca }

// KindHeader is the Cloudvlan-Identity-Kind header of the last Enroll.
func (c *Controller) KindHeader() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.kind
}

// Renewed counts the renewals served.
func (c *Controller) Renewed() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.renewed
}

func (c *Controller) sign(pub any, uri string, ttl time.Duration, server bool) []byte {
	sn, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{SerialNumber: sn, NotBefore: time.Now().Add(-time.Second), NotAfter: time.Now().Add(ttl),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	if u, err := url.Parse(uri); err == nil && uri != "" {
		tmpl.URIs = []*url.URL{u}
	}
	if server {
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, _ := x509.CreateCertificate(rand.Reader, tmpl, c.ca, pub, c.caKey)
	return der
}

// Enroll implements EnrollmentService.
func (c *Controller) Enroll(ctx context.Context, req *nodev1.EnrollRequest) (*nodev1.EnrollResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	c.mu.Lock()
	c.kind = md.Get("cloudvlan-identity-kind")
	c.mu.Unlock()
	if req.GetJoinToken() != Token {
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
		Identity:            c.id,
		CertificateChainDer: [][]byte{c.sign(csr.PublicKey, c.id.GetSpiffeId(), c.ttl, false)},
		RootCaDer:           c.ca.Raw, ControlEndpoints: []string{c.Addr},
	}, nil
}

// CallerURI is the URI SAN of the caller's client certificate, "" without one.
func CallerURI(ctx context.Context) string {
	p, _ := peer.FromContext(ctx)
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 || len(ti.State.PeerCertificates[0].URIs) == 0 {
		return ""
	}
	return ti.State.PeerCertificates[0].URIs[0].String()
}

// RenewCertificate implements ControlService.
func (c *Controller) RenewCertificate(ctx context.Context, req *nodev1.RenewCertificateRequest) (*nodev1.RenewCertificateResponse, error) {
	uri := CallerURI(ctx)
	if uri == "" {
		return nil, errors.New("no client certificate")
	}
	csr, err := x509.ParseCertificateRequest(req.GetCsrDer())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.renewed++
	c.mu.Unlock()
	return &nodev1.RenewCertificateResponse{CertificateChainDer: [][]byte{c.sign(csr.PublicKey, uri, c.ttl, false)}}, nil
}

// Client enrolls with Token as kind and returns a client with the resulting state (saved in a
// temporary directory on renewal), closed when the test ends.
func (c *Controller) Client(t testing.TB, kind nodev1.IdentityKind) *nodeclient.Client {
	t.Helper()
	st, err := nodeclient.Enroll(context.Background(), nodeclient.EnrollOptions{Target: c.Addr, Token: Token, Kind: kind, RootCAs: c.Roots})
	if err != nil {
		t.Fatal(err)
	}
	creds, err := nodeclient.NewCredentials(st)
	if err != nil {
		t.Fatal(err)
	}
	cl, err := nodeclient.Dial(c.Addr, st, creds, nodeclient.Store{Dir: t.TempDir(), Name: "test"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cl.Close() })
	return cl
}
