package pki

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"time"

	"github.com/smallstep/certificates/authority"
	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"go.step.sm/crypto/x509util"
)

// leafTemplate is the step-ca certificate template for every certificate we
// issue. Names come only from the template data we build from the request's
// identity; nothing from the CSR except its public key reaches the
// certificate. Keys are ECDSA or Ed25519 (checkCSR), so digitalSignature is
// the only key usage needed.
const leafTemplate = `{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": {{ toJson .CloudVLANExtKeyUsage }},
	"basicConstraints": {"isCA": false}
}`

// Embedded is the default Authority: step-ca's authority running inside the
// controller, with its root and intermediate in <dataDir>/ca.
type Embedded struct {
	opts    options
	auth    *authority.Authority
	ca      caMaterial
	rootPEM []byte
}

var _ Authority = (*Embedded)(nil)

// NewEmbedded loads the CA from <dataDir>/ca, creating a root and an
// intermediate there on first start (directory 0700, key files 0600), and
// starts step-ca's authority with them.
func NewEmbedded(ctx context.Context, dataDir string, opts ...Option) (*Embedded, error) {
	o := defaultOptions()
	for _, fn := range opts {
		fn(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	m, err := loadOrCreateCA(ctx, dataDir, o.trustDomain, o.keyPassword, o.logger)
	if err != nil {
		return nil, err
	}
	cfg := &config.Config{AuthorityConfig: &config.AuthConfig{
		Backdate: &provisioner.Duration{Duration: o.backdate},
	}}
	cfg.Init()
	auth, err := authority.NewEmbedded(
		authority.WithConfig(cfg),
		authority.WithX509RootCerts(m.root),
		authority.WithX509Signer(m.intermediate, m.signer),
		authority.WithQuietInit(),
	)
	if err != nil {
		return nil, fmt.Errorf("pki: starting step-ca authority: %w", err)
	}
	return &Embedded{
		opts:    o,
		auth:    auth,
		ca:      m,
		rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.root.Raw}),
	}, nil
}

// Sign issues a workload certificate through step-ca's authority.
func (e *Embedded) Sign(ctx context.Context, req SignRequest) (Chain, error) {
	spec, err := e.opts.workloadSpec(req)
	if err != nil {
		return Chain{}, err
	}
	return e.sign(ctx, req.CSR, spec)
}

// SignServer issues a server certificate for the controller.
func (e *Embedded) SignServer(ctx context.Context, csr *x509.CertificateRequest, names []string, ttl time.Duration) (Chain, error) {
	spec, err := e.opts.serverSpec(csr, names, ttl)
	if err != nil {
		return Chain{}, err
	}
	return e.sign(ctx, csr, spec)
}

func (e *Embedded) sign(ctx context.Context, csr *x509.CertificateRequest, spec leafSpec) (Chain, error) {
	data := x509util.CreateTemplateData(spec.commonName, spec.sans)
	eku := []string{"serverAuth", "clientAuth"}
	if spec.server {
		eku = []string{"serverAuth"}
	}
	data.Set("CloudVLANExtKeyUsage", eku)
	certs, err := e.auth.SignWithContext(ctx, csr, provisioner.SignOptions{},
		templateOption{data: data},
		validity(spec.ttl),
	)
	if err != nil {
		return Chain{}, fmt.Errorf("pki: step-ca sign: %w", err)
	}
	return Chain{Leaf: certs[0], Intermediates: certs[1:]}, nil
}

// templateOption hands our template to step-ca's signing pipeline (it is a
// provisioner.CertificateOptions, the hook provisioners use).
type templateOption struct{ data x509util.TemplateData }

func (t templateOption) Options(provisioner.SignOptions) []x509util.Option {
	return []x509util.Option{x509util.WithTemplate(leafTemplate, t.data)}
}

// validity returns the modifier setting the certificate's lifetime: from
// now minus step-ca's backdate to now plus ttl.
func validity(ttl time.Duration) provisioner.CertificateModifierFunc {
	return func(cert *x509.Certificate, so provisioner.SignOptions) error {
		now := time.Now()
		cert.NotBefore = now.Add(-so.Backdate)
		cert.NotAfter = now.Add(ttl)
		return nil
	}
}

// Roots returns a pool holding the root.
func (e *Embedded) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(e.ca.root)
	return p
}

// Intermediates returns the intermediate that signs every certificate.
func (e *Embedded) Intermediates() []*x509.Certificate { return []*x509.Certificate{e.ca.intermediate} }

// RootPEM returns the root certificate in PEM.
func (e *Embedded) RootPEM() []byte { return append([]byte(nil), e.rootPEM...) }

// Root returns the root certificate.
func (e *Embedded) Root() *x509.Certificate { return e.ca.root }

// TrustDomain returns the configured trust domain.
func (e *Embedded) TrustDomain() string { return e.opts.trustDomain }

// Close shuts the step-ca authority down.
func (e *Embedded) Close() error {
	if err := e.auth.Shutdown(); err != nil {
		return fmt.Errorf("pki: %w", err)
	}
	return nil
}

// Fingerprint returns the lowercase hex SHA-256 of a certificate's DER, the
// form step-ca and step CLI use for root pinning (--root-fingerprint).
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:])
}
