// Command dpbench measures TCP throughput through the agent's data plane in netstack mode, agent to
// agent over a direct path and through a real relay, beside a plain wireguard-go pair configured by
// hand (stock UDP bind, no filter) on the same machine, and prints the ratios. Everything runs on
// loopback in this one process; each measurement is bounded by --duration.
//
//	go run ./agent/cmd/dpbench [--duration 5s]
package main

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sort"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/cloudvlan/cloudvlan/agent/internal/agent"
	"github.com/cloudvlan/cloudvlan/agent/internal/controlclient"
	"github.com/cloudvlan/cloudvlan/agent/internal/engine"
	"github.com/cloudvlan/cloudvlan/agent/internal/testctl"
	"github.com/cloudvlan/cloudvlan/agent/internal/testpki"
)

func main() {
	dur := flag.Duration("duration", 3*time.Second, "length of each throughput measurement")
	rounds := flag.Int("rounds", 3, "measurements per setup (interleaved); the median is reported")
	flag.Parse()
	if *rounds < 1 || *rounds > 20 || *dur <= 0 || *dur > time.Minute {
		fmt.Fprintln(os.Stderr, "dpbench: --rounds must be 1-20 and --duration at most 1m")
		os.Exit(2)
	}
	if err := run(*dur, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "dpbench:", err)
		os.Exit(1)
	}
}

// measure sends as much as it can from client to a sink on server for d and returns bits per second.
func measure(client *netstack.Net, server *netstack.Net, dst netip.Addr, d time.Duration) (float64, error) {
	ln, err := server.ListenTCPAddrPort(netip.AddrPortFrom(dst, 5201))
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- 0
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(dst, 5201))
	if err != nil {
		return 0, fmt.Errorf("dial: %w", err)
	}
	buf := make([]byte, 64<<10)
	start := time.Now()
	_ = c.SetWriteDeadline(start.Add(d))
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) >= d {
				break
			}
			c.Close()
			return 0, fmt.Errorf("write: %w", err)
		}
	}
	c.Close()
	var n int64
	select {
	case n = <-got:
	case <-time.After(15 * time.Second):
		return 0, errors.New("receiver did not finish")
	}
	el := time.Since(start)
	return float64(n) * 8 / el.Seconds(), nil
}

// plainPair builds two wireguard-go devices on netstack with the stock UDP bind, configured by hand.
func plainPair() (a, b *netstack.Net, bAddr netip.Addr, cleanup func(), err error) {
	var ka, kb [32]byte
	if ka, _, err = controlclient.GenerateWireGuardKey(); err != nil {
		return
	}
	if kb, _, err = controlclient.GenerateWireGuardKey(); err != nil {
		return
	}
	pa, _ := controlclient.WireGuardPublicKey(ka)
	pb, _ := controlclient.WireGuardPublicKey(kb)
	aIP, bIP := netip.MustParseAddr("10.99.0.1"), netip.MustParseAddr("10.99.0.2")
	ta, na, err := netstack.CreateNetTUN([]netip.Addr{aIP}, nil, engine.DefaultMTU)
	if err != nil {
		return
	}
	tb, nb, err := netstack.CreateNetTUN([]netip.Addr{bIP}, nil, engine.DefaultMTU)
	if err != nil {
		return
	}
	quiet := device.NewLogger(device.LogLevelSilent, "")
	da := device.NewDevice(ta, conn.NewDefaultBind(), quiet)
	db := device.NewDevice(tb, conn.NewDefaultBind(), quiet)
	portA, portB := freeUDPPort(), freeUDPPort()
	if err = da.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/32\n",
		hex.EncodeToString(ka[:]), portA, hex.EncodeToString(pb[:]), portB, bIP)); err != nil {
		return
	}
	if err = db.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\npublic_key=%s\nendpoint=127.0.0.1:%d\nallowed_ip=%s/32\n",
		hex.EncodeToString(kb[:]), portB, hex.EncodeToString(pa[:]), portA, aIP)); err != nil {
		return
	}
	if err = da.Up(); err != nil {
		return
	}
	if err = db.Up(); err != nil {
		return
	}
	return na, nb, bIP, func() { da.Close(); db.Close() }, nil
}

