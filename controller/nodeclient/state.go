// Package nodeclient is the client side of enrollment for the machines other than agents (cvlan-relay,
// cvlan-vrouter): it turns a join token into an identity (EnrollmentService.Enroll on the node port),
// keeps key, chain, root and identity in a state directory so that restarts need no token, talks mTLS
// to the controller with that certificate and renews it at two thirds of its life
// (ControlService.RenewCertificate). What each kind does with the connection (WatchRelayConfig,
// WatchVRouterConfig, ...) stays with the kind.
//
// Every private key is generated here and never leaves the machine.
package nodeclient

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cloudvlan/cloudvlan/controller/atomicfile"
)

// File names inside the state directory besides <name>.key and <name>.crt.
const (
	rootFile     = "root.pem"
	identityFile = "identity.json"
	wgKeyFile    = "wireguard.key"
)

// Store is a state directory and the file prefix of its key and certificate (relay.key, vrouter.crt).
type Store struct {
	Dir, Name string
}

func (s Store) keyFile() string  { return s.Name + ".key" }
func (s Store) certFile() string { return s.Name + ".crt" }

// Identity is the non-secret part of State, identity.json on disk.
type Identity struct {
	// Kind is "relay", "vrouter" or "node".
	Kind string `json:"kind"`
	// ResourceID is the relay's or vrouter's id; TenantID is empty for a shared relay.
	ResourceID string `json:"resource_id"`
	TenantID   string `json:"tenant_id,omitempty"`
	// NodeID, CvlanID, Name and the addresses describe the mesh node, for kinds that have one.
	NodeID      string `json:"node_id,omitempty"`
	CvlanID     string `json:"cvlan_id,omitempty"`
	Name        string `json:"name,omitempty"`
	IPv4Address string `json:"ipv4_address,omitempty"`
	IPv6Address string `json:"ipv6_address,omitempty"`
	// SPIFFEID is the certificate's URI SAN.
	SPIFFEID string `json:"spiffe_id"`
	// ControlEndpoints are the controller's node-port endpoints (host:port) returned by Enroll.
	ControlEndpoints []string `json:"control_endpoints"`
}

// State is what enrollment produced and what a restart reloads.
type State struct {
	Identity
	// Key is the TLS key (ECDSA P-256).
	Key *ecdsa.PrivateKey
	// Chain is the certificate chain (DER), leaf first.
	Chain [][]byte
	// Root is the controller's root CA: it verifies the controller and the mesh's certificates.
	Root *x509.Certificate
	// WireGuardKey is the private WireGuard (X25519) key, nil for kinds without a WireGuard interface.
	WireGuardKey []byte
}

// Leaf returns the parsed leaf certificate.
func (s *State) Leaf() (*x509.Certificate, error) {
	if len(s.Chain) == 0 {
		return nil, errors.New("nodeclient: empty certificate chain")
	}
	c, err := x509.ParseCertificate(s.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("nodeclient: parse certificate: %w", err)
	}
	return c, nil
}

// Load reads the state. It returns an error wrapping os.ErrNotExist when
// nothing has enrolled yet.
func (s Store) Load() (*State, error) {
	dir := s.Dir
	idb, err := os.ReadFile(filepath.Join(dir, identityFile))
	if err != nil {
		return nil, fmt.Errorf("nodeclient: load state: %w", err)
	}
	var id struct {
		Identity
		RelayID string `json:"relay_id"` // written by cvlan-relay before this package existed
	}
	if err := json.Unmarshal(idb, &id); err != nil {
		return nil, fmt.Errorf("nodeclient: %s: %w", identityFile, err)
	}
	if id.ResourceID == "" && id.RelayID != "" {
		id.Kind, id.ResourceID = "relay", id.RelayID
	}
	st := &State{Identity: id.Identity}
	keyFile := s.keyFile()
	kb, err := os.ReadFile(filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("nodeclient: load state: %w", err)
	}
	b, _ := pem.Decode(kb)
	if b == nil {
		return nil, fmt.Errorf("nodeclient: %s: no PEM block", keyFile)
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: %s: %w", keyFile, err)
	}
	var ok bool
	if st.Key, ok = k.(*ecdsa.PrivateKey); !ok {
		return nil, fmt.Errorf("nodeclient: %s: %T is not an ECDSA key", keyFile, k)
	}
	if st.Chain, err = readCerts(filepath.Join(dir, s.certFile())); err != nil {
		return nil, err
	}
	roots, err := readCerts(filepath.Join(dir, rootFile))
	if err != nil {
		return nil, err
	}
	if st.Root, err = x509.ParseCertificate(roots[0]); err != nil {
		return nil, fmt.Errorf("nodeclient: %s: %w", rootFile, err)
	}
	if st.WireGuardKey, err = os.ReadFile(filepath.Join(dir, wgKeyFile)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("nodeclient: load state: %w", err)
	}
	if st.WireGuardKey != nil && len(st.WireGuardKey) != 32 {
		return nil, fmt.Errorf("nodeclient: %s: %d bytes, want 32", wgKeyFile, len(st.WireGuardKey))
	}
	if err := st.check(); err != nil {
		return nil, fmt.Errorf("nodeclient: state in %s: %w", dir, err)
	}
	return st, nil
}

func readCerts(path string) ([][]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: load state: %w", err)
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
		return nil, fmt.Errorf("nodeclient: %s: no certificates", path)
	}
	return out, nil
}

// Save writes st (directory created 0700; files 0600). Each file is
// written to a temporary name and renamed, so a crash never leaves a
// half-written key or certificate.
func (s Store) Save(st *State) error {
	dir := s.Dir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("nodeclient: state dir: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone; the key must not be readable by others.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("nodeclient: state dir: %w", err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(st.Key)
	if err != nil {
		return fmt.Errorf("nodeclient: marshal key: %w", err)
	}
	var chain []byte
	for _, der := range st.Chain {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	idb, err := json.MarshalIndent(st.Identity, "", "  ")
	if err != nil {
		return fmt.Errorf("nodeclient: marshal identity: %w", err)
	}
	type file struct {
		name string
		data []byte
	}
	// The keys go first: a certificate on disk without its key would be useless after a crash.
	var files []file
	if st.WireGuardKey != nil {
		files = append(files, file{wgKeyFile, st.WireGuardKey})
	}
	files = append(files,
		file{s.keyFile(), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})},
		file{s.certFile(), chain},
		file{rootFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: st.Root.Raw})},
		file{identityFile, append(idb, '\n')},
	)
	for _, f := range files {
		if err := writeFile(filepath.Join(dir, f.name), f.data); err != nil {
			return err
		}
	}
	return nil
}

func writeFile(path string, data []byte) error {
	if err := atomicfile.Write(path, data, 0o600); err != nil {
		return fmt.Errorf("nodeclient: %w", err)
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
		return errors.New("certificate is not for the saved key")
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
