package controlclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/cloudvlan/cloudvlan/agent/internal/state"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// EnrollOptions says where and how to enroll.
type EnrollOptions struct {
	// Target is the controller's node port (host:port).
	Target string
	// Token is the join token (cvj_...).
	Token string
	// RootCAs verifies the controller's certificate during enrollment; nil uses the system roots.
	RootCAs *x509.CertPool
	// Hostname, Name, OS and AgentVersion describe the node.
	Hostname, Name, OS, AgentVersion string
	// AdvertisedRoutes are subnet routes the node offers.
	AdvertisedRoutes []string
}

// Enroll generates the node's WireGuard and TLS keys, sends only their public halves (the CSR) with the
// join token, and returns everything the agent must store.
func Enroll(ctx context.Context, o EnrollOptions) (*state.Enrollment, error) {
	wgPriv, wgPub, err := GenerateWireGuardKey()
	if err != nil {
		return nil, err
	}
	tlsKey, csr, err := NewTLSKey()
	if err != nil {
		return nil, err
	}
	host, _, err := net.SplitHostPort(o.Target)
	if err != nil {
		return nil, fmt.Errorf("controlclient: controller address %q: %w", o.Target, err)
	}
	cc, err := grpc.NewClient(o.Target, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: o.RootCAs, ServerName: host, MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		return nil, fmt.Errorf("controlclient: dial %s: %w", o.Target, err)
	}
	defer cc.Close()
	resp, err := nodev1.NewEnrollmentServiceClient(cc).Enroll(ctx, &nodev1.EnrollRequest{
		JoinToken: o.Token, WireguardPublicKey: wgPub[:], CsrDer: csr,
		Hostname: o.Hostname, Name: o.Name, Os: o.OS, AgentVersion: o.AgentVersion, AdvertisedRoutes: o.AdvertisedRoutes,
	})
	if err != nil {
		return nil, fmt.Errorf("controlclient: enroll at %s: %w", o.Target, err)
	}
	e := &state.Enrollment{
		WireGuardKey: wgPriv, TLSKey: tlsKey, Chain: resp.GetCertificateChainDer(), RootCA: resp.GetRootCaDer(),
		Identity: resp.GetIdentity(), ControlEndpoints: resp.GetControlEndpoints(),
	}
	if err := checkChain(e); err != nil {
		return nil, err
	}
	return e, nil
}

// checkChain makes sure the returned chain is for our key and verifies against the returned root, so a
// broken enrollment fails now rather than at the first mTLS handshake.
func checkChain(e *state.Enrollment) error {
	if len(e.Chain) == 0 || len(e.RootCA) == 0 {
		return fmt.Errorf("controlclient: enrollment returned no certificate chain or root")
	}
	leaf, err := x509.ParseCertificate(e.Chain[0])
	if err != nil {
		return fmt.Errorf("controlclient: parse certificate: %w", err)
	}
	root, err := x509.ParseCertificate(e.RootCA)
	if err != nil {
		return fmt.Errorf("controlclient: parse root CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	inter := x509.NewCertPool()
	for _, der := range e.Chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("controlclient: parse intermediate: %w", err)
		}
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("controlclient: certificate does not verify against the returned root: %w", err)
	}
	if !e.TLSKey.PublicKey.Equal(leaf.PublicKey) {
		return fmt.Errorf("controlclient: certificate is not for our TLS key")
	}
	return nil
}
