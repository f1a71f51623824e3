package register

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// identityKindHeader asks the controller to refuse a join token of another
// kind instead of enrolling this relay as, say, a node (the controller's
// nodeplane.IdentityKindHeader; gRPC metadata keys are lower case).
const identityKindHeader = "cloudvlan-identity-kind"

// EnrollOptions say where and how to enroll.
type EnrollOptions struct {
	// Target is the controller's node port (host:port).
	Target string
	// Token is the relay join token (cvj_...).
	Token string
	// RootCAs verify the controller's certificate on this first call, before
	// the relay has the root from the controller. nil uses the system roots.
	// There is deliberately no way to skip verification: the join token is a
	// secret, and a man in the middle who saw it could enroll in our place.
	RootCAs *x509.CertPool
	// Hostname and Version describe the relay to the controller.
	Hostname, Version string
}

// NewKey generates a TLS key (ECDSA P-256) and a CSR for it with an empty
// subject and no SANs: the controller decides the identity and the names.
func NewKey() (*ecdsa.PrivateKey, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("register: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		return nil, nil, fmt.Errorf("register: create CSR: %w", err)
	}
	return k, csr, nil
}

// throwAwayWireGuardKey returns the public half of a fresh X25519 key whose
// private half is discarded at once. EnrollRequest requires a 32-byte
// WireGuard key for every kind, but a relay has no WireGuard interface: it
// forwards other nodes' ciphertext. The controller copies the key into the
// relay certificate's wgkey SAN, where nothing uses it.
func throwAwayWireGuardKey() ([]byte, error) {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("register: generate key: %w", err)
	}
	return k.PublicKey().Bytes(), nil
}

// Enroll generates the relay's TLS key, enrolls with the relay join token
// and returns the state to save. It fails unless the returned certificate
// is a relay certificate for our key that chains to the returned root.
func Enroll(ctx context.Context, o EnrollOptions) (*State, error) {
	host, _, err := net.SplitHostPort(o.Target)
	if err != nil {
		return nil, fmt.Errorf("register: controller address %q: %w", o.Target, err)
	}
	key, csr, err := NewKey()
	if err != nil {
		return nil, err
	}
	wg, err := throwAwayWireGuardKey()
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(o.Target, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: o.RootCAs, ServerName: host, MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		return nil, fmt.Errorf("register: dial %s: %w", o.Target, err)
	}
	defer cc.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, identityKindHeader, "relay")
	resp, err := nodev1.NewEnrollmentServiceClient(cc).Enroll(ctx, &nodev1.EnrollRequest{
		JoinToken: o.Token, WireguardPublicKey: wg, CsrDer: csr, Hostname: o.Hostname, AgentVersion: o.Version,
	})
	if err != nil {
		return nil, fmt.Errorf("register: enroll at %s: %w", o.Target, err)
	}
	id := resp.GetIdentity()
	if id.GetKind() != nodev1.IdentityKind_IDENTITY_KIND_RELAY {
		return nil, fmt.Errorf("register: the controller enrolled a %v, not a relay: use a join token of kind relay", id.GetKind())
	}
	root, err := x509.ParseCertificate(resp.GetRootCaDer())
	if err != nil {
		return nil, fmt.Errorf("register: root CA from the controller: %w", err)
	}
	st := &State{
		Key: key, Chain: resp.GetCertificateChainDer(), Root: root,
		RelayID: id.GetResourceId(), TenantID: id.GetTenantId(), SPIFFEID: id.GetSpiffeId(),
		ControlEndpoints: resp.GetControlEndpoints(),
	}
	if st.RelayID == "" {
		return nil, errors.New("register: the controller returned no relay id")
	}
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("register: enrollment: %w", err)
	}
	return st, nil
}
