// Package controlclient is the agent's side of the machine plane: enrollment, the mTLS WatchNetworkMap
// stream (resumed from the held version), acknowledgements with the state hash, periodic status
// reports, certificate renewal at two thirds of the lifetime, and reconnection with jittered backoff.
package controlclient

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cloudvlan/cloudvlan/agent/internal/state"
	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// Handler is what the client drives: the data plane.
type Handler interface {
	// ApplyMap makes the data plane match m (the whole canonical map after a snapshot or delta).
	ApplyMap(ctx context.Context, m *nodev1.NetworkMap) error
	// HolePunch asks the data plane to send towards a peer's endpoints now.
	HolePunch(hp *nodev1.HolePunch)
	// Status returns the current status report (endpoints, peers, paths).
	Status() *nodev1.ReportStatusRequest
}

// Store persists what the client learns.
type Store interface {
	SaveNetworkMap(m *nodev1.NetworkMap) error
	SaveTLS(key *ecdsa.PrivateKey, chain [][]byte) error
}

// Config configures a Client.
type Config struct {
	// Target is the controller's node port (host:port).
	Target string
	// Enrollment holds the keys, chain and root CA.
	Enrollment *state.Enrollment
	// Store persists maps and renewed certificates; nil keeps nothing.
	Store Store
	// Handler receives maps and hole punches.
	Handler Handler
	// InitialMap is the last map stored on disk: the stream resumes from its version.
	InitialMap *nodev1.NetworkMap
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
	// ReportInterval is the status interval until the controller sets one (default 30 s).
	ReportInterval time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 500 ms and 30 s).
	MinBackoff, MaxBackoff time.Duration
}

// Client keeps a node connected to the controller.
type Client struct {
	cfg       Config
	log       *slog.Logger
	cc        *grpc.ClientConn
	ctl       nodev1.ControlServiceClient
	cert      atomic.Pointer[tls.Certificate]
	sessionID string

	mu      sync.Mutex
	st      netmapstate.State
	inSync  bool
	lastErr string

	reportNow chan struct{}
	renewed   atomic.Int64
}

// New builds a client; it connects lazily in Run.
func New(cfg Config) (*Client, error) {
	if cfg.Enrollment == nil || cfg.Handler == nil {
		return nil, errors.New("controlclient: Enrollment and Handler are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = 30 * time.Second
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	root, err := x509.ParseCertificate(cfg.Enrollment.RootCA)
	if err != nil {
		return nil, fmt.Errorf("controlclient: parse root CA: %w", err)
	}
	host, _, err := net.SplitHostPort(cfg.Target)
	if err != nil {
		return nil, fmt.Errorf("controlclient: controller address %q: %w", cfg.Target, err)
	}
	c := &Client{cfg: cfg, log: cfg.Logger, reportNow: make(chan struct{}, 1)}
	sid := make([]byte, 16)
	if _, err := rand.Read(sid); err != nil {
		return nil, fmt.Errorf("controlclient: session id: %w", err)
	}
	c.sessionID = hex.EncodeToString(sid)
	c.setCert(cfg.Enrollment.TLSKey, cfg.Enrollment.Chain)
	if cfg.InitialMap != nil {
		c.st.ApplySnapshot(cfg.InitialMap)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	tc := &tls.Config{
		RootCAs: pool, ServerName: host, MinVersion: tls.VersionTLS13,
		// Every new connection asks for the current certificate, so a renewal takes effect on the next
		// connection without touching the streams already open.
		GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return identity.ClientCertificate(cri, c.cert.Load()), nil
		},
	}
	c.cc, err = grpc.NewClient(cfg.Target,
		grpc.WithTransportCredentials(credentials.NewTLS(tc)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("controlclient: dial %s: %w", cfg.Target, err)
	}
	c.ctl = nodev1.NewControlServiceClient(c.cc)
	return c, nil
}

func (c *Client) setCert(key *ecdsa.PrivateKey, chain [][]byte) {
	cert := &tls.Certificate{Certificate: chain, PrivateKey: key}
	if leaf, err := x509.ParseCertificate(chain[0]); err == nil {
		cert.Leaf = leaf
	}
	c.cert.Store(cert)
}

// Certificate returns the certificate the client currently presents.
func (c *Client) Certificate() *tls.Certificate { return c.cert.Load() }

// Renewals returns how many renewals succeeded.
func (c *Client) Renewals() int64 { return c.renewed.Load() }

// Version returns the version of the map held.
func (c *Client) Version() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st.Version()
}

// InSync reports whether the controller agreed with the last acknowledged hash.
func (c *Client) InSync() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.inSync
}

// TriggerReport asks for a status report soon (a path changed, an endpoint was learned).
func (c *Client) TriggerReport() {
	select {
	case c.reportNow <- struct{}{}:
	default:
	}
}

// RequestHolePunch asks the controller to tell peerNodeID to punch towards this node.
func (c *Client) RequestHolePunch(ctx context.Context, peerNodeID string) (bool, error) {
	resp, err := c.ctl.RequestHolePunch(ctx, &nodev1.RequestHolePunchRequest{PeerNodeId: peerNodeID})
	if err != nil {
		return false, fmt.Errorf("controlclient: request hole punch towards %s: %w", peerNodeID, err)
	}
	return resp.GetDelivered(), nil
}

// Run keeps the stream, the status reports and the renewals going until ctx ends. It returns nil then.
func (c *Client) Run(ctx context.Context) error {
	defer c.cc.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); c.reportLoop(ctx) }()
	go func() { defer wg.Done(); c.renewLoop(ctx) }()
	c.watchLoop(ctx)
	wg.Wait()
	return nil
}

