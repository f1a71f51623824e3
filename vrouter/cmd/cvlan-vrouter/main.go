// Command cvlan-vrouter runs CloudVLAN's vrouter: an IPsec concentrator on VPP that terminates the
// tunnels of legacy devices for one or more tenants.
//
// Usage:
//
//	cvlan-vrouter up --controller https://ctl.example:8444 --controller-ca root_ca.crt --token cvj_... \
//	    --state-dir /var/lib/cvlan-vrouter --vpp-api-socket /run/vpp/api.sock \
//	    --uplink-interface GigabitEthernet0/8/0 --public-address 198.51.100.7
//	cvlan-vrouter status --state-dir /var/lib/cvlan-vrouter
//
// `up` enrolls with the join token on the first start (the keys are generated here and never leave
// the machine), keeps its identity in the state directory so that restarts need no token, renews its
// certificate, and applies the IPsec configuration the controller streams to VPP. SIGINT or SIGTERM
// stops it cleanly; a vrouter deleted or revoked in the controller exits non-zero.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, nil)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "cvlan-vrouter:", err)
		os.Exit(1)
	}
}

const usage = "usage: cvlan-vrouter up [flags] | cvlan-vrouter status [flags] (-h after either for its flags)"

func run(ctx context.Context, args []string, stdout, stderr io.Writer, h *hooks) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "up":
		return up(ctx, args[1:], stderr, h)
	case "status":
		return showStatus(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprintln(stderr, usage)
		return flag.ErrHelp
	}
	return fmt.Errorf("unknown command %q; %s", args[0], usage)
}
