package register

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/types/known/timestamppb"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
)

// Client talks to the controller's node port with the relay certificate.
type Client struct {
	cc    *grpc.ClientConn
	ctl   nodev1.ControlServiceClient
	relay relayv1.RelayControlServiceClient
	creds *Credentials
	dir   string
	log   *slog.Logger

	// MinBackoff and MaxBackoff bound the retry delay of the watch stream
	// and of failed renewals. Set before starting the loops.
	MinBackoff, MaxBackoff time.Duration

	mu    sync.Mutex
	state *State
}

// Dial returns a client of the controller at target (host:port) that
// presents creds and verifies the controller against the enrolled root.
// Renewed certificates are saved into dir. It does not block.
func Dial(target string, st *State, creds *Credentials, dir string, log *slog.Logger) (*Client, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("register: controller address %q: %w", target, err)
	}
	if log == nil {
		log = slog.Default()
	}
	cc, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(credentials.NewTLS(creds.clientTLS(host))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("register: dial %s: %w", target, err)
	}
	return &Client{
		cc: cc, ctl: nodev1.NewControlServiceClient(cc), relay: relayv1.NewRelayControlServiceClient(cc),
		creds: creds, dir: dir, log: log, state: st,
		MinBackoff: 500 * time.Millisecond, MaxBackoff: 30 * time.Second,
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.cc.Close() }

// Renew asks for the next certificate for a new key, saves it and makes it
// current. A new key each time limits what a leaked key is worth.
func (c *Client) Renew(ctx context.Context) error {
	key, csr, err := NewKey()
	if err != nil {
		return err
	}
	resp, err := c.ctl.RenewCertificate(ctx, &nodev1.RenewCertificateRequest{CsrDer: csr})
	if err != nil {
		return fmt.Errorf("register: renew certificate: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	next := *c.state
	next.Key, next.Chain = key, resp.GetCertificateChainDer()
	if err := next.check(); err != nil {
		return fmt.Errorf("register: renewed certificate: %w", err)
	}
	// Saved before use: if the relay restarts now it must come back with the certificate it serves.
	if err := next.Save(c.dir); err != nil {
		return err
	}
	if err := c.creds.set(next.Key, next.Chain); err != nil {
		return err
	}
	c.state = &next
	return nil
}

// RunRenewal renews the certificate at two thirds of each certificate's
// life until ctx is done. A failed renewal is retried with backoff; the
// current certificate stays in use until it expires.
func (c *Client) RunRenewal(ctx context.Context) {
	backoff := c.MinBackoff
	for {
		wait := time.Until(c.creds.RenewAt())
		t := time.NewTimer(max(wait, 0))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if err := c.Renew(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.log.Warn("certificate renewal failed", "err", err, "not_after", c.creds.NotAfter(), "retry_in", backoff)
			if !sleep(ctx, jitter(backoff)) {
				return
			}
			backoff = min(2*backoff, c.MaxBackoff)
			continue
		}
		backoff = c.MinBackoff
		c.log.Info("certificate renewed", "not_after", c.creds.NotAfter())
	}
}

// WatchConfig keeps the WatchRelayConfig stream open until ctx is done,
// reconnecting with jittered backoff, and calls fn with every configuration
// received. fn runs on the watching goroutine.
func (c *Client) WatchConfig(ctx context.Context, version string, fn func(*relayv1.WatchRelayConfigResponse)) {
	backoff := c.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := c.watchOnce(ctx, version, fn)
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = c.MinBackoff
		}
		c.log.Info("relay config stream ended", "err", err, "retry_in", backoff)
		if !sleep(ctx, jitter(backoff)) {
			return
		}
		backoff = min(2*backoff, c.MaxBackoff)
	}
}

func (c *Client) watchOnce(ctx context.Context, version string, fn func(*relayv1.WatchRelayConfigResponse)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := c.relay.WatchRelayConfig(ctx, &relayv1.WatchRelayConfigRequest{Version: version})
	if err != nil {
		return err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return err
		}
		fn(m)
	}
}

// Status is one report's content.
type Status struct {
	// URLs of the data path (https://host:port/relay).
	URLs []string
	// STUNAddress is host:port of the STUN responder, empty when none.
	STUNAddress string
	// Clients, MeshPeers, Packets, Bytes and Drops are the counters.
	Clients, MeshPeers uint64
	Packets, Bytes     uint64
	Drops              map[string]uint64
	// Started is when the relay started; Version its software version.
	Started time.Time
	Version string
}

// Report sends one status report and returns the interval the controller
// asks for (0 when it names none).
func (c *Client) Report(ctx context.Context, st Status) (time.Duration, error) {
	resp, err := c.relay.ReportRelayStatus(ctx, &relayv1.ReportRelayStatusRequest{
		Urls: st.URLs, StunAddress: st.STUNAddress, StartTime: timestamppb.New(st.Started), Version: st.Version,
		Counters: &relayv1.RelayCounters{
			ConnectedClients: st.Clients, ConnectedMeshPeers: st.MeshPeers,
			BytesForwarded: st.Bytes, PacketsForwarded: st.Packets, Drops: st.Drops,
		},
	})
	if err != nil {
		return 0, fmt.Errorf("register: report status: %w", err)
	}
	return resp.GetReportInterval().AsDuration(), nil
}

// ErrNotEnrolled is returned when there is neither saved state nor a join token.
var ErrNotEnrolled = errors.New("register: not enrolled: a join token (--token) is needed on the first start")

func jitter(d time.Duration) time.Duration {
	return d*4/5 + rand.N(d*2/5+1)
}

// sleep waits d or until ctx is done; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
