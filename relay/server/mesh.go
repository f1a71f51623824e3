package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/identity"
	"github.com/cloudvlan/cloudvlan/relay/internal/upgrade"
)

// runMeshLink keeps one outbound link to a relay of the region, redialling
// with jittered exponential backoff until ctx is done.
func (s *Server) runMeshLink(ctx context.Context, url string) {
	backoff := s.cfg.MeshMinBackoff
	log := s.log.With("mesh_url", url)
	for ctx.Err() == nil {
		start := time.Now()
		err := s.meshOnce(ctx, url)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = s.cfg.MeshMinBackoff
		}
		log.Info("mesh link down", "err", err, "retry_in", backoff)
		t := time.NewTimer(jitter(backoff))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, s.cfg.MeshMaxBackoff)
	}
}

// meshTLS presents our relay certificate and accepts only servers whose
// certificate names a relay.
func (s *Server) meshTLS(peer *identity.Identity) *tls.Config {
	return &tls.Config{
		RootCAs: s.cfg.Roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return s.cfg.Certificate.Certificate()
		},
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("mesh peer sent no certificate")
			}
			id, err := identity.FromCertificate(cs.PeerCertificates[0], s.cfg.TrustDomain)
			if err != nil {
				return fmt.Errorf("mesh peer: %w", err)
			}
			if id.Kind != identity.KindRelay {
				return fmt.Errorf("mesh peer is a %s, not a relay", id.Kind)
			}
			*peer = id
			return nil
		},
	}
}

func (s *Server) meshOnce(ctx context.Context, url string) error {
	var peer identity.Identity
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	nc, br, err := upgrade.Dial(dctx, url, s.meshTLS(&peer))
	cancel()
	if err != nil {
		return err
	}
	_ = nc.SetReadDeadline(time.Now().Add(15 * time.Second))
	var hello [frame.MaxTenantLen]byte
	typ, p, err := frame.NewReader(br).ReadFrame(hello[:])
	if err != nil || typ != frame.TypeServerHello {
		_ = nc.Close()
		return fmt.Errorf("mesh hello from %s: type %v: %w", url, typ, err)
	}
	if _, _, err := frame.ParseServerHello(p); err != nil {
		_ = nc.Close()
		return fmt.Errorf("mesh hello from %s: %w", url, err)
	}
	c := s.newConn(roleMeshOut, peer)
	c.attach(nc, br)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = nc.Close()
		return errors.New("relay shutting down")
	}
	s.conns[c] = struct{}{}
	s.meshOut++
	s.connWG.Add(1)
	s.mu.Unlock()
	c.q.PushControl(item{typ: frame.TypeWatchConns})
	stop := context.AfterFunc(ctx, func() { c.close(nil) })
	defer stop()
	c.log.Info("mesh link up")
	c.run()
	return c.closeErr
}
