package controlclient

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"

	"golang.org/x/crypto/curve25519"
)

// GenerateWireGuardKey returns a new WireGuard private key (clamped as Curve25519 requires) and its
// public key. It is generated here, on the node, and never leaves it.
func GenerateWireGuardKey() (priv, pub [32]byte, err error) {
	if _, err := rand.Read(priv[:]); err != nil {
		return priv, pub, fmt.Errorf("controlclient: read random: %w", err)
	}
	priv[0] &= 248
	priv[31] = (priv[31] & 127) | 64
	p, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return priv, pub, fmt.Errorf("controlclient: derive WireGuard public key: %w", err)
	}
	copy(pub[:], p)
	return priv, pub, nil
}

// WireGuardPublicKey derives the public key of a WireGuard private key.
func WireGuardPublicKey(priv [32]byte) ([32]byte, error) {
	var pub [32]byte
	p, err := curve25519.X25519(priv[:], curve25519.Basepoint)
	if err != nil {
		return pub, fmt.Errorf("controlclient: derive WireGuard public key: %w", err)
	}
	copy(pub[:], p)
	return pub, nil
}

// NewTLSKey returns a fresh ECDSA P-256 key and a PKCS#10 request (DER) for it. The subject is a
// placeholder: the controller decides the identity.
func NewTLSKey() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("controlclient: generate TLS key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "cvlan-agent"}}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("controlclient: create CSR: %w", err)
	}
	return key, csr, nil
}
