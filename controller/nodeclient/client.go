package nodeclient

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// ErrNotEnrolled is returned when there is neither saved state nor a join token.
var ErrNotEnrolled = errors.New("not enrolled: a join token (--token) is needed on the first start")

// Client talks to the controller's node port with the enrolled certificate.
type Client struct {
	cc    *grpc.ClientConn
	ctl   nodev1.ControlServiceClient
	creds *Credentials
	store Store
	log   *slog.Logger
	// MinBackoff and MaxBackoff bound the retry delay of Retry and of
	// failed renewals. Set before starting the loops.
	MinBackoff, MaxBackoff time.Duration

	mu    sync.Mutex
	state *State
}

// Dial returns a client of the controller at target (host:port) that
// presents creds and verifies the controller against the enrolled root.
// Renewed certificates are saved into store. It does not block.
func Dial(target string, st *State, creds *Credentials, store Store, log *slog.Logger) (*Client, error) {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: controller address %q: %w", target, err)
	}
	if log == nil {
		log = slog.Default()
	}
	cc, err := grpc.NewClient(target,
		grpc.WithTransportCredentials(credentials.NewTLS(creds.clientTLS(host))),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
	)
	if err != nil {
		return nil, fmt.Errorf("nodeclient: dial %s: %w", target, err)
	}
	return &Client{
		cc: cc, ctl: nodev1.NewControlServiceClient(cc), creds: creds, store: store, log: log, state: st,
		MinBackoff: 500 * time.Millisecond, MaxBackoff: 30 * time.Second,
	}, nil
}

// OpenOptions say how to come up: with the saved state, or by enrolling.
type OpenOptions struct {
	// Store is the state directory.
	Store Store
	// Controller is the --controller value (https://host:8444); empty uses the endpoints saved at enrollment.
	Controller string
	// ControllerCA is a PEM file with the controller's root CA, for the first enrollment (empty: system roots).
	ControllerCA string
	// Token is the join token, needed when the store is empty.
	Token string
	// Kind, KeepWireGuardKey, Hostname and Version are as in EnrollOptions.
	Kind              nodev1.IdentityKind
	KeepWireGuardKey  bool
	Hostname, Version string
	Log               *slog.Logger
}

// Open loads the saved state, or enrolls with the token when there is none
// and saves the result, and dials the controller. A saved but expired
// certificate is an error: a new join token is needed.
func Open(ctx context.Context, o OpenOptions) (*Client, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	st, err := o.Store.Load()
	switch {
	case err == nil:
		o.Log.Info("loaded identity", "kind", st.Kind, "id", st.ResourceID, "state_dir", o.Store.Dir)
	case errors.Is(err, os.ErrNotExist):
		if st, err = enrollAndSave(ctx, o); err != nil {
			return nil, err
		}
	default:
		return nil, err
	}
	if want := kindNames[o.Kind]; st.Kind != want {
		return nil, fmt.Errorf("the state in %s is a %s's, not a %s's", o.Store.Dir, st.Kind, want)
	}
	creds, err := NewCredentials(st)
	if err != nil {
		return nil, err
	}
	if time.Now().After(creds.NotAfter()) {
		return nil, fmt.Errorf("the certificate in %s expired at %s: delete the directory and enroll again with a new join token", o.Store.Dir, creds.NotAfter())
	}
	var target string
	switch {
	case o.Controller != "":
		if target, err = Target(o.Controller); err != nil {
			return nil, err
		}
	case len(st.ControlEndpoints) > 0:
		target = st.ControlEndpoints[0]
	default:
		return nil, errors.New("--controller is required: the enrollment returned no control endpoint")
	}
	return Dial(target, st, creds, o.Store, o.Log)
}

func enrollAndSave(ctx context.Context, o OpenOptions) (*State, error) {
	if o.Token == "" {
		return nil, ErrNotEnrolled
	}
	if o.Controller == "" {
		return nil, errors.New("--controller is required on the first start")
	}
	target, err := Target(o.Controller)
	if err != nil {
		return nil, err
	}
	var roots *x509.CertPool
	if o.ControllerCA != "" {
		b, err := os.ReadFile(o.ControllerCA)
		if err != nil {
			return nil, fmt.Errorf("--controller-ca: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("--controller-ca %s: no PEM certificate", o.ControllerCA)
		}
	}
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := Enroll(ectx, EnrollOptions{
		Target: target, Token: o.Token, Kind: o.Kind, KeepWireGuardKey: o.KeepWireGuardKey, RootCAs: roots,
		Hostname: o.Hostname, Version: o.Version,
	})
	if err != nil {
		return nil, err
	}
	if err := o.Store.Save(st); err != nil {
		return nil, err
	}
	o.Log.Info("enrolled", "kind", st.Kind, "id", st.ResourceID, "node_id", st.NodeID, "spiffe_id", st.SPIFFEID, "state_dir", o.Store.Dir)
	return st, nil
}

// Conn is the connection to the controller, for the kind's own services.
func (c *Client) Conn() grpc.ClientConnInterface { return c.cc }

// Credentials are the current certificate and the root.
func (c *Client) Credentials() *Credentials { return c.creds }

// State returns the current state (it changes on renewal).
func (c *Client) State() *State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// Log is the client's logger.
func (c *Client) Log() *slog.Logger { return c.log }

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
		return fmt.Errorf("nodeclient: renew certificate: %w", err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	next := *c.state
	next.Key, next.Chain = key, resp.GetCertificateChainDer()
	if err := next.check(); err != nil {
		return fmt.Errorf("nodeclient: renewed certificate: %w", err)
	}
	// Saved before use: after a restart now the machine must come back with the certificate it uses.
	if err := c.store.Save(&next); err != nil {
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
			if !Sleep(ctx, Jitter(backoff)) {
				return
			}
			backoff = min(2*backoff, c.MaxBackoff)
			continue
		}
		backoff = c.MinBackoff
		c.log.Info("certificate renewed", "not_after", c.creds.NotAfter())
	}
}

// permanentError marks an error that ends Retry.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent wraps err so that Retry returns it instead of trying again.
func Permanent(err error) error { return permanentError{err} }

// Retry runs once until ctx is done, again after each error with jittered
// exponential backoff (reset after a run that lasted 10 s), logging each
// end with what. It returns nil when ctx is done and the error when once
// returns one wrapped with Permanent.
func (c *Client) Retry(ctx context.Context, what string, once func(context.Context) error) error {
	backoff := c.MinBackoff
	for ctx.Err() == nil {
		start := time.Now()
		err := once(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if pe := (permanentError{}); errors.As(err, &pe) {
			return pe.err
		}
		if time.Since(start) > 10*time.Second {
			backoff = c.MinBackoff
		}
		c.log.Info(what+" ended", "err", err, "retry_in", backoff)
		if !Sleep(ctx, Jitter(backoff)) {
			return nil
		}
		backoff = min(2*backoff, c.MaxBackoff)
	}
	return nil
}

// Jitter returns d ±20 %, so that machines restarted together do not retry together.
func Jitter(d time.Duration) time.Duration {
	return d*4/5 + rand.N(d*2/5+1)
}

// Sleep waits d or until ctx is done; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
