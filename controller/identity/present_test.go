package identity

import (
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"testing"
)

func TestClientCertificate(t *testing.T) {
	issuer := pkix.Name{CommonName: "CloudVLAN Intermediate CA"}.ToRDNSequence()
	leaf := &x509.Certificate{RawIssuer: mustMarshal(t, issuer)}
	chain := &tls.Certificate{Certificate: [][]byte{{1}, {2}}, Leaf: leaf}
	other := mustMarshal(t, pkix.Name{CommonName: "CloudVLAN Root CA"}.ToRDNSequence())
	tests := []struct {
		name string
		cri  *tls.CertificateRequestInfo
		cert *tls.Certificate
		want int // certificates presented; -1: nil
	}{
		{"issuer named: leaf alone", &tls.CertificateRequestInfo{AcceptableCAs: [][]byte{other, leaf.RawIssuer}}, chain, 1},
		{"only the root named: whole chain", &tls.CertificateRequestInfo{AcceptableCAs: [][]byte{other}}, chain, 2},
		{"no CAs named: whole chain", &tls.CertificateRequestInfo{}, chain, 2},
		{"leaf not parsed and not parsable: whole chain", &tls.CertificateRequestInfo{AcceptableCAs: [][]byte{leaf.RawIssuer}}, &tls.Certificate{Certificate: chain.Certificate}, 2},
		{"leaf alone already", &tls.CertificateRequestInfo{AcceptableCAs: [][]byte{leaf.RawIssuer}}, &tls.Certificate{Certificate: chain.Certificate[:1], Leaf: leaf}, 1},
		{"no certificate", &tls.CertificateRequestInfo{}, nil, -1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ClientCertificate(tt.cri, tt.cert)
			if tt.want < 0 {
				if got != nil {
					t.Fatalf("got %v, want nil", got)
				}
				return
			}
			if len(got.Certificate) != tt.want {
				t.Fatalf("presents %d certificates, want %d", len(got.Certificate), tt.want)
			}
		})
	}
	if len(chain.Certificate) != 2 {
		t.Fatal("the stored certificate was modified")
	}
}

func mustMarshal(t *testing.T, rdn pkix.RDNSequence) []byte {
	t.Helper()
	der, err := asn1.Marshal(rdn)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
