package server

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"time"
)

// CertificateSource supplies the relay's own certificate (leaf first, then
// intermediates). It is asked on every TLS handshake, so a renewed
// certificate takes effect without a restart; the controller enrollment
// (join token -> certificate) plugs in here.
type CertificateSource interface {
	Certificate() (*tls.Certificate, error)
}

// StaticCertificate is a CertificateSource that always returns one certificate.
type StaticCertificate struct{ Cert *tls.Certificate }

// Certificate returns the fixed certificate.
func (s StaticCertificate) Certificate() (*tls.Certificate, error) { return s.Cert, nil }

// Config configures a Server. Zero values take the defaults documented per field.
type Config struct {
	// TrustDomain of accepted certificates; default "cloudvlan.internal".
	TrustDomain string
	// Certificate is the relay's own certificate (a relay identity). Required.
	Certificate CertificateSource
	// Roots verify client and mesh peer certificates. Required.
	Roots *x509.CertPool
	// RelayID names this relay in logs and stats.
	RelayID string
	// Region is reported in stats; relays of one region mesh.
	Region string
	// MeshPeers are the https URLs of the other relays of the region. Each
	// relay dials every peer, so list every other relay on every relay.
	MeshPeers []string

	// MaxClients is the admission limit; default 10,000. Mesh peers do not count.
	MaxClients int
	// SendQueueLen bounds each client's outgoing queue (packets); the oldest
	// packet is dropped when it is full. Default 512.
	SendQueueLen int
	// RateLimitBytes is each client's sustained send rate in bytes per second;
	// default 125,000,000 (1 Gbit/s). Negative means unlimited.
	RateLimitBytes float64
	// RateBurstBytes is the token bucket's depth; default 4 MiB.
	RateBurstBytes int
	// IdleTimeout closes a connection that sent nothing for this long; default 90 s.
	IdleTimeout time.Duration
	// WriteTimeout closes a connection whose writes stall this long; default 10 s.
	WriteTimeout time.Duration
	// KeepAlive is the interval of KeepAlive frames on idle connections
	// (jittered by ±20%); default 30 s.
	KeepAlive time.Duration
	// ReadBufferSize is each connection's read buffer; default 4 KiB (idle
	// connections dominate memory; bursts are read straight from TLS records).
	ReadBufferSize int
	// RestartReconnectIn and RestartTryFor are sent in Restarting frames on
	// shutdown; defaults 1 s and 30 s.
	RestartReconnectIn, RestartTryFor time.Duration
	// MeshMinBackoff/MeshMaxBackoff bound the redial delay of mesh links;
	// defaults 200 ms and 10 s.
	MeshMinBackoff, MeshMaxBackoff time.Duration

	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

func (c *Config) setDefaults() error {
	if c.Certificate == nil {
		return errors.New("relay server: Config.Certificate is required")
	}
	if c.Roots == nil {
		return errors.New("relay server: Config.Roots is required")
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cloudvlan.internal"
	}
	if c.MaxClients <= 0 {
		c.MaxClients = 10000
	}
	if c.SendQueueLen <= 0 {
		c.SendQueueLen = 512
	}
	if c.RateLimitBytes == 0 {
		c.RateLimitBytes = 125e6
	}
	if c.RateBurstBytes <= 0 {
		c.RateBurstBytes = 4 << 20
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 90 * time.Second
	}
	if c.WriteTimeout <= 0 {
		c.WriteTimeout = 10 * time.Second
	}
	if c.KeepAlive <= 0 {
		c.KeepAlive = 30 * time.Second
	}
	if c.ReadBufferSize <= 0 {
		c.ReadBufferSize = 4 << 10
	}
	if c.RestartReconnectIn <= 0 {
		c.RestartReconnectIn = time.Second
	}
	if c.RestartTryFor <= 0 {
		c.RestartTryFor = 30 * time.Second
	}
	if c.MeshMinBackoff <= 0 {
		c.MeshMinBackoff = 200 * time.Millisecond
	}
	if c.MeshMaxBackoff <= 0 {
		c.MeshMaxBackoff = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}