func freeUDPPort() int {
	c, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		return 0
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func run(d time.Duration, rounds int) error {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	fmt.Printf("dpbench: TCP throughput in netstack mode on loopback (one process), MTU %d, %d rounds of %v each, median reported\n",
		engine.DefaultMTU, rounds, d)

	na, nb, bIP, stop, err := plainPair()
	if err != nil {
		return fmt.Errorf("plain pair: %w", err)
	}
	defer stop()
	ca, err := testpki.New()
	if err != nil {
		return err
	}
	ctl, err := testctl.NewController(ca, "127.0.0.1:0", nil)
	if err != nil {
		return err
	}
	defer ctl.Stop()
	rm, stopRelay, err := testctl.StartRelay(ca, log)
	if err != nil {
		return err
	}
	defer stopRelay()
	ctl.SetRelayMap(rm)
	direct, err := agentPair(ca, ctl, "direct", nil, log)
	if err != nil {
		return fmt.Errorf("agents direct: %w", err)
	}
	defer direct.close()
	relayed, err := agentPair(ca, ctl, "relayed", func(netip.AddrPort) bool { return true }, log)
	if err != nil {
		return fmt.Errorf("agents relayed: %w", err)
	}
	defer relayed.close()

	type setup struct {
		name     string
		from, to *netstack.Net
		dst      netip.Addr
		rates    []float64
	}
	setups := []*setup{
		{name: "plain wireguard-go pair (stock bind)", from: na, to: nb, dst: bIP},
		{name: "cvlan-agent pair, direct", from: direct.a.Engine.Net(), to: direct.b.Engine.Net(), dst: direct.dst},
		{name: "cvlan-agent pair, relayed", from: relayed.a.Engine.Net(), to: relayed.b.Engine.Net(), dst: relayed.dst},
	}
	// Interleave the rounds so that noise from other work on the machine hits every setup alike.
	for r := 0; r < rounds; r++ {
		for _, s := range setups {
			rate, err := measure(s.from, s.to, s.dst, d)
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			s.rates = append(s.rates, rate)
		}
	}
	med := map[string]float64{}
	for _, s := range setups {
		m := median(s.rates)
		med[s.name] = m
		fmt.Printf("  %-38s median %8.1f Mbit/s  (rounds:", s.name, m/1e6)
		for _, r := range s.rates {
			fmt.Printf(" %.1f", r/1e6)
		}
		fmt.Println(")")
	}
	plain := med[setups[0].name]
	fmt.Printf("ratios: agent direct / plain = %.2f, agent relayed / plain = %.2f, relayed / direct = %.2f\n",
		med[setups[1].name]/plain, med[setups[2].name]/plain, med[setups[2].name]/med[setups[1].name])
	return nil
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

type pair struct {
	a, b *agent.Agent
	dst  netip.Addr
	dirs []string
}

func (p *pair) close() {
	p.a.Close()
	p.b.Close()
	for _, d := range p.dirs {
		os.RemoveAll(d)
	}
}

func agentPair(ca *testpki.CA, ctl *testctl.Controller, name string, drop func(netip.AddrPort) bool, log *slog.Logger) (_ *pair, err error) {
	ctx := context.Background()
	var agents []*agent.Agent
	var dirs []string
	defer func() {
		if err != nil {
			for _, a := range agents {
				a.Close()
			}
			for _, d := range dirs {
				os.RemoveAll(d)
			}
		}
	}()
	for i, n := range []string{name + "-a", name + "-b"} {
		dir, err := os.MkdirTemp("", "dpbench-*")
		if err != nil {
			return nil, err
		}
		dirs = append(dirs, dir)
		o := agent.Options{StateDir: dir, Controller: ctl.Addr(), Token: testctl.Token, ControllerCA: ca.Pool(), Name: n, Netstack: true,
			ListenIP: netip.MustParseAddr("127.0.0.1"), Logger: log}
		if i == 0 {
			o.DropDirect = drop
		}
		a, err := agent.Start(ctx, o)
		if err != nil {
			return nil, err
		}
		agents = append(agents, a)
	}
	a, b := agents[0], agents[1]
	bIP := b.Engine.Addresses()[0].Addr()
	// Wait until a connection works (maps, endpoints, relay connections).
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ln, err := b.Engine.Net().ListenTCPAddrPort(netip.AddrPortFrom(bIP, 5200))
		if err == nil {
			go func() {
				if c, err := ln.Accept(); err == nil {
					c.Close()
				}
			}()
			c, derr := a.Engine.Net().DialContextTCPAddrPort(cctx, netip.AddrPortFrom(bIP, 5200))
			ln.Close()
			if derr == nil {
				c.Close()
				cancel()
				break
			}
		}
		cancel()
		if time.Now().After(deadline) {
			return nil, errors.New("agents never connected")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, p := range a.Engine.Peers() {
		want := name == "direct"
		if p.Path.Direct != want {
			return nil, fmt.Errorf("path is %+v, wanted direct=%v", p.Path, want)
		}
	}
	return &pair{a: a, b: b, dst: bIP, dirs: dirs}, nil
}
