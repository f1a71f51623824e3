// Package control is cvlan-vrouter's side of VRouterControlService: it holds the WatchVRouterConfig
// stream, applies each configuration to the data plane, reports every connection's state
// (ReportConnectionStatus) after each change and periodically, and keeps a status file for
// `cvlan-vrouter status`.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// Dataplane is where configurations take effect (VPP in production: *vpp.Programmer).
type Dataplane interface {
	// Apply makes the data plane match cfg; on error it may be partly applied and is retried.
	Apply(ctx context.Context, cfg *vrouterv1.WatchVRouterConfigResponse) error
	// Status returns the state of every configured connection.
	Status(ctx context.Context) ([]*vrouterv1.ConnectionStatus, error)
}

// ErrRefused wraps the controller's Unauthenticated or PermissionDenied answer: the vrouter was
// deleted or its identity revoked, and only a new registration helps.
var ErrRefused = errors.New("the controller refused this vrouter (deleted, or its certificate revoked): register it again with a new join token")

// Options tune the loop.
type Options struct {
	// ReportInterval is the period of status reports (default 15 s).
	ReportInterval time.Duration
	// StatusFile is where the status is written after every change (empty: nowhere).
	StatusFile string
	// MinRetry and MaxRetry bound the backoff of a failed apply (defaults 1 s and 30 s).
	MinRetry, MaxRetry time.Duration
}

// loop is one Run's state; only Run's goroutine touches it, apart from the channels.
type loop struct {
	cl  *nodeclient.Client
	vc  vrouterv1.VRouterControlServiceClient
	dp  Dataplane
	o   Options
	log *slog.Logger

	desired  *vrouterv1.WatchVRouterConfigResponse // the newest configuration received
	applied  uint64                                // the version applied last (0: none)
	appliedC *vrouterv1.WatchVRouterConfigResponse // what was applied last
	applyErr error                                 // the last apply's error, nil after a success
	failed   *vrouterv1.WatchVRouterConfigResponse // what the last apply failed on
	retry    time.Duration
	conns    []*vrouterv1.ConnectionStatus // as last reported
}

// Run follows the vrouter's configuration until ctx is done (nil) or the controller refuses the
// vrouter (an error wrapping ErrRefused). It also renews the certificate.
func Run(ctx context.Context, cl *nodeclient.Client, dp Dataplane, o Options) error {
	if o.ReportInterval <= 0 {
		o.ReportInterval = 15 * time.Second
	}
	if o.MinRetry <= 0 {
		o.MinRetry = time.Second
	}
	if o.MaxRetry <= 0 {
		o.MaxRetry = 30 * time.Second
	}
	l := &loop{cl: cl, vc: vrouterv1.NewVRouterControlServiceClient(cl.Conn()), dp: dp, o: o, log: cl.Log(), retry: o.MinRetry}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(2)
	go func() { defer wg.Done(); cl.RunRenewal(ctx) }()
	cfgs := make(chan *vrouterv1.WatchVRouterConfigResponse, 1)
	var known sync.Mutex // guards knownVersion between the watch goroutine and the loop
	knownVersion := uint64(0)
	watchErr := make(chan error, 1)
	go func() {
		defer wg.Done()
		watchErr <- cl.Retry(ctx, "vrouter config stream", func(ctx context.Context) error {
			known.Lock()
			kv := knownVersion
			known.Unlock()
			return l.watchOnce(ctx, kv, cfgs)
		})
	}()

	report := time.NewTicker(o.ReportInterval)
	defer report.Stop()
	var retry <-chan time.Time
	l.writeStatus()
	for {
		force := false
		select {
		case <-ctx.Done():
			return nil
		case err := <-watchErr:
			if err == nil {
				return nil
			}
			return err
		case cfg := <-cfgs:
			l.desired = cfg
		case <-retry:
			retry, force = nil, true
		case <-report.C:
			if err := l.report(ctx); err != nil {
				return err
			}
			continue
		}
		changed := l.apply(ctx, force)
		known.Lock()
		knownVersion = l.applied // a reconnected stream resumes from here
		known.Unlock()
		if !changed {
			continue
		}
		if l.applyErr != nil {
			retry = time.After(nodeclient.Jitter(l.retry))
			l.retry = min(2*l.retry, o.MaxRetry)
		} else {
			retry, l.retry = nil, o.MinRetry
		}
		if err := l.report(ctx); err != nil {
			return err
		}
	}
}

