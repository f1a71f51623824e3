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
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stderr, os.Stdout); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "cvlan-controller:", err)
		os.Exit(1)
	}
}

// run parses flags and runs the controller until ctx is done. Logs go to logOut; the one-time bootstrap
// credential goes to out.
func run(ctx context.Context, args []string, logOut, out io.Writer) error {
	cfg, err := parseFlags(args, logOut)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(logOut, &slog.HandlerOptions{Level: cfg.logLevel}))
	c, err := newController(ctx, cfg, log, out)
	if err != nil {
		return err
	}
	defer c.close()
	return c.serve(ctx)
}
