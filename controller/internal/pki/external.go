package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/randutil"
)

// ottLifetime is the validity of the one-time tokens we mint; step CLI uses
// the same five minutes.
const ottLifetime = 5 * time.Minute

// ExternalConfig locates an external step-ca and the JWK provisioner the
// controller uses there. docs/pki.md describes the provisioner settings the
// CA needs.
type ExternalConfig struct {
	// URL is the CA's base URL, e.g. "https://ca.example.com:9000". Its
	// host must be one of the CA's dnsNames (the token audience).
	URL string
	// RootPEM holds the CA's root certificate(s): trusted for the CA's
	// own TLS, handed to nodes, and used to verify client certificates.
	RootPEM []byte
	// Provisioner is the JWK provisioner's name.
	Provisioner string
	// Password decrypts the provisioner's private key.
	Password []byte
	// KeyFile is an optional path to the provisioner's private JWK (as
	// written by `step crypto jwk create`, encrypted or not). When empty
	// the encrypted key is fetched from the CA and decrypted with Password.
	KeyFile string
	// Timeout bounds each request to the CA; zero means 15 seconds.
	Timeout time.Duration
}

// External is an Authority backed by a separate step-ca server. Each
// signature costs one HTTPS request to it, with a fresh one-time token.
type External struct {
	opts      options
	cfg       ExternalConfig
	client    *ca.Client
	transport *http.Transport
	jwk       *jose.JSONWebKey
	audience  string
	rootFP    string
	roots     []*x509.Certificate

	mu    sync.Mutex
	inter []*x509.Certificate // intermediates seen in issued chains
}

var _ Authority = (*External)(nil)

