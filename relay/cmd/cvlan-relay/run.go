package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/server"
	"github.com/cloudvlan/cloudvlan/relay/stun"
)

// options are the command-line flags.
type options struct {
	listen, stunListen, adminListen string
	certFile, keyFile, caFile       string
	trustDomain, relayID, region    string
	meshPeers                       []string
	maxClients, queueLen            int
	rateLimit                       float64
	idleTimeout                     time.Duration
	statsInterval                   time.Duration
	logLevel, logFormat             string
}

func parseFlags(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("cvlan-relay", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.certFile == "" || o.keyFile == "" || o.caFile == "" {
		return o, errors.New("--cert, --key and --ca are required (or enroll: cvlan-relay up --controller URL --token cvj_...)")
	}
	return o, nil
}

// addFlags declares the data-path flags shared by the file mode and `up`.
func (o *options) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.listen, "listen", ":443", "TLS address for clients and mesh peers (HTTP upgrade at /relay, health at /healthz)")
	fs.StringVar(&o.stunListen, "stun-listen", ":3478", "UDP address of the STUN responder (empty disables it)")
	fs.StringVar(&o.adminListen, "admin-listen", "127.0.0.1:9090", "plain HTTP address for /metrics, /healthz and gRPC health (empty disables it)")
	fs.StringVar(&o.certFile, "cert", "", "relay certificate chain (PEM, leaf first)")
	fs.StringVar(&o.keyFile, "key", "", "relay private key (PEM)")
	fs.StringVar(&o.caFile, "ca", "", "root CA certificates that clients and mesh peers chain to (PEM)")
	fs.StringVar(&o.trustDomain, "trust-domain", "cloudvlan.internal", "SPIFFE trust domain of accepted certificates")
	fs.StringVar(&o.relayID, "relay-id", "", "relay id for logs and stats (default: from the certificate)")
	fs.StringVar(&o.region, "region", "", "region name; the relays of a region mesh")
	fs.Func("mesh-peer", "https URL of another relay of the region (repeatable or comma-separated)", func(s string) error {
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				o.meshPeers = append(o.meshPeers, p)
			}
		}
		return nil
	})
	fs.IntVar(&o.maxClients, "max-clients", 10000, "admission limit: most clients connected at once")
	fs.IntVar(&o.queueLen, "queue-len", 512, "per-client send queue in packets (oldest dropped when full)")
	fs.Float64Var(&o.rateLimit, "rate-limit", 125e6, "per-client send rate in bytes/s (negative: unlimited)")
	fs.DurationVar(&o.idleTimeout, "idle-timeout", 90*time.Second, "close connections silent for this long")
	fs.DurationVar(&o.statsInterval, "stats-interval", 30*time.Second, "how often stats go to the stats reporter")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// Hooks are the seams for controller integration. The enrollment flow
// (`cvlan-relay up --controller URL --token cvj_...`) fills them with a
// certificate obtained from the controller's EnrollmentService and a
// reporter speaking proto/cloudvlan/relay/v1; without them the relay uses
// files and logs its stats.
type Hooks struct {
	// Certificate overrides the --cert/--key files.
	Certificate server.CertificateSource
	// Roots overrides the --ca file.
	Roots *x509.CertPool
	// Reporter receives a stats snapshot every --stats-interval.
	Reporter StatsReporter
	// Ready, if set, is called with the bound addresses once serving.
	Ready func(relay, stun, admin net.Addr)
}

// StatsReporter sends the relay's stats somewhere (the controller).
type StatsReporter interface {
	Report(ctx context.Context, st server.Stats) error
}

// logReporter is the default StatsReporter: one log line per interval.
type logReporter struct{ log *slog.Logger }

func (r logReporter) Report(_ context.Context, st server.Stats) error {
	r.log.Info("relay stats", "clients", st.Clients, "mesh_in", st.MeshPeersIn, "mesh_out", st.MeshPeersOut,
		"remote_keys", st.RemoteKeys, "packets", st.PacketsForwarded, "bytes", st.BytesForwarded,
		"drops", st.Drops, "rejects", st.Rejects)
	return nil
}

// run is main without the process: flags in, error out, until ctx is done.
func run(ctx context.Context, args []string, stderr io.Writer, hooks *Hooks) error {
	if len(args) > 0 && args[0] == "up" {
		return up(ctx, args[1:], stderr)
	}
	o, err := parseFlags(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}
	return serve(ctx, o, log, hooks)
}

// serve runs the relay with parsed options until ctx is done.
func serve(ctx context.Context, o options, log *slog.Logger, hooks *Hooks) error {
	if hooks == nil {
		hooks = &Hooks{}
	}
	certs := hooks.Certificate
	if certs == nil {
		fs, err := newFileCertSource(o.certFile, o.keyFile, o.trustDomain)
		if err != nil {
			return err
		}
		if o.relayID == "" {
			o.relayID = fs.relayID
		}
		certs = fs
	}
	roots := hooks.Roots
	if roots == nil {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return fmt.Errorf("read --ca: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return fmt.Errorf("--ca %s: no certificates", o.caFile)
		}
	}
	reporter := hooks.Reporter
	if reporter == nil {
		reporter = logReporter{log}
	}
	srv, err := server.New(server.Config{
		TrustDomain: o.trustDomain, Certificate: certs, Roots: roots,
		RelayID: o.relayID, Region: o.region, MeshPeers: o.meshPeers,
		MaxClients: o.maxClients, SendQueueLen: o.queueLen, RateLimitBytes: o.rateLimit,
		IdleTimeout: o.idleTimeout, Logger: log,
	})
	if err != nil {
		return err
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen %s: %w", o.listen, err)
	}
	var stunConn *net.UDPConn
	if o.stunListen != "" {
		ua, err := net.ResolveUDPAddr("udp", o.stunListen)
		if err != nil {
			_ = ln.Close()
			return fmt.Errorf("--stun-listen: %w", err)
		}
		if stunConn, err = net.ListenUDP("udp", ua); err != nil {
			_ = ln.Close()
			return fmt.Errorf("listen stun %s: %w", o.stunListen, err)
		}
	}
	var admin *adminServer
	if o.adminListen != "" {
		if admin, err = newAdminServer(o.adminListen, srv, log); err != nil {
			_ = ln.Close()
			if stunConn != nil {
				_ = stunConn.Close()
			}
			return err
		}
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 3)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := srv.Run(ctx, ln); err != nil {
			errc <- err
		}
		cancel()
	}()
	var stunAddr, adminAddr net.Addr
	if stunConn != nil {
		stunAddr = stunConn.LocalAddr()
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer stunConn.Close()
			if err := stun.Serve(ctx, stunConn, log); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	if admin != nil {
		adminAddr = admin.addr()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := admin.run(ctx); err != nil {
				errc <- err
				cancel()
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(o.statsInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if err := reporter.Report(ctx, srv.Stats()); err != nil {
					log.Warn("stats report failed", "err", err)
				}
			}
		}
	}()
	log.Info("cvlan-relay started", "relay_id", o.relayID, "region", o.region, "listen", ln.Addr().String(),
		"stun", addrString(stunAddr), "admin", addrString(adminAddr), "mesh_peers", o.meshPeers)
	if hooks.Ready != nil {
		hooks.Ready(ln.Addr(), stunAddr, adminAddr)
	}
	<-ctx.Done()
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		errs = append(errs, err)
	}
	log.Info("cvlan-relay stopped")
	return errors.Join(errs...)
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
