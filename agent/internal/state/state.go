// Package state keeps an agent's durable state in one directory: its WireGuard private key, its TLS key
// and certificate chain, the root CA, its identity and the last network map it applied. The directory is
// 0700 and every file 0600, because two of them are private keys; the map is kept so that a restart
// without the controller brings the tunnels back (DESIGN.md section 1).
package state

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/cloudvlan/cloudvlan/controller/atomicfile"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// File names inside the state directory.
const (
	fileWGKey    = "wireguard.key"
	fileTLSKey   = "tls.key"
	fileChain    = "tls.crt"
	fileRootCA   = "root_ca.crt"
	fileIdentity = "identity.json"
	fileNetMap   = "netmap.pb"
	fileControl  = "control.json"
)

// ErrNotEnrolled means the directory holds no identity yet.
var ErrNotEnrolled = errors.New("state: not enrolled")

// Dir is an agent state directory.
type Dir struct {
	path string
}

// Open creates path (0700) if needed, tightens its mode if it was wider, and returns it.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("state: create %s: %w", path, err)
	}
	// MkdirAll leaves an existing directory's mode alone; a key store readable by others is a leak.
	if err := os.Chmod(path, 0o700); err != nil {
		return nil, fmt.Errorf("state: chmod %s: %w", path, err)
	}
	return &Dir{path: path}, nil
}

// Path returns the directory's path.
func (d *Dir) Path() string { return d.path }

// Enrollment is what an agent holds after enrolling.
type Enrollment struct {
	// WireGuardKey is the node's WireGuard private key.
	WireGuardKey [32]byte
	// TLSKey is the node's TLS private key.
	TLSKey *ecdsa.PrivateKey
	// Chain is the certificate chain (DER), leaf first.
	Chain [][]byte
	// RootCA is the root CA certificate (DER).
	RootCA []byte
	// Identity is who the node is.
	Identity *nodev1.NodeIdentity
	// ControlEndpoints are the controller's node-port addresses (host:port).
	ControlEndpoints []string
}

// write replaces a file atomically (temp file and rename) with mode 0600, so a crash never leaves a
// half-written key behind.
func (d *Dir) write(name string, data []byte) error {
	if err := atomicfile.Write(filepath.Join(d.path, name), data, 0o600); err != nil {
		return fmt.Errorf("state: %w", err)
	}
	return nil
}

func (d *Dir) read(name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(d.path, name))
	if err != nil {
		return nil, fmt.Errorf("state: read %s: %w", name, err)
	}
	return b, nil
}

// SaveEnrollment writes every part of e.
func (d *Dir) SaveEnrollment(e *Enrollment) error {
	if err := d.write(fileWGKey, []byte(fmt.Sprintf("%x\n", e.WireGuardKey[:]))); err != nil {
		return err
	}
	if err := d.SaveTLS(e.TLSKey, e.Chain); err != nil {
		return err
	}
	if err := d.write(fileRootCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.RootCA})); err != nil {
		return err
	}
	id, err := protojson.MarshalOptions{Multiline: true}.Marshal(e.Identity)
	if err != nil {
		return fmt.Errorf("state: encode identity: %w", err)
	}
	if err := d.write(fileIdentity, id); err != nil {
		return err
	}
	ce := &nodev1.EnrollResponse{ControlEndpoints: e.ControlEndpoints}
	cb, err := protojson.Marshal(ce)
	if err != nil {
		return fmt.Errorf("state: encode control endpoints: %w", err)
	}
	return d.write(fileControl, cb)
}

// SaveTLS replaces the TLS key and certificate chain (after a renewal). A crash between the two writes
// leaves a key that does not match the certificate; LoadEnrollment detects that and reports it.
func (d *Dir) SaveTLS(key *ecdsa.PrivateKey, chain [][]byte) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("state: encode TLS key: %w", err)
	}
	var cb []byte
	for _, c := range chain {
		cb = append(cb, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c})...)
	}
	if err := d.write(fileTLSKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})); err != nil {
		return err
	}
	return d.write(fileChain, cb)
}

// LoadEnrollment reads what SaveEnrollment wrote. It returns ErrNotEnrolled when there is no identity.
func (d *Dir) LoadEnrollment() (*Enrollment, error) {
	idb, err := d.read(fileIdentity)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, ErrNotEnrolled
	}
	if err != nil {
		return nil, err
	}
	e := &Enrollment{Identity: &nodev1.NodeIdentity{}}
	if err := protojson.Unmarshal(idb, e.Identity); err != nil {
		return nil, fmt.Errorf("state: decode identity: %w", err)
	}
	wg, err := d.read(fileWGKey)
	if err != nil {
		return nil, err
	}
	if n, err := hex.Decode(e.WireGuardKey[:], bytes.TrimSpace(wg)); err != nil || n != 32 {
		return nil, fmt.Errorf("state: decode WireGuard key (%d bytes): %v", n, err)
	}
	kb, err := d.read(fileTLSKey)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(kb)
	if blk == nil {
		return nil, errors.New("state: TLS key is not PEM")
	}
	if e.TLSKey, err = x509.ParseECPrivateKey(blk.Bytes); err != nil {
		return nil, fmt.Errorf("state: decode TLS key: %w", err)
	}
	if e.Chain, err = d.readCerts(fileChain); err != nil {
		return nil, err
	}
	roots, err := d.readCerts(fileRootCA)
	if err != nil {
		return nil, err
	}
	if len(roots) != 1 || len(e.Chain) == 0 {
		return nil, fmt.Errorf("state: want one root and a chain, have %d and %d certificates", len(roots), len(e.Chain))
	}
	e.RootCA = roots[0]
	leaf, err := x509.ParseCertificate(e.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("state: parse certificate: %w", err)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(&e.TLSKey.PublicKey) {
		return nil, errors.New("state: the certificate does not match the TLS key (interrupted renewal?)")
	}
	if cb, err := d.read(fileControl); err == nil {
		var ce nodev1.EnrollResponse
		if err := protojson.Unmarshal(cb, &ce); err != nil {
			return nil, fmt.Errorf("state: decode control endpoints: %w", err)
		}
		e.ControlEndpoints = ce.GetControlEndpoints()
	}
	return e, nil
}

func (d *Dir) readCerts(name string) ([][]byte, error) {
	b, err := d.read(name)
	if err != nil {
		return nil, err
	}
	var out [][]byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		out = append(out, blk.Bytes)
	}
	return out, nil
}

// SaveNetworkMap stores the last applied map.
func (d *Dir) SaveNetworkMap(m *nodev1.NetworkMap) error {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return fmt.Errorf("state: encode network map: %w", err)
	}
	return d.write(fileNetMap, b)
}

// LoadNetworkMap returns the last stored map, or nil when none was stored.
func (d *Dir) LoadNetworkMap() (*nodev1.NetworkMap, error) {
	b, err := d.read(fileNetMap)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m := &nodev1.NetworkMap{}
	if err := proto.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("state: decode network map: %w", err)
	}
	return m, nil
}

// WriteFile writes an auxiliary file (for example the status file) with mode 0600.
func (d *Dir) WriteFile(name string, data []byte) error { return d.write(name, data) }

// ReadFile reads an auxiliary file.
func (d *Dir) ReadFile(name string) ([]byte, error) { return d.read(name) }
