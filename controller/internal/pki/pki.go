// Package pki issues the certificates of CloudVLAN workloads (nodes, relays,
// vrouters) and of the controller itself, and verifies them on the node port.
//
// Two Authority implementations keep step-ca behind this package:
// Embedded runs step-ca's authority inside the controller with its CA files
// in the data directory; External asks a separate step-ca server through its
// API with a JWK provisioner. The rest of the controller imports only this
// package and controller/identity, never step-ca's packages.
//
// The identity in a certificate always comes from the caller (the enrolment
// or renewal handler, which knows who the node is), never from the CSR: the
// CSR only proves possession of the key.
package pki

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

// DefaultTTL is the validity of workload certificates when the request does
// not choose one.
const DefaultTTL = 8 * time.Hour

// DefaultMaxTTL is the longest validity a request may ask for unless
// WithMaxTTL says otherwise.
const DefaultMaxTTL = 7 * 24 * time.Hour

// Authority issues certificates. Implementations are safe for concurrent use.
type Authority interface {
	// Sign issues a workload certificate for req.ID. The CSR's signature is
	// checked; its names are not copied (see SignRequest).
	Sign(ctx context.Context, req SignRequest) (Chain, error)
	// SignServer issues a TLS server certificate (serverAuth) for the
	// controller with the given DNS names and IP addresses.
	SignServer(ctx context.Context, csr *x509.CertificateRequest, names []string, ttl time.Duration) (Chain, error)
	// Roots returns a new pool with the root certificates leaf chains verify
	// against; callers may keep it.
	Roots() *x509.CertPool
	// Intermediates returns the issuing CA certificates known so far (the embedded CA's own; for
	// an external CA those of the certificates it issued, the controller's serving certificate
	// first). The node port trusts them as issuers so that nodes may present their leaf alone.
	Intermediates() []*x509.Certificate
	// RootPEM returns the PEM-encoded root certificates handed to nodes.
	RootPEM() []byte
	// TrustDomain returns the SPIFFE trust domain of issued identities.
	TrustDomain() string
	// Close releases the authority's resources.
	Close() error
}

// SignRequest asks for one workload certificate.
type SignRequest struct {
	// CSR proves possession of the certificate key. Its subject and SANs
	// are ignored by Embedded; External requires them to be empty or to
	// match exactly (the remote step-ca compares them with the token).
	CSR *x509.CertificateRequest
	// ID is the identity to certify. An empty TrustDomain means the
	// authority's; another trust domain is refused.
	ID identity.ID
	// WGKey is the workload's 32-byte WireGuard public key, required for
	// nodes and vrouters, optional for relays.
	WGKey []byte
	// DNSNames are extra DNS names or IP addresses (relays: their hostnames).
	DNSNames []string
	// TTL is the validity; zero means the authority's default (8 h).
	TTL time.Duration
}

// Chain is an issued certificate with the intermediates up to, but not
// including, the root.
type Chain struct {
	// Leaf is the issued certificate.
	Leaf *x509.Certificate
	// Intermediates are the issuing CA certificates, nearest first.
	Intermediates []*x509.Certificate
}

// DER returns the chain as DER certificates, leaf first, as TLS and the
// protobuf messages carry it.
func (c Chain) DER() [][]byte {
	out := make([][]byte, 0, 1+len(c.Intermediates))
	if c.Leaf != nil {
		out = append(out, c.Leaf.Raw)
	}
	for _, ic := range c.Intermediates {
		out = append(out, ic.Raw)
	}
	return out
}

