package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

// handshake runs one TLS handshake on loopback with the node port's config
// and returns the server's view of the client, or the handshake error.
func handshake(t *testing.T, srvCfg *tls.Config, roots *x509.CertPool, clientCert *tls.Certificate) (*tls.ConnectionState, error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: roots, ServerName: "localhost", NextProtos: []string{"h2"}}
	if clientCert != nil {
		cfg.Certificates = []tls.Certificate{*clientCert}
	}
	return handshakeConfig(t, srvCfg, cfg)
}

// handshakeConfig is handshake with the client's whole configuration.
func handshakeConfig(t *testing.T, srvCfg, cfg *tls.Config) (*tls.ConnectionState, error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		cs  *tls.ConnectionState
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		tc := tls.Server(c, srvCfg)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		// TLS 1.3 sends the client's certificate after the client sees
		// the handshake as done: read once so the server has processed it.
		buf := make([]byte, 1)
		_, err = tc.Read(buf)
		cs := tc.ConnectionState()
		done <- result{cs: &cs, err: err}
	}()
	conn, err := tls.Dial("tcp", ln.Addr().String(), cfg)
	if err == nil {
		_, err = conn.Write([]byte{1})
		conn.Close()
	}
	r := <-done
	if r.err != nil {
		return nil, r.err
	}
	return r.cs, err
}

func nodeCert(t *testing.T, a Authority, ttl time.Duration) *tls.Certificate {
	t.Helper()
	key := newKey(t)
	chain, err := a.Sign(context.Background(), SignRequest{
		CSR: csrFor(t, key, &x509.CertificateRequest{}),
		ID:  identity.ID{TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}, WGKey: wgKey(5), TTL: ttl,
	})
	if err != nil {
		t.Fatal(err)
	}
	c := chain.TLSCertificate(key)
	return &c
}

func TestNodePortTLS(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	other := newEmbedded(t, t.TempDir())
	sc, err := NewServerCert(context.Background(), e, []string{"ctl.example.com"}, time.Hour, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	cfg := NodePortTLSConfig(e, sc)
	v := VerifierFor(e)

	t.Run("valid client certificate", func(t *testing.T) {
		cs, err := handshake(t, cfg, e.Roots(), nodeCert(t, e, time.Hour))
		if err != nil {
			t.Fatalf("handshake: %v", err)
		}
		peer, err := v.VerifyConnection(cs)
		if err != nil {
			t.Fatalf("VerifyConnection: %v", err)
		}
		if peer.ID.String() != "spiffe://cloudvlan.internal/tenant/t1/node/n1" || peer.WGKey[0] != wgKey(5)[0] {
			t.Fatalf("peer = %+v", peer)
		}
		if cs.NegotiatedProtocol != "h2" || cs.Version != tls.VersionTLS13 {
			t.Fatalf("negotiated %q, version %x", cs.NegotiatedProtocol, cs.Version)
		}
	})
	t.Run("no client certificate reaches the handler, which refuses it", func(t *testing.T) {
		cs, err := handshake(t, cfg, e.Roots(), nil)
		if err != nil {
			t.Fatalf("handshake without a certificate (Enroll's case): %v", err)
		}
		if _, err := v.VerifyConnection(cs); !errors.Is(err, ErrNoClientCertificate) {
			t.Fatalf("VerifyConnection = %v, want ErrNoClientCertificate", err)
		}
	})
	t.Run("certificate from another CA is refused at the handshake", func(t *testing.T) {
		if _, err := handshake(t, cfg, e.Roots(), nodeCert(t, other, time.Hour)); err == nil {
			t.Fatal("handshake with a foreign certificate succeeded")
		}
		// And by the verifier, for configs that do not verify at handshake.
		c := nodeCert(t, other, time.Hour)
		if _, err := v.VerifyChain(leafChain(t, c)); !errors.Is(err, ErrUntrusted) {
			t.Fatalf("VerifyChain(foreign) = %v, want ErrUntrusted", err)
		}
	})
	t.Run("client trusts the controller through the node root", func(t *testing.T) {
		if _, err := handshake(t, cfg, other.Roots(), nil); err == nil {
			t.Fatal("client accepted a server certificate from another CA")
		}
	})
	t.Run("a node presenting its leaf alone is accepted", func(t *testing.T) {
		cert := nodeCert(t, e, time.Hour)
		cert.Leaf = leafChain(t, cert)[0]
		tests := []struct {
			name      string
			clientCAs *x509.CertPool
			sent      int
		}{
			{"node port names the intermediate: leaf only", cfg.ClientCAs, 1},
			{"a server trusting the root only gets the chain", e.Roots(), 2},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				srv := cfg.Clone()
				srv.ClientCAs = tt.clientCAs
				sent := 0
				cli := &tls.Config{RootCAs: e.Roots(), ServerName: "localhost", NextProtos: []string{"h2"},
					GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
						c := identity.ClientCertificate(cri, cert)
						sent = len(c.Certificate)
						return c, nil
					}}
				cs, err := handshakeConfig(t, srv, cli)
				if err != nil {
					t.Fatalf("handshake: %v", err)
				}
				if sent != tt.sent || len(cs.PeerCertificates) != tt.sent {
					t.Fatalf("sent %d certificates, server kept %d, want %d", sent, len(cs.PeerCertificates), tt.sent)
				}
				if _, err := v.VerifyConnection(cs); err != nil {
					t.Fatalf("VerifyConnection: %v", err)
				}
			})
		}
	})
	t.Run("server certificate", func(t *testing.T) {
		leaf := sc.Current().Leaf
		for _, n := range []string{"localhost", "127.0.0.1", "::1", "ctl.example.com"} {
			if err := leaf.VerifyHostname(n); err != nil {
				t.Errorf("server certificate: %v", err)
			}
		}
	})
}

func leafChain(t *testing.T, c *tls.Certificate) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, der := range c.Certificate {
		x, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, x)
	}
	return out
}

func TestVerifierRejectsForeignTrustDomain(t *testing.T) {
	e := newEmbedded(t, t.TempDir(), WithTrustDomain("a.example"))
	c := nodeCert(t, e, time.Hour)
	if _, err := NewVerifier(e.Roots(), "b.example").VerifyChain(leafChain(t, c)); !errors.Is(err, ErrForeignIdentity) {
		t.Fatalf("VerifyChain = %v, want ErrForeignIdentity", err)
	}
	p, err := VerifierFor(e).VerifyChain(leafChain(t, c))
	if err != nil || p.ID.TrustDomain != "a.example" {
		t.Fatalf("VerifyChain = %+v, %v", p, err)
	}
}

func TestServerCertRenews(t *testing.T) {
	e := newEmbedded(t, t.TempDir())
	sc, err := NewServerCert(context.Background(), e, nil, 3*time.Second, quietLogger())
	if err != nil {
		t.Fatal(err)
	}
	first := sc.Current()
	if got, _ := sc.GetCertificate(nil); got != first {
		t.Fatal("fresh certificate was replaced")
	}
	// Two thirds of 3 s: renewal is due after 2 s.
	time.Sleep(2100 * time.Millisecond)
	got, err := sc.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got == first || got.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("certificate not renewed")
	}
	if got.PrivateKey.(*ecdsa.PrivateKey).Equal(first.PrivateKey) {
		t.Fatal("renewal reused the key")
	}
}
