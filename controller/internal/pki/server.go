package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// loopbackNames are always in the controller's server certificate so local
// clients, health checks and tests can connect without configuration.
var loopbackNames = []string{"localhost", "127.0.0.1", "::1"}

// ServerCert is the controller's own TLS certificate, signed by the same CA
// as the nodes' so that nodes verify the controller with the root they got
// at enrolment. It renews itself when two thirds of its life have passed.
type ServerCert struct {
	auth  Authority
	names []string
	ttl   time.Duration
	log   *slog.Logger

	mu      sync.Mutex
	cur     *tls.Certificate
	renewAt time.Time
}

// NewServerCert issues the first server certificate for localhost,
// 127.0.0.1, ::1 and names (DNS names or IP addresses). ttl zero means the
// authority's default.
func NewServerCert(ctx context.Context, auth Authority, names []string, ttl time.Duration, log *slog.Logger) (*ServerCert, error) {
	if log == nil {
		log = slog.Default()
	}
	all := append(slices.Clone(loopbackNames), names...)
	slices.Sort(all)
	s := &ServerCert{auth: auth, names: slices.Compact(all), ttl: ttl, log: log}
	if err := s.renew(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// renew must be called with mu held (or before s is shared).
func (s *ServerCert) renew(ctx context.Context) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("pki: server key: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return fmt.Errorf("pki: server CSR: %w", err)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return fmt.Errorf("pki: server CSR: %w", err)
	}
	chain, err := s.auth.SignServer(ctx, csr, s.names, s.ttl)
	if err != nil {
		return err
	}
	c := chain.TLSCertificate(key)
	life := chain.Leaf.NotAfter.Sub(time.Now())
	s.cur, s.renewAt = &c, time.Now().Add(life*2/3)
	return nil
}

// GetCertificate is a tls.Config.GetCertificate that renews the certificate
// when it is due. A failed renewal is logged and the current certificate is
// served until it expires, so a CA hiccup does not take the port down.
func (s *ServerCert) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if now.Before(s.renewAt) {
		return s.cur, nil
	}
	ctx := context.Background()
	if hello != nil {
		ctx = hello.Context()
	}
	if err := s.renew(ctx); err != nil {
		if now.Before(s.cur.Leaf.NotAfter) {
			s.log.WarnContext(ctx, "pki: server certificate renewal failed; serving the current one", "err", err, "not_after", s.cur.Leaf.NotAfter)
			return s.cur, nil
		}
		return nil, fmt.Errorf("pki: server certificate expired and renewal failed: %w", err)
	}
	s.log.InfoContext(ctx, "pki: server certificate renewed", "not_after", s.cur.Leaf.NotAfter)
	return s.cur, nil
}

// Current returns the certificate being served.
func (s *ServerCert) Current() *tls.Certificate {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

// NodePortTLSConfig returns the TLS configuration of the node port (:8444):
// TLS 1.3, HTTP/2, the controller's certificate from sc, and client
// certificates verified against auth's roots when presented.
//
// ClientAuth is VerifyClientCertIfGiven, not RequireAndVerifyClientCert,
// because Enroll is called before the node has a certificate; every other
// RPC must call Verifier.VerifyConnection (an interceptor does), which also
// refuses certificates that expired after the handshake.
//
// The client CAs are the roots and the CA's intermediates, which are named
// in the certificate request: a node whose issuer is among them sends its
// leaf alone (identity.ClientCertificate), so that each connection parses and
// keeps one certificate instead of two (the node port's memory, ADR 010).
func NodePortTLSConfig(auth Authority, sc *ServerCert) *tls.Config {
	cas := auth.Roots()
	for _, c := range auth.Intermediates() {
		cas.AddCert(c)
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: sc.GetCertificate,
		ClientAuth:     tls.VerifyClientCertIfGiven,
		ClientCAs:      cas,
		NextProtos:     []string{"h2"},
	}
}
