// Command cvlan-agent makes a machine a node of a CloudVLAN mesh.
//
//	cvlan-agent up --controller URL --token cvj_... [--state-dir D] [--netstack] [--socks5 addr]
//	cvlan-agent status [--state-dir D] [--json]
//	cvlan-agent down [--state-dir D]
//
// `up` enrolls on first start (keys are generated here and never leave the machine), then runs the
// data plane and the control stream until SIGINT/SIGTERM. `status` and `down` talk to the running
// agent through files in its state directory (status.json, agent.pid).
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cloudvlan/cloudvlan/agent/internal/agent"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "cvlan-agent:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  cvlan-agent up --controller URL [--token cvj_...] [--state-dir D] [--netstack] [--socks5 addr] [--http-proxy addr]
  cvlan-agent status [--state-dir D] [--json]
  cvlan-agent down [--state-dir D]
`

func defaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/cvlan-agent"
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "cvlan-agent")
	}
	return ".cvlan-agent"
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	switch args[0] {
	case "up":
		return up(ctx, args[1:], stderr)
	case "status":
		return status(args[1:], stdout, stderr)
	case "down":
		return down(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// controllerTarget turns --controller (https://host[:port] or host:port) into host:port; the node
// port defaults to 8444.
func controllerTarget(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if strings.Contains(s, "://") {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("--controller %q: %w", s, err)
		}
		if u.Port() == "" {
			return net.JoinHostPort(u.Hostname(), "8444"), nil
		}
		return u.Host, nil
	}
	if _, _, err := net.SplitHostPort(s); err != nil {
		return net.JoinHostPort(s, "8444"), nil
	}
	return s, nil
}

func up(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	fs.SetOutput(stderr)
	controller := fs.String("controller", "", "controller node-port URL (https://host:8444)")
	token := fs.String("token", os.Getenv("CVLAN_JOIN_TOKEN"), "join token (cvj_...), needed on the first start only (or $CVLAN_JOIN_TOKEN)")
	stateDir := fs.String("state-dir", defaultStateDir(), "state directory (keys, certificate, last map)")
	caFile := fs.String("controller-ca", "", "PEM root CA that signs the controller's certificate, for enrollment (default: system roots)")
	netstack := fs.Bool("netstack", false, "userspace networking (no root, no TUN device)")
	socks5 := fs.String("socks5", "", "netstack mode: SOCKS5 proxy into the mesh on this loopback address (e.g. 127.0.0.1:1080)")
	httpProxy := fs.String("http-proxy", "", "netstack mode: HTTP proxy into the mesh on this loopback address")
	tunName := fs.String("tun", "cvlan0", "TUN device name")
	listenPort := fs.Uint("listen-port", 0, "WireGuard UDP port (0 picks one)")
	listenIP := fs.String("listen-ip", "", "bind the WireGuard socket to this address (default: all)")
	// Not 127.0.0.53 or .54: systemd-resolved owns those.
	dnsListen := fs.String("dns-listen", "127.0.0.153:53", "TUN mode: mesh DNS resolver address (empty disables)")
	adminAddr := fs.String("admin-addr", "127.0.0.1:9091", "gRPC health endpoint (loopback)")
	name := fs.String("name", "", "node name requested at enrollment (default: host name)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	target, err := controllerTarget(*controller)
	if err != nil {
		return err
	}
	o := agent.Options{StateDir: *stateDir, Controller: target, Token: *token, Name: *name, Netstack: *netstack, TUNName: *tunName,
		ListenPort: uint16(*listenPort), DNSListen: *dnsListen, SOCKS5Addr: *socks5, HTTPProxyAddr: *httpProxy, Logger: log}
	if *netstack {
		o.DNSListen = ""
	}
	if *listenIP != "" {
		if o.ListenIP, err = netip.ParseAddr(*listenIP); err != nil {
			return fmt.Errorf("--listen-ip: %w", err)
		}
	}
	if *caFile != "" {
		b, err := os.ReadFile(*caFile)
		if err != nil {
			return fmt.Errorf("--controller-ca: %w", err)
		}
		o.ControllerCA = x509.NewCertPool()
		if !o.ControllerCA.AppendCertsFromPEM(b) {
			return fmt.Errorf("--controller-ca %s: no PEM certificate", *caFile)
		}
	}
	if (*socks5 != "" || *httpProxy != "") && !*netstack {
		return errors.New("--socks5 and --http-proxy need --netstack")
	}

	ln, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		return fmt.Errorf("listen on admin address %s: %w", *adminAddr, err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(srv, hs)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	defer srv.GracefulStop()

	a, err := agent.Start(ctx, o)
	if err != nil {
		hs.Shutdown()
		return err
	}
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	log.Info("cvlan-agent up", "node", a.Enrollment.Identity.GetNodeId(), "admin_addr", ln.Addr().String(), "netstack", *netstack)

	select {
	case <-ctx.Done():
	case err = <-errc:
		err = fmt.Errorf("serve health: %w", err)
	}
	hs.Shutdown()
	a.Close()
	log.Info("cvlan-agent stopped")
	return err
}

func readStatus(dir string) (*agent.Status, error) {
	b, err := os.ReadFile(filepath.Join(dir, agent.StatusFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("no running agent found in %s", dir)
	}
	if err != nil {
		return nil, err
	}
	var s agent.Status
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("read %s: %w", agent.StatusFile, err)
	}
	return &s, nil
}

func status(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "state directory of the running agent")
	asJSON := fs.Bool("json", false, "print JSON")
	if err := fs.Parse(args); err != nil {
		return err
	}
	s, err := readStatus(*stateDir)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(s)
	}
	age := time.Since(s.Time).Round(time.Second)
	fmt.Fprintf(stdout, "self: %s (%s) %s  map v%d in_sync=%v  endpoints %s  (as of %s ago)\n",
		s.Name, s.NodeID, strings.Join(s.Addresses, " "), s.MapVersion, s.InSync, strings.Join(s.Endpoints, " "), age)
	if age > 30*time.Second {
		fmt.Fprintln(stdout, "warning: the status is stale; is the agent still running?")
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PEER\tNODE\tADDRESSES\tPATH\tLATENCY\tLAST HANDSHAKE\tRX\tTX")
	for _, p := range s.Peers {
		path := p.Path
		if p.Endpoint != "" {
			path += " " + p.Endpoint
		}
		lat := "-"
		if p.LatencyMS > 0 {
			lat = strconv.FormatFloat(p.LatencyMS, 'f', 2, 64) + "ms"
		}
		hs := "never"
		if !p.LastHandshake.IsZero() {
			hs = time.Since(p.LastHandshake).Round(time.Second).String() + " ago"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\n", p.FQDN, p.NodeID, strings.Join(p.Addresses, " "), path, lat, hs, p.RxBytes, p.TxBytes)
	}
	return tw.Flush()
}

func down(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("down", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", defaultStateDir(), "state directory of the running agent")
	timeout := fs.Duration("timeout", 15*time.Second, "how long to wait for the agent to stop")
	if err := fs.Parse(args); err != nil {
		return err
	}
	pidFile := filepath.Join(*stateDir, agent.PIDFile)
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("no running agent found in %s", *stateDir)
	}
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return fmt.Errorf("%s: bad pid %q", pidFile, b)
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	// SIGTERM makes the agent stop cleanly: it closes its tunnels and removes its interface.
	if err := p.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop agent (pid %d): %w", pid, err)
	}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		if _, err := os.Stat(pidFile); errors.Is(err, os.ErrNotExist) {
			fmt.Fprintf(stdout, "agent (pid %d) stopped\n", pid)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("agent (pid %d) did not stop within %v", pid, *timeout)
}
