// Command cvlan-vrouter runs CloudVLAN's vrouter. This first version starts, serves gRPC health on its admin
// address and exits cleanly on SIGINT/SIGTERM; its data plane is being built (see the README).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "cvlan-vrouter:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, logOut io.Writer) error {
	fs := flag.NewFlagSet("cvlan-vrouter", flag.ContinueOnError)
	fs.SetOutput(logOut)
	adminAddr := fs.String("admin-addr", "127.0.0.1:9091", "gRPC health endpoint (loopback by default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logOut, nil))

	ln, err := net.Listen("tcp", *adminAddr)
	if err != nil {
		return fmt.Errorf("listen on admin address %s: %w", *adminAddr, err)
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("cvlan-vrouter started", "admin_addr", ln.Addr().String())

	select {
	case <-ctx.Done():
		hs.Shutdown()
		srv.GracefulStop()
		log.Info("cvlan-vrouter stopped")
		return nil
	case err := <-errc:
		return fmt.Errorf("serve health: %w", err)
	}
}
