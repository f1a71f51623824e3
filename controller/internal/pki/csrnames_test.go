package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"net"
	"net/url"
	"testing"
)

func TestCSRNamesMatch(t *testing.T) {
	spec := leafSpec{
		commonName: "n1",
		sans:       []string{"spiffe://td/tenant/t/node/n1", "urn:cloudvlan:wgkey:" + "ab", "relay.example.com", "10.0.0.1"},
	}
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	tests := []struct {
		name string
		csr  x509.CertificateRequest
		ok   bool
	}{
		{"no names", x509.CertificateRequest{}, true},
		{"cn only", x509.CertificateRequest{Subject: pkix.Name{CommonName: "n1"}}, true},
		{"cn is a san", x509.CertificateRequest{Subject: pkix.Name{CommonName: "relay.example.com"}}, true},
		{"other cn", x509.CertificateRequest{Subject: pkix.Name{CommonName: "admin"}}, false},
		{"exact uris", x509.CertificateRequest{URIs: []*url.URL{u("urn:cloudvlan:wgkey:ab"), u("spiffe://td/tenant/t/node/n1")}}, true},
		{"subset of uris", x509.CertificateRequest{URIs: []*url.URL{u("spiffe://td/tenant/t/node/n1")}}, false},
		{"other uri", x509.CertificateRequest{URIs: []*url.URL{u("spiffe://td/tenant/t/node/n2"), u("urn:cloudvlan:wgkey:ab")}}, false},
		{"exact dns", x509.CertificateRequest{DNSNames: []string{"relay.example.com"}}, true},
		{"other dns", x509.CertificateRequest{DNSNames: []string{"evil.example.com"}}, false},
		{"exact ip", x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("10.0.0.1")}}, true},
		{"other ip", x509.CertificateRequest{IPAddresses: []net.IP{net.ParseIP("10.0.0.2")}}, false},
		{"email", x509.CertificateRequest{EmailAddresses: []string{"a@b.c"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := csrNamesMatch(&tt.csr, spec)
			if tt.ok && err != nil {
				t.Fatalf("csrNamesMatch = %v, want ok", err)
			}
			if !tt.ok && !errors.Is(err, ErrCSRNames) {
				t.Fatalf("csrNamesMatch = %v, want ErrCSRNames", err)
			}
		})
	}
}
