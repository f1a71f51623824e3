package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
	"github.com/cloudvlan/cloudvlan/relay/internal/register"
	"github.com/cloudvlan/cloudvlan/relay/server"
)

// version is reported to the controller.
const version = "cvlan-relay/0.1"

// upOptions are the flags of `cvlan-relay up` beyond the data-path flags.
type upOptions struct {
	controller, token, stateDir, controllerCA string
	advertise                                 []string
	configWait                                time.Duration
}

// up enrolls with the controller on first start (or loads the saved
// state), then serves the relay with that certificate, renews it, follows
// the relay's configuration and reports status until ctx is done.
func up(ctx context.Context, args []string, stderr io.Writer) error {
	var o options
	var u upOptions
	fs := flag.NewFlagSet("cvlan-relay up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	o.addFlags(fs)
	fs.StringVar(&u.controller, "controller", "", "controller node port (https://host:8444); default: the endpoints saved at enrollment")
	fs.StringVar(&u.token, "token", os.Getenv("CVLAN_JOIN_TOKEN"), "relay join token (cvj_...), needed on the first start only (or $CVLAN_JOIN_TOKEN)")
	fs.StringVar(&u.stateDir, "state-dir", "/var/lib/cvlan-relay", "state directory: key, certificate, root CA, identity (0700, files 0600)")
	fs.StringVar(&u.controllerCA, "controller-ca", "", "PEM root CA of the controller (its <data-dir>/ca/root_ca.crt), to verify it on the first enrollment (default: system roots)")
	fs.Func("advertise-url", "data-path URL reported to the controller, https://host:port/relay (repeatable; default from the certificate's names and --listen port)", func(s string) error {
		u.advertise = append(u.advertise, s)
		return nil
	})
	fs.DurationVar(&u.configWait, "config-wait", 10*time.Second, "how long to wait for the first configuration (region, mesh peers) before serving without it")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	log, err := newLogger(stderr, o.logLevel, o.logFormat)
	if err != nil {
		return err
	}

	host, _ := os.Hostname()
	ncl, err := nodeclient.Open(ctx, nodeclient.OpenOptions{
		Store: nodeclient.Store{Dir: u.stateDir, Name: "relay"}, Controller: u.controller, ControllerCA: u.controllerCA,
		Token: u.token, Kind: nodev1.IdentityKind_IDENTITY_KIND_RELAY, Hostname: host, Version: version, Log: log,
	})
	if err != nil {
		return err
	}
	defer ncl.Close()
	cl, st, creds := register.New(ncl), ncl.State(), ncl.Credentials()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); cl.RunRenewal(ctx) }()

	cfgs := make(chan *relayv1.WatchRelayConfigResponse, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		cl.WatchConfig(ctx, version, func(m *relayv1.WatchRelayConfigResponse) {
			select { // keep only the newest
			case <-cfgs:
			default:
			}
			cfgs <- m
		})
	}()
	// The data path starts with the controller's region and mesh peers when
	// they come quickly, so that it does not start un-meshed.
	var first *relayv1.WatchRelayConfigResponse
	select {
	case first = <-cfgs:
	case <-time.After(u.configWait):
		log.Warn("no relay configuration from the controller yet; serving with the flags")
	case <-ctx.Done():
		return nil
	}
	base := slices.Clone(o.meshPeers)
	apply := func(m *relayv1.WatchRelayConfigResponse) []string {
		peers := slices.Clone(base)
		for _, p := range m.GetMeshPeers() {
			if !slices.Contains(peers, p.GetUrl()) {
				peers = append(peers, p.GetUrl())
			}
		}
		slices.Sort(peers)
		return peers
	}
	if first != nil {
		if o.region == "" {
			o.region = first.GetRegionId()
		}
		o.meshPeers = apply(first)
	}
	o.relayID = st.ResourceID
	rep := &reporter{cl: cl, log: log, started: time.Now(), interval: 30 * time.Second, wake: make(chan struct{}, 1)}
	if first != nil && first.GetReportInterval().AsDuration() > 0 {
		rep.interval = first.GetReportInterval().AsDuration()
	}
	// The reporter sends when the controller's interval has passed, so the
	// data path hands it stats often and the first report goes out at once.
	o.statsInterval = min(o.statsInterval, time.Second)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-cfgs:
				if peers := apply(m); !slices.Equal(peers, o.meshPeers) {
					// relay/server takes its mesh peers at start only.
					log.Warn("the region's mesh peers changed; restart cvlan-relay to mesh with them", "now", peers, "serving", o.meshPeers)
				}
			}
		}
	}()
	hooks := &Hooks{
		Certificate: creds, Roots: creds.Roots(), Reporter: rep,
		Ready: func(relay, stun, _ net.Addr) { rep.setAddrs(advertised(u.advertise, relay, creds), stun) },
	}
	return serve(ctx, o, log, hooks)
}

// advertised returns the data-path URLs to report: the --advertise-url
// values, else one per name in the certificate (DNS and IP SANs, which the
// controller took from the relay resource's addresses) on the bound port,
// else the bound address itself.
func advertised(flagURLs []string, relay net.Addr, creds *nodeclient.Credentials) []string {
	if len(flagURLs) > 0 {
		return flagURLs
	}
	_, port, _ := net.SplitHostPort(relay.String())
	var out []string
	if c, err := creds.Certificate(); err == nil && c.Leaf != nil {
		for _, n := range c.Leaf.DNSNames {
			out = append(out, "https://"+net.JoinHostPort(n, port)+"/relay")
		}
		for _, ip := range c.Leaf.IPAddresses {
			out = append(out, "https://"+net.JoinHostPort(ip.String(), port)+"/relay")
		}
	}
	if len(out) == 0 {
		out = append(out, "https://"+relay.String()+"/relay")
	}
	return out[:min(len(out), 8)]
}

// reporter is the StatsReporter of `up`: ReportRelayStatus at the
// controller's interval (and at once for the first report).
type reporter struct {
	cl       *register.Client
	log      *slog.Logger
	started  time.Time
	wake     chan struct{}
	mu       sync.Mutex
	urls     []string
	stun     string
	interval time.Duration
	last     time.Time
	failing  bool
}

func (r *reporter) setAddrs(urls []string, stun net.Addr) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.urls = urls
	if stun != nil {
		r.stun = stun.String()
	}
}

// Report implements StatsReporter.
func (r *reporter) Report(ctx context.Context, st server.Stats) error {
	r.mu.Lock()
	due := time.Since(r.last) >= r.interval || (r.failing && time.Since(r.last) >= 5*time.Second)
	urls, stunAddr := r.urls, r.stun
	r.mu.Unlock()
	if !due || len(urls) == 0 {
		return nil
	}
	iv, err := r.cl.Report(ctx, register.Status{
		URLs: urls, STUNAddress: stunAddr, Clients: uint64(st.Clients), MeshPeers: uint64(st.MeshPeersIn + st.MeshPeersOut),
		Packets: st.PacketsForwarded, Bytes: st.BytesForwarded, Drops: st.Drops, Started: r.started, Version: version,
	})
	r.mu.Lock()
	defer r.mu.Unlock()
	r.last, r.failing = time.Now(), err != nil
	if err != nil {
		return err
	}
	if iv > 0 {
		r.interval = iv
	}
	return nil
}
