package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/control"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/vpp"
)

// version is reported to the controller at enrollment.
const version = "cvlan-vrouter/0.1"

// storeName is the prefix of the key and certificate files in the state directory.
const storeName = "vrouter"

// statusFile is the status `cvlan-vrouter status` reads, inside the state directory.
const statusFile = "status.json"

// hooks let tests replace VPP and learn the admin address; nil in production.
type hooks struct {
	// dataplane replaces vpp.Connect on the socket; o is what vpp.New would get.
	dataplane func(ctx context.Context, socket string, o vpp.Options) (control.Dataplane, func(), error)
	// ready is called with the admin address once it listens.
	ready func(admin net.Addr)
}

// upOptions are the flags of `up`.
type upOptions struct {
	controller, controllerCA, token, stateDir string
	vppSocket, uplink, publicAddress          string
	adminAddr, logLevel                       string
	reportInterval                            time.Duration
}

func parseUp(args []string, stderr io.Writer) (upOptions, netip.Addr, error) {
	var u upOptions
	fs := flag.NewFlagSet("cvlan-vrouter up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&u.controller, "controller", os.Getenv("CVLAN_CONTROLLER"), "controller node port, https://host:8444 (or $CVLAN_CONTROLLER); default: the endpoints saved at enrollment")
	fs.StringVar(&u.controllerCA, "controller-ca", "", "PEM root CA of the controller (its <data-dir>/ca/root_ca.crt), to verify it on the first enrollment (default: system roots)")
	fs.StringVar(&u.token, "token", os.Getenv("CVLAN_JOIN_TOKEN"), "vrouter join token (cvj_...), needed on the first start only (or $CVLAN_JOIN_TOKEN)")
	fs.StringVar(&u.stateDir, "state-dir", "/var/lib/cvlan-vrouter", "state directory: keys, certificate, root CA, identity, status (0700, files 0600)")
	fs.StringVar(&u.vppSocket, "vpp-api-socket", vpp.DefaultSocket, "VPP binary API socket")
	fs.StringVar(&u.uplink, "uplink-interface", "", "VPP interface facing the legacy devices (required), e.g. GigabitEthernet0/8/0")
	fs.StringVar(&u.publicAddress, "public-address", "", "public IP address the devices connect to: IKE identity and tunnel source (required)")
	fs.StringVar(&u.adminAddr, "admin-addr", "127.0.0.1:9091", "gRPC health endpoint (loopback by default; empty disables it)")
	fs.StringVar(&u.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&u.reportInterval, "report-interval", 15*time.Second, "how often connection status is reported besides after each change")
	if err := fs.Parse(args); err != nil {
		return u, netip.Addr{}, err
	}
	if fs.NArg() > 0 {
		return u, netip.Addr{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if u.uplink == "" {
		return u, netip.Addr{}, errors.New("--uplink-interface is required (the VPP interface facing the legacy devices)")
	}
	if u.publicAddress == "" {
		return u, netip.Addr{}, errors.New("--public-address is required (the IP address legacy devices connect to)")
	}
	addr, err := netip.ParseAddr(u.publicAddress)
	if err != nil {
		return u, netip.Addr{}, fmt.Errorf("--public-address %q is not an IP address", u.publicAddress)
	}
	if u.reportInterval < time.Second {
		return u, netip.Addr{}, fmt.Errorf("--report-interval %v: at least 1s", u.reportInterval)
	}
	if u.controller != "" {
		if _, err := nodeclient.Target(u.controller); err != nil {
			return u, netip.Addr{}, err
		}
	}
	if u.token != "" && !strings.HasPrefix(u.token, "cvj_") {
		return u, netip.Addr{}, errors.New("--token: a join token starts with cvj_")
	}
	return u, addr, nil
}

func newLogger(w io.Writer, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: %w", level, err)
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lv})), nil
}

// up connects to VPP, enrolls (first start) or loads the saved identity, and follows the
// controller's configuration until ctx is done or the controller refuses the vrouter.
func up(ctx context.Context, args []string, stderr io.Writer, h *hooks) error {
	if h == nil {
		h = &hooks{}
	}
	u, local, err := parseUp(args, stderr)
	if err != nil {
		return err
	}
	log, err := newLogger(stderr, u.logLevel)
	if err != nil {
		return err
	}

	// VPP first: a vrouter that cannot program anything should not use up its join token.
	vo := vpp.Options{UplinkInterface: u.uplink, LocalAddress: local, Log: log.With("component", "vpp")}
	connect := h.dataplane
	if connect == nil {
		connect = connectVPP
	}
	dp, disconnect, err := connect(ctx, u.vppSocket, vo)
	if err != nil {
		return err
	}
	defer disconnect()

	host, _ := os.Hostname()
	cl, err := nodeclient.Open(ctx, nodeclient.OpenOptions{
		Store: nodeclient.Store{Dir: u.stateDir, Name: storeName}, Controller: u.controller, ControllerCA: u.controllerCA,
		Token: u.token, Kind: nodev1.IdentityKind_IDENTITY_KIND_VROUTER, KeepWireGuardKey: true, Hostname: host, Version: version, Log: log,
	})
	if err != nil {
		return err
	}
	defer cl.Close()
	st := cl.State()
	log.Info("cvlan-vrouter up", "vrouter_id", st.ResourceID, "node_id", st.NodeID, "certificate_not_after", cl.Credentials().NotAfter(),
		"uplink", u.uplink, "public_address", local)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if u.adminAddr != "" {
		stopAdmin, err := serveHealth(u.adminAddr, h.ready, log)
		if err != nil {
			return err
		}
		defer stopAdmin()
	}
	err = control.Run(ctx, cl, dp, control.Options{ReportInterval: u.reportInterval, StatusFile: filepath.Join(u.stateDir, statusFile)})
	if err != nil {
		return err
	}
	log.Info("cvlan-vrouter stopped")
	return nil
}

// connectVPP is the production data plane: the VPP API socket and a vpp.Programmer.
func connectVPP(ctx context.Context, socket string, o vpp.Options) (control.Dataplane, func(), error) {
	conn, disconnect, err := vpp.Connect(ctx, socket)
	if err != nil {
		return nil, nil, err
	}
	p, err := vpp.New(conn, o)
	if err != nil {
		disconnect()
		return nil, nil, err
	}
	return p, func() { _ = p.Close(); disconnect() }, nil
}

// serveHealth serves the standard gRPC health service on addr until the returned func is called.
func serveHealth(addr string, ready func(net.Addr), log *slog.Logger) (func(), error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on admin address %s: %w", addr, err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil {
			log.Error("admin server stopped", "err", err)
		}
	}()
	log.Info("admin endpoint listening", "admin_addr", ln.Addr().String())
	if ready != nil {
		ready(ln.Addr())
	}
	return func() {
		hs.Shutdown()
		srv.GracefulStop()
		<-done
	}, nil
}