// watchLoop reconnects the stream with jittered exponential backoff.
func (c *Client) watchLoop(ctx context.Context) {
	backoff := c.cfg.MinBackoff
	for ctx.Err() == nil {
		progressed, wait, err := c.watchOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = c.cfg.MinBackoff
		}
		d := jitter(backoff)
		if wait > 0 {
			// The controller said how long to stay away; jitter on top spreads the herd.
			d = wait + jitter(c.cfg.MinBackoff)
		}
		c.log.Warn("network map stream ended; reconnecting", "err", err, "in", d)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(backoff*2, c.cfg.MaxBackoff)
	}
}

// jitter returns a duration in [d/2, d).
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	n, err := rand.Int(rand.Reader, big.NewInt(int64(d/2)))
	if err != nil {
		return d
	}
	return d/2 + time.Duration(n.Int64())
}

// watchOnce runs one stream. It reports whether any message arrived (which resets the backoff) and
// how long the controller asked us to wait before retrying.
func (c *Client) watchOnce(ctx context.Context) (progressed bool, retryAfter time.Duration, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var trailer metadata.MD
	stream, err := c.ctl.WatchNetworkMap(ctx, &nodev1.WatchNetworkMapRequest{KnownVersion: c.Version(), SessionId: c.sessionID}, grpc.Trailer(&trailer))
	if err != nil {
		return false, 0, fmt.Errorf("open stream: %w", err)
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			if status.Code(err) == codes.ResourceExhausted {
				if v := trailer.Get("retry-after-ms"); len(v) > 0 {
					if ms, perr := strconv.Atoi(v[0]); perr == nil && ms > 0 {
						retryAfter = time.Duration(ms) * time.Millisecond
					}
				}
			}
			return progressed, retryAfter, err
		}
		progressed = true
		switch m := msg.GetMessage().(type) {
		case *nodev1.WatchNetworkMapResponse_Snapshot:
			c.mu.Lock()
			c.st.ApplySnapshot(m.Snapshot)
			c.mu.Unlock()
			c.applyAndAck(ctx, m.Snapshot.GetVersion())
		case *nodev1.WatchNetworkMapResponse_Delta:
			c.mu.Lock()
			err := c.st.ApplyDelta(m.Delta)
			c.mu.Unlock()
			if err != nil {
				c.ack(ctx, m.Delta.GetVersion(), "", err.Error())
				if errors.Is(err, netmapstate.ErrVersionMismatch) {
					// Our version is not what the controller thinks: a fresh stream from what we hold gets
					// either the right deltas or a snapshot.
					return progressed, 0, err
				}
				continue
			}
			c.applyAndAck(ctx, m.Delta.GetVersion())
		case *nodev1.WatchNetworkMapResponse_HolePunch:
			c.cfg.Handler.HolePunch(m.HolePunch)
		case *nodev1.WatchNetworkMapResponse_KeepAlive:
		}
	}
}