// PEM returns the chain as concatenated PEM certificates, leaf first.
func (c Chain) PEM() []byte {
	var b []byte
	for _, der := range c.DER() {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return b
}

// TLSCertificate pairs the chain with its private key for a tls.Config.
func (c Chain) TLSCertificate(key any) tls.Certificate {
	return tls.Certificate{Certificate: c.DER(), PrivateKey: key, Leaf: c.Leaf}
}

// Errors of Sign and SignServer, matched with errors.Is. They are wrapped with
// details; the API layer maps them all to InvalidArgument except
// ErrExternalCA (Unavailable or Internal).
var (
	// ErrInvalidCSR: no CSR, or it cannot be used.
	ErrInvalidCSR = errors.New("pki: invalid certificate request")
	// ErrCSRSignature: the CSR's self-signature does not verify.
	ErrCSRSignature = errors.New("pki: certificate request signature does not verify")
	// ErrUnsupportedKey: the CSR's key is not ECDSA P-256/P-384 or Ed25519.
	ErrUnsupportedKey = errors.New("pki: unsupported certificate key")
	// ErrInvalidIdentity: the requested identity is malformed or in another
	// trust domain.
	ErrInvalidIdentity = errors.New("pki: invalid identity")
	// ErrInvalidName: a DNS name or IP address SAN is malformed.
	ErrInvalidName = errors.New("pki: invalid DNS name")
	// ErrInvalidTTL: the TTL is negative or above the maximum.
	ErrInvalidTTL = errors.New("pki: invalid certificate lifetime")
	// ErrCSRNames: (External only) the CSR names someone other than the
	// requested identity.
	ErrCSRNames = errors.New("pki: certificate request names do not match the identity")
	// ErrExternalCA: the external step-ca failed or answered with a
	// certificate that is not what was asked for.
	ErrExternalCA = errors.New("pki: external CA")
)

// options are shared by both authorities.
type options struct {
	trustDomain string
	defaultTTL  time.Duration
	maxTTL      time.Duration
	backdate    time.Duration
	keyPassword []byte
	logger      *slog.Logger
}

func defaultOptions() options {
	return options{
		trustDomain: identity.DefaultTrustDomain,
		defaultTTL:  DefaultTTL,
		maxTTL:      DefaultMaxTTL,
		backdate:    time.Minute,
		logger:      slog.Default(),
	}
}

// Option configures an Authority.
type Option func(*options)

// WithTrustDomain sets the SPIFFE trust domain (default cloudvlan.internal).
func WithTrustDomain(td string) Option { return func(o *options) { o.trustDomain = td } }

// WithDefaultTTL sets the validity used when a request gives none (default 8 h).
func WithDefaultTTL(d time.Duration) Option { return func(o *options) { o.defaultTTL = d } }

// WithMaxTTL sets the longest validity a request may ask for (default 7 days).
func WithMaxTTL(d time.Duration) Option { return func(o *options) { o.maxTTL = d } }

// WithBackdate sets how far before "now" certificates start, to tolerate
// clock skew between controller and nodes (Embedded only; default 1 minute,
// like step-ca).
func WithBackdate(d time.Duration) Option { return func(o *options) { o.backdate = d } }

// WithKeyPassword encrypts the embedded CA's key files with this password
// (Embedded only). Without it the keys are stored unencrypted, mode 0600.
func WithKeyPassword(pw []byte) Option { return func(o *options) { o.keyPassword = pw } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

func (o *options) validate() error {
	if err := (identity.ID{TrustDomain: o.trustDomain, Kind: identity.KindRelay, ResourceID: "x"}).Validate(); err != nil {
		return fmt.Errorf("pki: trust domain: %w", err)
	}
	if o.defaultTTL <= 0 || o.maxTTL < o.defaultTTL {
		return fmt.Errorf("%w: default %s, max %s", ErrInvalidTTL, o.defaultTTL, o.maxTTL)
	}
	if o.backdate < 0 {
		return fmt.Errorf("pki: negative backdate %s", o.backdate)
	}
	return nil
}

// leafSpec is what a certificate will say, computed from a request before
// any CA is involved, so both authorities issue identical certificates.
type leafSpec struct {
	commonName string
	sans       []string // URIs, DNS names and IPs in step-ca's string form
	ttl        time.Duration
	server     bool // serverAuth only (the controller); else client+server
}

// workloadSpec validates req and returns the leaf it asks for.
func (o *options) workloadSpec(req SignRequest) (leafSpec, error) {
	if err := checkCSR(req.CSR); err != nil {
		return leafSpec{}, err
	}
	id := req.ID
	if id.TrustDomain == "" {
		id.TrustDomain = o.trustDomain
	}
	if err := id.Validate(); err != nil {
		return leafSpec{}, fmt.Errorf("%w: %w", ErrInvalidIdentity, err)
	}
	if id.TrustDomain != o.trustDomain {
		return leafSpec{}, fmt.Errorf("%w: trust domain %q, this CA issues %q", ErrInvalidIdentity, id.TrustDomain, o.trustDomain)
	}
	sans := []string{id.String()}
	switch {
	case req.WGKey != nil:
		key, err := identity.WGKeyFromBytes(req.WGKey)
		if err != nil {
			return leafSpec{}, fmt.Errorf("%w: %w", ErrInvalidIdentity, err)
		}
		sans = append(sans, identity.WGKeyURI(key).String())
	case id.Kind.NeedsWGKey():
		return leafSpec{}, fmt.Errorf("%w: a %s certificate needs the WireGuard public key", ErrInvalidIdentity, id.Kind)
	}
	names, err := checkNames(req.DNSNames)
	if err != nil {
		return leafSpec{}, err
	}
	ttl, err := o.ttl(req.TTL)
	if err != nil {
		return leafSpec{}, err
	}
	return leafSpec{commonName: id.ResourceID, sans: append(sans, names...), ttl: ttl}, nil
}

// serverSpec validates a controller server certificate request.
func (o *options) serverSpec(csr *x509.CertificateRequest, names []string, ttl time.Duration) (leafSpec, error) {
	if err := checkCSR(csr); err != nil {
		return leafSpec{}, err
	}
	if len(names) == 0 {
		return leafSpec{}, fmt.Errorf("%w: a server certificate needs at least one name", ErrInvalidName)
	}
	sans, err := checkNames(names)
	if err != nil {
		return leafSpec{}, err
	}
	ttl, err = o.ttl(ttl)
	if err != nil {
		return leafSpec{}, err
	}
	return leafSpec{commonName: sans[0], sans: sans, ttl: ttl, server: true}, nil
}

func (o *options) ttl(d time.Duration) (time.Duration, error) {
	switch {
	case d == 0:
		return o.defaultTTL, nil
	case d < time.Second:
		return 0, fmt.Errorf("%w: %s is shorter than 1s", ErrInvalidTTL, d)
	case d > o.maxTTL:
		return 0, fmt.Errorf("%w: %s is longer than the maximum %s", ErrInvalidTTL, d, o.maxTTL)
	}
	return d, nil
}

// checkCSR verifies the self-signature and the key type. Only the keys
// nodes generate (and TLS 1.3 supports well) are accepted.
func checkCSR(csr *x509.CertificateRequest) error {
	if csr == nil {
		return fmt.Errorf("%w: missing", ErrInvalidCSR)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("%w: ECDSA curve %s (want P-256 or P-384)", ErrUnsupportedKey, k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	default:
		return fmt.Errorf("%w: %T (want ECDSA P-256/P-384 or Ed25519)", ErrUnsupportedKey, csr.PublicKey)
	}
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: %w", ErrCSRSignature, err)
	}
	return nil
}

// checkNames validates DNS names and IP addresses. They are checked strictly
// because step-ca classifies SAN strings by shape: "a:b" would become a URI.
func checkNames(names []string) ([]string, error) {
	out := make([]string, 0, len(names))
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			out = append(out, ip.String())
			continue
		}
		if err := checkDNSName(n); err != nil {
			return nil, err
		}
		out = append(out, strings.ToLower(n))
	}
	return out, nil
}

