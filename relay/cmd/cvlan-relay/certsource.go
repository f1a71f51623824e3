package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/internal/identity"
)

// fileCertSource serves the relay certificate from PEM files and re-reads
// them when their modification time changes (checked at most every 10 s),
// so an external renewal (8-hour certificates) needs no restart.
type fileCertSource struct {
	certFile, keyFile, td string
	relayID               string

	mu        sync.Mutex
	cert      *tls.Certificate
	modCert   time.Time
	modKey    time.Time
	checkedAt time.Time
}

func newFileCertSource(certFile, keyFile, td string) (*fileCertSource, error) {
	s := &fileCertSource{certFile: certFile, keyFile: keyFile, td: td}
	if err := s.load(); err != nil {
		return nil, err
	}
	id, err := identity.FromCertificate(s.cert.Leaf, td)
	if err != nil {
		return nil, fmt.Errorf("relay certificate %s: %w", certFile, err)
	}
	if id.Kind != identity.KindRelay {
		return nil, fmt.Errorf("relay certificate %s names a %s, not a relay", certFile, id.Kind)
	}
	s.relayID = id.ID
	return s, nil
}

func modTime(path string) (time.Time, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return time.Time{}, err
	}
	return fi.ModTime(), nil
}

func (s *fileCertSource) load() error {
	mc, err := modTime(s.certFile)
	if err != nil {
		return fmt.Errorf("relay certificate: %w", err)
	}
	mk, err := modTime(s.keyFile)
	if err != nil {
		return fmt.Errorf("relay key: %w", err)
	}
	c, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		return fmt.Errorf("load relay certificate: %w", err)
	}
	if c.Leaf == nil {
		if c.Leaf, err = x509.ParseCertificate(c.Certificate[0]); err != nil {
			return fmt.Errorf("parse relay certificate: %w", err)
		}
	}
	s.cert, s.modCert, s.modKey = &c, mc, mk
	return nil
}

// Certificate returns the current certificate, reloading changed files.
// A failed reload keeps the previous certificate.
func (s *fileCertSource) Certificate() (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); now.Sub(s.checkedAt) > 10*time.Second {
		s.checkedAt = now
		mc, err1 := modTime(s.certFile)
		mk, err2 := modTime(s.keyFile)
		if err1 == nil && err2 == nil && (!mc.Equal(s.modCert) || !mk.Equal(s.modKey)) {
			_ = s.load()
		}
	}
	return s.cert, nil
}
