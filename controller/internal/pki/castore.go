package pki

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/smallstep/certificates/cas/apiv1"
	"github.com/smallstep/certificates/cas/softcas"
	kmsapi "go.step.sm/crypto/kms/apiv1"
	"go.step.sm/crypto/pemutil"
)

// File names inside <dataDir>/ca. They follow step-ca's own layout (certs/
// and secrets/ flattened) so an operator recognises them.
const (
	caDirName            = "ca"
	rootCertFile         = "root_ca.crt"
	rootKeyFile          = "root_ca.key"
	intermediateCertFile = "intermediate_ca.crt"
	intermediateKeyFile  = "intermediate_ca.key"
)

// caLifetime is the validity of the generated root and intermediate, step
// ca init's default.
const caLifetime = 10 * 365 * 24 * time.Hour

// caMaterial is a loaded or freshly created CA.
type caMaterial struct {
	root         *x509.Certificate
	intermediate *x509.Certificate
	signer       crypto.Signer // the intermediate's key
}

// loadOrCreateCA returns the CA in <dataDir>/ca, creating it on first start.
// Creation happens in a temporary directory renamed into place, so a crash
// half-way never leaves a partial CA that a restart would trust.
func loadOrCreateCA(ctx context.Context, dataDir, trustDomain string, password []byte, log *slog.Logger) (caMaterial, error) {
	dir := filepath.Join(dataDir, caDirName)
	if _, err := os.Stat(dir); err == nil {
		m, err := loadCA(dir, password, log)
		if err != nil {
			return caMaterial{}, fmt.Errorf("pki: loading CA from %s: %w", dir, err)
		}
		log.InfoContext(ctx, "pki: embedded CA loaded", "dir", dir, "root_fingerprint", Fingerprint(m.root))
		return m, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return caMaterial{}, fmt.Errorf("pki: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return caMaterial{}, fmt.Errorf("pki: creating data dir: %w", err)
	}
	tmp, err := os.MkdirTemp(dataDir, ".ca-new-")
	if err != nil {
		return caMaterial{}, fmt.Errorf("pki: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	m, err := createCA(tmp, trustDomain, password)
	if err != nil {
		return caMaterial{}, fmt.Errorf("pki: creating CA: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		// Another process (a second replica on the same volume) may have
		// won the race; its CA is the one to use.
		if m2, err2 := loadCA(dir, password, log); err2 == nil {
			return m2, nil
		}
		return caMaterial{}, fmt.Errorf("pki: installing CA: %w", err)
	}
	log.InfoContext(ctx, "pki: embedded CA created", "dir", dir, "root_fingerprint", Fingerprint(m.root))
	return m, nil
}

// createCA makes a root and an intermediate through step-ca's SoftCAS, the
// code `step ca init` uses, and writes them into dir.
func createCA(dir, trustDomain string, password []byte) (caMaterial, error) {
	if err := os.Chmod(dir, 0o700); err != nil {
		return caMaterial{}, err
	}
	cas, err := softcas.New(context.Background(), apiv1.Options{Type: apiv1.SoftCAS, IsCreator: true})
	if err != nil {
		return caMaterial{}, err
	}
	name := "CloudVLAN " + trustDomain
	root, err := cas.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Name:      name + " Root CA",
		Type:      apiv1.RootCA,
		Lifetime:  caLifetime,
		CreateKey: &kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256},
		Template: &x509.Certificate{
			Subject:               pkix.Name{CommonName: name + " Root CA", Organization: []string{"CloudVLAN"}},
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            1,
		},
	})
	if err != nil {
		return caMaterial{}, fmt.Errorf("root: %w", err)
	}
	inter, err := cas.CreateCertificateAuthority(&apiv1.CreateCertificateAuthorityRequest{
		Name:      name + " Intermediate CA",
		Type:      apiv1.IntermediateCA,
		Lifetime:  caLifetime,
		CreateKey: &kmsapi.CreateKeyRequest{SignatureAlgorithm: kmsapi.ECDSAWithSHA256},
		Template: &x509.Certificate{
			Subject:               pkix.Name{CommonName: name + " Intermediate CA", Organization: []string{"CloudVLAN"}},
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLen:            0,
			MaxPathLenZero:        true,
		},
		Parent: root,
	})
	if err != nil {
		return caMaterial{}, fmt.Errorf("intermediate: %w", err)
	}
	files := []struct {
		name string
		obj  any
		perm os.FileMode
	}{
		{rootKeyFile, root.PrivateKey, 0o600},
		{intermediateKeyFile, inter.PrivateKey, 0o600},
		{rootCertFile, root.Certificate, 0o644},
		{intermediateCertFile, inter.Certificate, 0o644},
	}
	for _, f := range files {
		var block *pem.Block
		if c, ok := f.obj.(*x509.Certificate); ok {
			block = &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}
		} else {
			var opts []pemutil.Options
			if len(password) > 0 {
				opts = append(opts, pemutil.WithPassword(password))
			}
			if block, err = pemutil.Serialize(f.obj, opts...); err != nil {
				return caMaterial{}, fmt.Errorf("%s: %w", f.name, err)
			}
		}
		if err := writeFileSync(filepath.Join(dir, f.name), pem.EncodeToMemory(block), f.perm); err != nil {
			return caMaterial{}, err
		}
	}
	return caMaterial{root: root.Certificate, intermediate: inter.Certificate, signer: inter.Signer}, nil
}

// writeFileSync writes and fsyncs, so the rename that publishes the CA never
// publishes empty files after a power loss.
func writeFileSync(path string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// loadCA reads an existing CA and checks that its parts belong together:
// a mismatched key or intermediate would otherwise only show when nodes
// fail to verify their certificates.
func loadCA(dir string, password []byte, log *slog.Logger) (caMaterial, error) {
	for _, name := range []string{rootKeyFile, intermediateKeyFile} {
		if fi, err := os.Stat(filepath.Join(dir, name)); err == nil && fi.Mode().Perm()&0o077 != 0 {
			log.Warn("pki: CA key file is readable by group or others; chmod 600 it",
				"file", filepath.Join(dir, name), "mode", fi.Mode().Perm().String())
		}
	}
	root, err := pemutil.ReadCertificate(filepath.Join(dir, rootCertFile))
	if err != nil {
		return caMaterial{}, err
	}
	inter, err := pemutil.ReadCertificate(filepath.Join(dir, intermediateCertFile))
	if err != nil {
		return caMaterial{}, err
	}
	var opts []pemutil.Options
	if len(password) > 0 {
		opts = append(opts, pemutil.WithPassword(password))
	}
	key, err := pemutil.Read(filepath.Join(dir, intermediateKeyFile), opts...)
	if err != nil {
		return caMaterial{}, fmt.Errorf("intermediate key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return caMaterial{}, fmt.Errorf("intermediate key: %T is not a signer", key)
	}
	if err := inter.CheckSignatureFrom(root); err != nil {
		return caMaterial{}, fmt.Errorf("intermediate is not signed by the root: %w", err)
	}
	if !publicKeysEqual(signer.Public(), inter.PublicKey) {
		return caMaterial{}, errors.New("intermediate key does not match the intermediate certificate")
	}
	return caMaterial{root: root, intermediate: inter, signer: signer}, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ab, err1 := x509.MarshalPKIXPublicKey(a)
	bb, err2 := x509.MarshalPKIXPublicKey(b)
	return err1 == nil && err2 == nil && bytes.Equal(ab, bb)
}