// NewExternal connects to the step-ca at cfg.URL, checks it is healthy and
// loads the provisioner key.
func NewExternal(ctx context.Context, cfg ExternalConfig, opts ...Option) (*External, error) {
	o := defaultOptions()
	for _, fn := range opts {
		fn(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	switch {
	case cfg.URL == "":
		return nil, errors.New("pki: external CA: URL is required")
	case cfg.Provisioner == "":
		return nil, errors.New("pki: external CA: provisioner name is required")
	case len(cfg.RootPEM) == 0:
		return nil, errors.New("pki: external CA: root certificate is required")
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 15 * time.Second
	}
	roots, err := pemutil.ParseCertificateBundle(cfg.RootPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: external CA root: %w", err)
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	// Our own transport, so Close can drop its idle connections.
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
		ForceAttemptHTTP2: true,
		IdleConnTimeout:   90 * time.Second,
	}
	client, err := ca.NewClient(cfg.URL, ca.WithTransport(tr), ca.WithTimeout(cfg.Timeout))
	if err != nil {
		return nil, fmt.Errorf("pki: external CA client: %w", err)
	}
	e := &External{
		opts: o, cfg: cfg, client: client, transport: tr, roots: roots,
		rootFP: Fingerprint(roots[0]),
	}
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("pki: external CA URL: %w", err)
	}
	e.audience = u.ResolveReference(&url.URL{Path: "/1.0/sign"}).String()
	if _, err := client.HealthWithContext(ctx); err != nil {
		tr.CloseIdleConnections()
		return nil, fmt.Errorf("%w: health check of %s: %w", ErrExternalCA, cfg.URL, err)
	}
	if e.jwk, err = e.loadKey(ctx); err != nil {
		tr.CloseIdleConnections()
		return nil, err
	}
	return e, nil
}

// loadKey reads the provisioner's private key from KeyFile or, like step
// CLI, fetches the encrypted key from the CA.
func (e *External) loadKey(ctx context.Context) (*jose.JSONWebKey, error) {
	var jopts []jose.Option
	if len(e.cfg.Password) > 0 {
		jopts = append(jopts, jose.WithPassword(e.cfg.Password))
	}
	if e.cfg.KeyFile != "" {
		k, err := jose.ReadKey(e.cfg.KeyFile, jopts...)
		if err != nil {
			return nil, fmt.Errorf("pki: provisioner key %s: %w", e.cfg.KeyFile, err)
		}
		return checkJWK(k, e.cfg.KeyFile)
	}
	if len(e.cfg.Password) == 0 {
		return nil, errors.New("pki: external CA: provisioner password is required to decrypt the key fetched from the CA")
	}
	var cursor string
	for {
		var popts []ca.ProvisionerOption
		if cursor != "" {
			popts = append(popts, ca.WithProvisionerCursor(cursor))
		}
		resp, err := e.client.ProvisionersWithContext(ctx, popts...)
		if err != nil {
			return nil, fmt.Errorf("%w: listing provisioners: %w", ErrExternalCA, err)
		}
		for _, p := range resp.Provisioners {
			jwk, ok := p.(*provisioner.JWK)
			if !ok || jwk.Name != e.cfg.Provisioner {
				continue
			}
			if jwk.EncryptedKey == "" {
				return nil, fmt.Errorf("pki: provisioner %q has no encrypted key on the CA; set KeyFile", e.cfg.Provisioner)
			}
			b, err := jose.Decrypt([]byte(jwk.EncryptedKey), jopts...)
			if err != nil {
				return nil, fmt.Errorf("pki: decrypting key of provisioner %q: %w", e.cfg.Provisioner, err)
			}
			k, err := jose.ParseKey(b, jopts...)
			if err != nil {
				return nil, fmt.Errorf("pki: key of provisioner %q: %w", e.cfg.Provisioner, err)
			}
			if k.KeyID == "" {
				k.KeyID = jwk.Key.KeyID
			}
			return checkJWK(k, "provisioner "+e.cfg.Provisioner)
		}
		if resp.NextCursor == "" {
			return nil, fmt.Errorf("pki: external CA has no JWK provisioner named %q", e.cfg.Provisioner)
		}
		cursor = resp.NextCursor
	}
}

func checkJWK(k *jose.JSONWebKey, from string) (*jose.JSONWebKey, error) {
	switch {
	case k.IsPublic():
		return nil, fmt.Errorf("pki: %s: is a public key; the provisioner's private key is needed", from)
	case k.KeyID == "":
		return nil, fmt.Errorf("pki: %s: key has no kid", from)
	case k.Algorithm == "":
		return nil, fmt.Errorf("pki: %s: key has no alg", from)
	}
	return k, nil
}

// ottClaims are the claims step-ca's JWK provisioner reads.
type ottClaims struct {
	jose.Claims
	SANs []string `json:"sans"`
	SHA  string   `json:"sha,omitempty"`
}

// token mints a one-time token authorising exactly spec's names.
func (e *External) token(spec leafSpec) (string, error) {
	jti, err := randutil.Hex(64)
	if err != nil {
		return "", err
	}
	so := new(jose.SignerOptions)
	so.WithType("JWT")
	so.WithHeader("kid", e.jwk.KeyID)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(e.jwk.Algorithm), Key: e.jwk.Key}, so)
	if err != nil {
		return "", err
	}
	now := time.Now()
	return jose.Signed(signer).Claims(ottClaims{
		Claims: jose.Claims{
			ID:        jti,
			Issuer:    e.cfg.Provisioner,
			Subject:   spec.commonName,
			Audience:  jose.Audience{e.audience},
			IssuedAt:  jose.NewNumericDate(now),
			NotBefore: jose.NewNumericDate(now),
			Expiry:    jose.NewNumericDate(now.Add(ottLifetime)),
		},
		SANs: spec.sans,
		SHA:  e.rootFP,
	}).CompactSerialize()
}

// Sign issues a workload certificate through the external CA.
func (e *External) Sign(ctx context.Context, req SignRequest) (Chain, error) {
	spec, err := e.opts.workloadSpec(req)
	if err != nil {
		return Chain{}, err
	}
	return e.sign(ctx, req.CSR, spec)
}

// SignServer issues a server certificate for the controller. The external
// CA's template decides the key usages (the default gives serverAuth and
// clientAuth).
func (e *External) SignServer(ctx context.Context, csr *x509.CertificateRequest, names []string, ttl time.Duration) (Chain, error) {
	spec, err := e.opts.serverSpec(csr, names, ttl)
	if err != nil {
		return Chain{}, err
	}
	return e.sign(ctx, csr, spec)
}

