package nodeclient

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
	"net/url"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// identityKindHeader asks the controller to refuse a join token of another
// kind instead of enrolling, say, a relay as a node (the controller's
// nodeplane.IdentityKindHeader; gRPC metadata keys are lower case).
const identityKindHeader = "cloudvlan-identity-kind"

// kindNames are the header values and Identity.Kind of each kind.
var kindNames = map[nodev1.IdentityKind]string{
	nodev1.IdentityKind_IDENTITY_KIND_NODE:    "node",
	nodev1.IdentityKind_IDENTITY_KIND_RELAY:   "relay",
	nodev1.IdentityKind_IDENTITY_KIND_VROUTER: "vrouter",
}

// EnrollOptions say where and how to enroll.
type EnrollOptions struct {
	// Target is the controller's node port (host:port).
	Target string
	// Token is the join token (cvj_...).
	Token string
	// Kind is the identity expected: a token of another kind is refused.
	Kind nodev1.IdentityKind
	// KeepWireGuardKey keeps the WireGuard key in the state (a vrouter's mesh side needs it). Without it
	// the key is thrown away: EnrollRequest requires a 32-byte WireGuard key for every kind, but a relay
	// has no WireGuard interface (it forwards other nodes' ciphertext); the controller copies the key
	// into the certificate's wgkey SAN, where nothing uses it.
	KeepWireGuardKey bool
	// RootCAs verify the controller's certificate on this first call, before
	// the machine has the root from the controller. nil uses the system roots.
	// There is deliberately no way to skip verification: the join token is a
	// secret, and a man in the middle who saw it could enroll in our place.
	RootCAs *x509.CertPool
	// Hostname and Version describe the machine to the controller.
	Hostname, Version string
}

// Target turns a --controller value (https://host[:port] or host[:port])
// into host:port; the node port defaults to 8444.
func Target(s string) (string, error) {
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("--controller %q: %w", s, err)
		}
		if u.Hostname() == "" {
			return "", fmt.Errorf("--controller %q: no host", s)
		}
		if u.Port() == "" {
			return net.JoinHostPort(u.Hostname(), "8444"), nil
		}
		return u.Host, nil
	}
	if s == "" {
		return "", errors.New("--controller: empty address")
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return net.JoinHostPort(s, "8444"), nil
	}
	return s, nil
}

// NewKey generates a TLS key (ECDSA P-256) and a CSR for it with an empty
// subject and no SANs: the controller decides the identity and the names.
func NewKey() (*ecdsa.PrivateKey, []byte, error) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeclient: generate key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeclient: create CSR: %w", err)
	}
	return k, csr, nil
}

// Enroll generates the TLS and WireGuard keys, enrolls with the join token
// and returns the state to save. It fails unless the returned identity is of
// the expected kind and the certificate is for our key and chains to the
// returned root.
func Enroll(ctx context.Context, o EnrollOptions) (*State, error) {
	host, _, err := net.SplitHostPort(o.Target)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: controller address %q: %w", o.Target, err)
	}
	kind, ok := kindNames[o.Kind]
	if !ok {
		return nil, fmt.Errorf("nodeclient: unknown identity kind %v", o.Kind)
	}
	key, csr, err := NewKey()
	if err != nil {
		return nil, err
	}
	wg, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: generate WireGuard key: %w", err)
	}
	cc, err := grpc.NewClient(o.Target, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: o.RootCAs, ServerName: host, MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		return nil, fmt.Errorf("nodeclient: dial %s: %w", o.Target, err)
	}
	defer cc.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, identityKindHeader, kind)
	resp, err := nodev1.NewEnrollmentServiceClient(cc).Enroll(ctx, &nodev1.EnrollRequest{
		JoinToken: o.Token, WireguardPublicKey: wg.PublicKey().Bytes(), CsrDer: csr, Hostname: o.Hostname, AgentVersion: o.Version,
	})
	if err != nil {
		return nil, fmt.Errorf("nodeclient: enroll at %s: %w", o.Target, err)
	}
	id := resp.GetIdentity()
	if id.GetKind() != o.Kind {
		return nil, fmt.Errorf("nodeclient: the controller enrolled a %v, not a %s: use a join token of kind %s", id.GetKind(), kind, kind)
	}
	root, err := x509.ParseCertificate(resp.GetRootCaDer())
	if err != nil {
		return nil, fmt.Errorf("nodeclient: root CA from the controller: %w", err)
	}
	st := &State{
		Key: key, Chain: resp.GetCertificateChainDer(), Root: root,
		Identity: Identity{
			Kind: kind, ResourceID: id.GetResourceId(), TenantID: id.GetTenantId(), NodeID: id.GetNodeId(), CvlanID: id.GetCvlanId(),
			Name: id.GetName(), IPv4Address: id.GetIpv4Address(), IPv6Address: id.GetIpv6Address(), SPIFFEID: id.GetSpiffeId(),
			ControlEndpoints: resp.GetControlEndpoints(),
		},
	}
	if o.KeepWireGuardKey {
		st.WireGuardKey = wg.Bytes()
	}
	if st.ResourceID == "" && o.Kind != nodev1.IdentityKind_IDENTITY_KIND_NODE {
		return nil, fmt.Errorf("nodeclient: the controller returned no %s id", kind)
	}
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("nodeclient: enrollment: %w", err)
	}
	return st, nil
}
