// Package register enrolls cvlan-relay with the CloudVLAN controller and
// keeps it registered: it turns a relay join token into a relay certificate
// (EnrollmentService.Enroll), keeps key, chain and root in a state directory
// so that restarts need no token, renews the certificate over mTLS at two
// thirds of its life (ControlService.RenewCertificate), follows the relay's
// configuration (RelayControlService.WatchRelayConfig) and reports its
// status and counters (RelayControlService.ReportRelayStatus).
//
// The relay's private key is generated here and never leaves the machine.
package register

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// File names inside the state directory.
const (
	keyFile      = "relay.key"
	certFile     = "relay.crt"
	rootFile     = "root.pem"
	identityFile = "identity.json"
)

// State is what enrollment produced and what a restart reloads.
type State struct {
	// Key is the relay's TLS key (ECDSA P-256).
	Key *ecdsa.PrivateKey
	// Chain is the certificate chain (DER), leaf first.
	Chain [][]byte
	// Root is the controller's root CA: it verifies the controller, clients and mesh peers.
	Root *x509.Certificate
	// RelayID and TenantID name the relay (TenantID empty for a shared relay); SPIFFEID is its URI SAN.
	RelayID, TenantID, SPIFFEID string
	// ControlEndpoints are the controller's node-port endpoints (host:port) returned by Enroll.
	ControlEndpoints []string
}

// identityJSON is the non-secret part of State on disk.
type identityJSON struct {
	RelayID          string   `json:"relay_id"`
	TenantID         string   `json:"tenant_id,omitempty"`
	SPIFFEID         string   `json:"spiffe_id"`
	ControlEndpoints []string `json:"control_endpoints"`
}

// Leaf returns the parsed leaf certificate.
func (s *State) Leaf() (*x509.Certificate, error) {
	if len(s.Chain) == 0 {
		return nil, errors.New("register: empty certificate chain")
	}
	c, err := x509.ParseCertificate(s.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("register: parse certificate: %w", err)
	}
	return c, nil
}

// Load reads the state from dir. It returns an error wrapping
// os.ErrNotExist when the relay has not enrolled yet.
func Load(dir string) (*State, error) {
	idb, err := os.ReadFile(filepath.Join(dir, identityFile))
	if err != nil {
		return nil, fmt.Errorf("register: load state: %w", err)
	}
	var id identityJSON
	if err := json.Unmarshal(idb, &id); err != nil {
		return nil, fmt.Errorf("register: %s: %w", identityFile, err)
	}
	st := &State{RelayID: id.RelayID, TenantID: id.TenantID, SPIFFEID: id.SPIFFEID, ControlEndpoints: id.ControlEndpoints}
	kb, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("register: load state: %w", err)
	}
	b, _ := pem.Decode(kb)
	if b == nil {
		return nil, fmt.Errorf("register: %s: no PEM block", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("register: %s: %w", keyFile, err)
	}
	var ok bool
	if st.Key, ok = k.(*ecdsa.PrivateKey); !ok {
		return nil, fmt.Errorf("register: %s: %T is not an ECDSA key", keyFile, k)
	}
	if st.Chain, err = readCerts(filepath.Join(dir, certFile)); err != nil {
		return nil, err
	}
	roots, err := readCerts(filepath.Join(dir, rootFile))
	if err != nil {
		return nil, err
	}
	if st.Root, err = x509.ParseCertificate(roots[0]); err != nil {
		return nil, fmt.Errorf("register: %s: %w", rootFile, err)
	}
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("register: state in %s: %w", dir, err)
	}
	return st, nil
}

func readCerts(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("register: load state: %w", err)
	}
	var out [][]byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			out = append(out, blk.Bytes)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("register: %s: no certificates", path)
	}
	return out, nil
}

// Save writes the state to dir (created 0700; files 0600). Each file is
// written to a temporary name and renamed, so a crash never leaves a
// half-written key or certificate.
func (s *State) Save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("register: state dir: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone; the key must not be readable by others.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("register: state dir: %w", err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(s.Key)
	if err != nil {
		return fmt.Errorf("register: marshal key: %w", err)
	}
	var chain []byte
	for _, der := range s.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	idb, err := json.MarshalIndent(identityJSON{RelayID: s.RelayID, TenantID: s.TenantID, SPIFFEID: s.SPIFFEID, ControlEndpoints: s.ControlEndpoints}, "", "  ")
	if err != nil {
		return fmt.Errorf("register: marshal identity: %w", err)
	}
	// The key goes first: a certificate on disk without its key would be useless after a crash.
	for _, f := range []struct {
		name string
		data []byte
	}{
		{keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})},
		{certFile, chain},
		{rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: s.Root.Raw})},
		{identityFile, append(idb, '\n')},
	} {
		if err := writeFile(filepath.Join(dir, f.name), f.data); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("register: write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("register: write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("register: write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("register: write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("register: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("register: write %s: %w", path, err)
	}
	return nil
}

// check verifies that the chain is for the key and chains to the root, so
// a broken enrollment or a mixed-up state directory fails at start rather
// than at the first handshake.
func (s *State) check() error {
	leaf, err := s.Leaf()
	if err != nil {
		return err
	}
	if s.Key == nil || !s.Key.PublicKey.Equal(leaf.PublicKey) {
		return errors.New("certificate is not for the relay's key")
	}
	if s.Root == nil {
		return errors.New("no root CA")
	}
	roots := x509.NewCertPool()
	roots.AddCert(s.Root)
	inter := x509.NewCertPool()
	for _, der := range s.Chain[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("parse intermediate: %w", err)
		}
		inter.AddCert(c)
	}
	// The check is about the chain's shape, not its age: an expired certificate is reported by the
	// caller (it needs a new join token), not confused with a corrupt state.
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("certificate does not verify against the root: %w", err)
	}
	return nil
}