// applyAndAck hands the resulting map to the data plane, stores it and acknowledges the version.
func (c *Client) applyAndAck(ctx context.Context, version uint64) {
	c.mu.Lock()
	m := c.st.Map()
	hash := c.st.Hash()
	c.mu.Unlock()
	if err := c.cfg.Handler.ApplyMap(ctx, m); err != nil {
		c.log.Error("apply network map", "version", version, "err", err)
		c.ack(ctx, version, "", err.Error())
		return
	}
	if c.cfg.Store != nil {
		if err := c.cfg.Store.SaveNetworkMap(m); err != nil {
			c.log.Error("store network map", "version", version, "err", err)
		}
	}
	c.ack(ctx, version, hash, "")
	c.TriggerReport()
}

func (c *Client) ack(ctx context.Context, version uint64, hash, applyErr string) {
	if len(applyErr) > 1024 {
		applyErr = applyErr[:1024]
	}
	resp, err := c.ctl.AckNetworkMap(ctx, &nodev1.AckNetworkMapRequest{Version: version, StateHash: hash, Error: applyErr})
	if err != nil {
		c.log.Warn("acknowledge network map", "version", version, "err", err)
		return
	}
	c.mu.Lock()
	c.inSync = resp.GetInSync() && applyErr == ""
	c.mu.Unlock()
	c.log.Debug("network map applied", "version", version, "hash", hash, "in_sync", resp.GetInSync())
}

// reportLoop sends ReportStatus at the interval the controller asks for, and soon after changes.
func (c *Client) reportLoop(ctx context.Context) {
	interval := c.cfg.ReportInterval
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.reportNow:
			// Coalesce bursts of changes into one report.
			select {
			case <-ctx.Done():
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		resp, err := c.ctl.ReportStatus(ctx, c.cfg.Handler.Status())
		if err != nil {
			if ctx.Err() == nil {
				c.log.Debug("report status", "err", err)
			}
		} else if d := resp.GetReportInterval().AsDuration(); d > 0 {
			interval = d
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(interval)
	}
}

// renewLoop renews the certificate at two thirds of its lifetime, retrying with backoff on failure.
func (c *Client) renewLoop(ctx context.Context) {
	retry := c.cfg.MinBackoff
	for {
		leaf := c.cert.Load().Leaf
		if leaf == nil {
			c.log.Error("cannot parse our certificate; not renewing")
			return
		}
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		at := leaf.NotBefore.Add(life * 2 / 3)
		t := time.NewTimer(time.Until(at))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		for {
			err := c.renew(ctx)
			if err == nil {
				retry = c.cfg.MinBackoff
				break
			}
			if ctx.Err() != nil {
				return
			}
			d := jitter(retry)
			c.log.Warn("renew certificate", "err", err, "retry_in", d, "expires", leaf.NotAfter)
			select {
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
			retry = min(retry*2, c.cfg.MaxBackoff)
		}
	}
}

func (c *Client) renew(ctx context.Context) error {
	key, csr, err := NewTLSKey()
	if err != nil {
		return err
	}
	resp, err := c.ctl.RenewCertificate(ctx, &nodev1.RenewCertificateRequest{CsrDer: csr})
	if err != nil {
		return fmt.Errorf("controlclient: renew: %w", err)
	}
	e := &state.Enrollment{TLSKey: key, Chain: resp.GetCertificateChainDer(), RootCA: c.cfg.Enrollment.RootCA}
	if err := checkChain(e); err != nil {
		return err
	}
	if c.cfg.Store != nil {
		if err := c.cfg.Store.SaveTLS(key, e.Chain); err != nil {
			return fmt.Errorf("controlclient: store renewed certificate: %w", err)
		}
	}
	c.setCert(key, e.Chain)
	c.renewed.Add(1)
	c.log.Info("certificate renewed", "expires", resp.GetCertificateExpireTime().AsTime())
	return nil
}