func (e *External) sign(ctx context.Context, csr *x509.CertificateRequest, spec leafSpec) (Chain, error) {
	if err := csrNamesMatch(csr, spec); err != nil {
		return Chain{}, err
	}
	tok, err := e.token(spec)
	if err != nil {
		return Chain{}, fmt.Errorf("pki: minting one-time token: %w", err)
	}
	resp, err := e.client.SignWithContext(ctx, &api.SignRequest{
		CsrPEM:   api.NewCertificateRequest(csr),
		OTT:      tok,
		NotAfter: api.NewTimeDuration(time.Now().Add(spec.ttl)),
	})
	if err != nil {
		return Chain{}, fmt.Errorf("%w: sign: %w", ErrExternalCA, err)
	}
	var chain Chain
	certs := resp.CertChainPEM
	if len(certs) == 0 { // step-ca before v0.15 sent only crt and ca
		certs = []api.Certificate{resp.ServerPEM, resp.CaPEM}
	}
	for i, c := range certs {
		if c.Certificate == nil {
			return Chain{}, fmt.Errorf("%w: sign response has an empty certificate", ErrExternalCA)
		}
		if i == 0 {
			chain.Leaf = c.Certificate
		} else if !slices.ContainsFunc(e.roots, c.Certificate.Equal) {
			chain.Intermediates = append(chain.Intermediates, c.Certificate)
		}
	}
	if err := checkIssued(chain, spec, e.Roots()); err != nil {
		return Chain{}, fmt.Errorf("%w: issued certificate refused (check the provisioner template in docs/pki.md): %w", ErrExternalCA, err)
	}
	e.learn(chain.Intermediates)
	return chain, nil
}

// learn remembers the intermediates of a verified chain.
func (e *External) learn(certs []*x509.Certificate) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range certs {
		if !slices.ContainsFunc(e.inter, c.Equal) {
			e.inter = append(e.inter, c)
		}
	}
}

// Intermediates returns the intermediates seen in the chains the CA issued so far.
func (e *External) Intermediates() []*x509.Certificate {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.inter)
}

// csrNamesMatch enforces ahead of time what the remote JWK provisioner
// checks: each kind of name in the CSR (URI, DNS, IP, email) is either absent
// or exactly the token's set, and the common name is empty or one of the
// token's names. Nodes should send CSRs without names (they do not know their
// node ID before enrolment); a CSR claiming other names gets a clear error
// here instead of a remote 403.
func csrNamesMatch(csr *x509.CertificateRequest, spec leafSpec) error {
	cn := csr.Subject.CommonName
	if cn != "" && cn != spec.commonName && !slices.Contains(spec.sans, cn) {
		return fmt.Errorf("%w: subject common name %q, want %q or empty", ErrCSRNames, cn, spec.commonName)
	}
	var wantURIs, wantDNS, wantIPs []string
	for _, s := range spec.sans {
		switch {
		case net.ParseIP(s) != nil:
			wantIPs = append(wantIPs, s)
		case strings.Contains(s, ":"):
			wantURIs = append(wantURIs, s)
		default:
			wantDNS = append(wantDNS, s)
		}
	}
	var gotURIs, gotIPs []string
	for _, u := range csr.URIs {
		gotURIs = append(gotURIs, u.String())
	}
	for _, ip := range csr.IPAddresses {
		gotIPs = append(gotIPs, ip.String())
	}
	for _, c := range []struct {
		kind      string
		got, want []string
	}{
		{"URI", gotURIs, wantURIs},
		{"DNS", csr.DNSNames, wantDNS},
		{"IP", gotIPs, wantIPs},
		{"email", csr.EmailAddresses, nil},
	} {
		if len(c.got) > 0 && !sameSet(c.got, c.want) {
			return fmt.Errorf("%w: %s SANs %q, want none or exactly %q", ErrCSRNames, c.kind, c.got, c.want)
		}
	}
	return nil
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(slices.Compact(a), slices.Compact(b))
}

// Roots returns a pool with the CA's roots.
func (e *External) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range e.roots {
		p.AddCert(r)
	}
	return p
}

// RootPEM returns the configured root certificates.
func (e *External) RootPEM() []byte { return append([]byte(nil), e.cfg.RootPEM...) }

// TrustDomain returns the configured trust domain.
func (e *External) TrustDomain() string { return e.opts.trustDomain }

// Close drops idle connections to the CA.
func (e *External) Close() error {
	e.transport.CloseIdleConnections()
	return nil
}