func checkDNSName(n string) error {
	if n == "" || len(n) > 253 {
		return fmt.Errorf("%w: %q: empty or longer than 253 characters", ErrInvalidName, n)
	}
	for _, label := range strings.Split(strings.TrimSuffix(n, "."), ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("%w: %q: bad label %q", ErrInvalidName, n, label)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("%w: %q: character %q", ErrInvalidName, n, c)
			}
		}
	}
	return nil
}

// checkIssued makes sure a certificate says exactly what spec asked for and
// chains to roots. Embedded certificates always do; for External this
// catches a provisioner template that adds or drops names.
func checkIssued(chain Chain, spec leafSpec, roots *x509.CertPool) error {
	leaf := chain.Leaf
	want := make(map[string]bool, len(spec.sans))
	for _, s := range spec.sans {
		want[s] = true
	}
	got := make(map[string]bool)
	for _, u := range leaf.URIs {
		got[u.String()] = true
	}
	for _, d := range leaf.DNSNames {
		got[d] = true
	}
	for _, ip := range leaf.IPAddresses {
		got[ip.String()] = true
	}
	if len(leaf.EmailAddresses) > 0 || len(got) != len(want) {
		return fmt.Errorf("certificate SANs %v %v %v %v, want %v", leaf.URIs, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, spec.sans)
	}
	for s := range want {
		if !got[s] {
			return fmt.Errorf("certificate lacks SAN %q", s)
		}
	}
	inter := x509.NewCertPool()
	for _, c := range chain.Intermediates {
		inter.AddCert(c)
	}
	usage := x509.ExtKeyUsageClientAuth
	if spec.server {
		usage = x509.ExtKeyUsageServerAuth
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("certificate does not verify against the roots: %w", err)
	}
	return nil
}

// New returns the External authority when ext is set, else the Embedded one
// with its CA files under dataDir: the choice cmd/cvlan-controller offers.
func New(ctx context.Context, dataDir string, ext *ExternalConfig, opts ...Option) (Authority, error) {
	if ext != nil {
		return NewExternal(ctx, *ext, opts...)
	}
	return NewEmbedded(ctx, dataDir, opts...)
}