// watchOnce holds one WatchVRouterConfig stream and hands each configuration to cfgs, newest only.
func (l *loop) watchOnce(ctx context.Context, known uint64, cfgs chan *vrouterv1.WatchVRouterConfigResponse) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := l.vc.WatchVRouterConfig(ctx, &vrouterv1.WatchVRouterConfigRequest{KnownVersion: known})
	if err != nil {
		return permanentIfRefused(err)
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return permanentIfRefused(err)
		}
		l.log.Debug("vrouter configuration received", "version", m.GetVersion(), "connections", len(m.GetConnections()))
		select {
		case <-cfgs:
		default:
		}
		cfgs <- m
	}
}

// refusal returns err wrapped with ErrRefused when it is the controller's refusal, else nil.
func refusal(err error) error {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied:
		return fmt.Errorf("%w: %w", ErrRefused, err)
	}
	return nil
}

// permanentIfRefused ends the watch's retries on a refusal.
func permanentIfRefused(err error) error {
	if r := refusal(err); r != nil {
		return nodeclient.Permanent(r)
	}
	return err
}

// sameContent reports whether a and b differ in their version only.
func sameContent(a, b *vrouterv1.WatchVRouterConfigResponse) bool {
	if a == nil || b == nil {
		return false
	}
	a, b = proto.CloneOf(a), proto.CloneOf(b)
	a.Version, b.Version = 0, 0
	return proto.Equal(a, b)
}

// apply brings the data plane to the desired configuration and reports whether it tried (a report
// is due). A new version with the content already applied, or already failed on, is not applied
// again (the failed one waits for its retry, force): controllers before status writes bumped the
// version on every status report, and re-applying and re-reporting each time would loop.
func (l *loop) apply(ctx context.Context, force bool) bool {
	d := l.desired
	if d == nil {
		return false
	}
	if l.applyErr == nil && l.appliedC != nil && (d.GetVersion() == l.applied || sameContent(d, l.appliedC)) {
		l.applied, l.appliedC = d.GetVersion(), d
		return false
	}
	if l.applyErr != nil && !force && sameContent(d, l.failed) {
		return false
	}
	start := time.Now()
	err := l.dp.Apply(ctx, d)
	if err != nil {
		if ctx.Err() != nil {
			return false
		}
		l.applyErr, l.failed = err, d
		l.log.Error("applying the vrouter configuration failed; its connections are reported DOWN and it is retried",
			"version", d.GetVersion(), "err", err, "retry_in", l.retry)
		return true
	}
	l.applied, l.appliedC, l.applyErr, l.failed = d.GetVersion(), d, nil, nil
	l.log.Info("vrouter configuration applied", "version", d.GetVersion(), "connections", len(d.GetConnections()), "took", time.Since(start).Round(time.Millisecond))
	return true
}

// report sends ReportConnectionStatus: the data plane's view after a successful apply, every
// desired connection DOWN after a failed one. Only a refusal is returned; other errors are logged
// (the next report tries again).
func (l *loop) report(ctx context.Context) error {
	var conns []*vrouterv1.ConnectionStatus
	if l.applyErr != nil {
		for _, c := range l.desired.GetConnections() {
			conns = append(conns, &vrouterv1.ConnectionStatus{Name: c.GetName(), State: vrouterv1.ConnectionState_CONNECTION_STATE_DOWN, LastChangeTime: timestamppb.Now()})
		}
	} else if l.appliedC != nil {
		var err error
		if conns, err = l.dp.Status(ctx); err != nil {
			l.log.Warn("reading connection status from the data plane failed", "err", err)
			return nil
		}
	}
	l.conns = conns
	defer l.writeStatus()
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	_, err := l.vc.ReportConnectionStatus(rctx, &vrouterv1.ReportConnectionStatusRequest{AppliedVersion: l.applied, Connections: conns})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		if r := refusal(err); r != nil {
			return r
		}
		l.log.Warn("reporting connection status failed", "err", err)
	}
	return nil
}
