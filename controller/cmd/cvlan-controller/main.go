// Command cvlan-controller is CloudVLAN's control plane: the resource API (Connect, gRPC and gRPC-Web on
// the API port), the machine plane for agents, relays and vrouters (mTLS on the node port) and metrics.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"syscall"

	"github.com/cloudvlan/cloudvlan/controller/internal/apidesc"
	"github.com/cloudvlan/cloudvlan/controller/internal/server"
	"github.com/cloudvlan/cloudvlan/controller/internal/webui"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "cvlan-controller:", err)
		os.Exit(1)
	}
}

// config is the controller's command-line configuration.
type config struct {
	dataDir     string
	apiAddr     string
	nodeAddr    string
	metricsAddr string
	logLevel    slog.Level
}

func parseFlags(args []string, out io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("cvlan-controller", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.StringVar(&c.dataDir, "data-dir", "data", "directory for the embedded database and CA")
	fs.StringVar(&c.apiAddr, "api-addr", ":8443", "API port: Connect, gRPC, gRPC-Web, reflection, health and the UI (HTTPS)")
	fs.StringVar(&c.nodeAddr, "node-addr", ":8444", "node port: enrollment and the mTLS control plane")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":9090", "Prometheus metrics (plain HTTP)")
	fs.TextVar(&c.logLevel, "log-level", slog.LevelInfo, "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %v", fs.Args())
	}
	return c, nil
}

func run(ctx context.Context, args []string, logOut io.Writer) error {
	cfg, err := parseFlags(args, logOut)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: cfg.logLevel}))

	apiTLS, err := server.SelfSignedTLS([]string{"localhost", "127.0.0.1", "::1"})
	if err != nil {
		return fmt.Errorf("api certificate: %w", err)
	}
	apiMux := http.NewServeMux()
	server.MountIntrospection(apiMux, apidesc.Services(apidesc.UserAPI))
	// The console: every path no RPC claims (RPC paths are more specific patterns).
	apiMux.Handle("/", webui.Handler())

	nodeMux := http.NewServeMux()
	server.MountIntrospection(nodeMux, apidesc.Services(apidesc.NodeAPI, apidesc.RelayAPI, apidesc.VRouterAPI))

	metricsMux := http.NewServeMux()
	metricsMux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })

	log.Info("starting cvlan-controller", "data_dir", cfg.dataDir)
	err = server.Serve(ctx, log, []server.Listener{
		{Name: "api", Addr: cfg.apiAddr, TLS: apiTLS, Handler: apiMux},
		{Name: "node", Addr: cfg.nodeAddr, TLS: apiTLS, Handler: nodeMux},
		{Name: "metrics", Addr: cfg.metricsAddr, Handler: metricsMux},
	}, nil)
	log.Info("stopped")
	return err
}
