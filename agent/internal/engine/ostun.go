package engine

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"

	"golang.zx2c4.com/wireguard/tun"

	"github.com/cloudvlan/cloudvlan/agent/internal/wg"
)

// osTUN is a kernel TUN interface configured with iproute2. Routes are kept per prefix so that a map
// change only adds and removes what changed.
type osTUN struct {
	name string
	log  *slog.Logger

	mu     sync.Mutex
	routes map[netip.Prefix]bool
}

func createOSTUN(name string, mtu int, addrs []netip.Prefix, log *slog.Logger) (*osTUN, tun.Device, error) {
	if name == "" {
		name = "cvlan0"
	}
	dev, err := tun.CreateTUN(name, mtu)
	if err != nil {
		return nil, nil, fmt.Errorf("engine: create TUN %s (needs root): %w", name, err)
	}
	if real, err := dev.Name(); err == nil {
		name = real
	}
	t := &osTUN{name: name, log: log, routes: map[netip.Prefix]bool{}}
	ctx := context.Background()
	for _, a := range addrs {
		// Host-length address: routes to peers are added per allowed IP, never for the whole pool,
		// so traffic to nodes outside this node's view is not sent into the tunnel.
		host := netip.PrefixFrom(a.Addr(), a.Addr().BitLen())
		if err := ip(ctx, "addr", "replace", host.String(), "dev", name); err != nil {
			dev.Close()
			return nil, nil, err
		}
	}
	if err := ip(ctx, "link", "set", "dev", name, "mtu", fmt.Sprint(mtu), "up"); err != nil {
		dev.Close()
		return nil, nil, err
	}
	return t, dev, nil
}

func ip(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("engine: ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (t *osTUN) setRoutes(ctx context.Context, peers []wg.PeerConfig) error {
	want := map[netip.Prefix]bool{}
	for _, p := range peers {
		for _, a := range p.AllowedIPs {
			want[a] = true
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var firstErr error
	for r := range t.routes {
		if !want[r] {
			if err := ip(ctx, "route", "del", r.String(), "dev", t.name); err != nil && firstErr == nil {
				firstErr = err
			}
			delete(t.routes, r)
		}
	}
	for r := range want {
		if !t.routes[r] {
			if err := ip(ctx, "route", "replace", r.String(), "dev", t.name); err != nil {
				if firstErr == nil {
					firstErr = err
				}
				continue
			}
			t.routes[r] = true
		}
	}
	return firstErr
}

// cleanup removes the interface if it is still there (the device's Close normally does).
func (t *osTUN) cleanup() {
	_ = ip(context.Background(), "link", "del", "dev", t.name)
}
