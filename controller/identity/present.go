package identity

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"slices"
)

// ClientCertificate returns what to present for a server's certificate request: cert with its
// leaf alone when the server names the leaf's issuer among the CAs it accepts (the controller's
// node port does, ADR 010), else cert's whole chain. The server then parses and keeps one
// certificate per connection instead of the chain; servers that trust only the root still get the
// intermediates they need. When cert.Leaf is not set, the leaf is parsed for the call.
func ClientCertificate(cri *tls.CertificateRequestInfo, cert *tls.Certificate) *tls.Certificate {
	if cert == nil || len(cert.Certificate) < 2 || cri == nil {
		return cert
	}
	leaf := cert.Leaf
	if leaf == nil {
		var err error
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return cert
		}
	}
	if !slices.ContainsFunc(cri.AcceptableCAs, func(dn []byte) bool { return bytes.Equal(dn, leaf.RawIssuer) }) {
		return cert
	}
	leafOnly := *cert
	leafOnly.Certificate = cert.Certificate[:1]
	return &leafOnly
}
