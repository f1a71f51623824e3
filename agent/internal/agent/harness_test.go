package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"

	"github.com/cloudvlan/cloudvlan/agent/internal/testctl"
	"github.com/cloudvlan/cloudvlan/agent/internal/testpki"
)

func quietLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("AGENT_TEST_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// mesh is a controller, a relay and agents in netstack mode on loopback.
type mesh struct {
	t      *testing.T
	ca     *testpki.CA
	ctl    *testctl.Controller
	agents []*Agent
	dirs   []string
}

type blocker struct {
	mu      sync.Mutex
	blocked map[netip.AddrPort]bool
	all     bool
}

func (b *blocker) drop(a netip.AddrPort) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.all || b.blocked[a]
}

func (b *blocker) set(all bool) {
	b.mu.Lock()
	b.all = all
	b.mu.Unlock()
}

func newMesh(t *testing.T, withRelay bool) *mesh {
	ca, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	m := &mesh{t: t, ca: ca}
	m.ctl, err = testctl.NewController(ca, "127.0.0.1:0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.ctl.Stop)
	if withRelay {
		rm, stop, err := testctl.StartRelay(ca, quietLogger())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(stop)
		m.ctl.SetRelayMap(rm)
	}
	return m
}

func (m *mesh) options(dir, name string, drop func(netip.AddrPort) bool) Options {
	return Options{StateDir: dir, Controller: m.ctl.Addr(), Token: testctl.Token, ControllerCA: m.ca.Pool(), Name: name,
		Netstack: true, ListenIP: netip.MustParseAddr("127.0.0.1"), DropDirect: drop, Logger: quietLogger(),
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second}
}

func (m *mesh) add(name string, drop func(netip.AddrPort) bool) *Agent {
	dir := m.t.TempDir()
	a, err := Start(m.t.Context(), m.options(dir, name, drop))
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(a.Close)
	m.agents = append(m.agents, a)
	m.dirs = append(m.dirs, dir)
	return a
}

// waitFor polls cond for up to d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func addr4(a *Agent) netip.Addr { return a.Engine.Addresses()[0].Addr() }
func addr6(a *Agent) netip.Addr { return a.Engine.Addresses()[1].Addr() }

// serveEcho runs a TCP echo server on a's overlay address.
func serveEcho(t *testing.T, a *Agent, ip netip.Addr, port uint16) {
	ln, err := a.Engine.Net().ListenTCPAddrPort(netip.AddrPortFrom(ip, port))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
}

// tcpEcho dials from a to ip:port, sends a message and reads it back within d.
func tcpEcho(from *Agent, to netip.AddrPort, d time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	c, err := from.Engine.Net().DialContextTCPAddrPort(ctx, to)
	if err != nil {
		return fmt.Errorf("dial %s: %w", to, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(d))
	msg := []byte(fmt.Sprintf("hello %s at %d", to, time.Now().UnixNano()))
	if _, err := c.Write(msg); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(got) != string(msg) {
		return fmt.Errorf("echo %q, want %q", got, msg)
	}
	return nil
}

// ping sends one ICMP echo from a to ip and waits for the reply within d.
func ping(from *Agent, to netip.Addr, d time.Duration) error {
	c, err := from.Engine.Net().DialPingAddr(netip.Addr{}, to)
	if err != nil {
		return fmt.Errorf("ping socket: %w", err)
	}
	defer c.Close()
	req := icmp.Echo{Seq: 1, Data: []byte("cloudvlan")}
	var typ icmp.Type = ipv4.ICMPTypeEcho
	proto := 1
	if to.Is6() {
		typ, proto = ipv6.ICMPTypeEchoRequest, 58
	}
	b, _ := (&icmp.Message{Type: typ, Body: &req}).Marshal(nil)
	_ = c.SetDeadline(time.Now().Add(d))
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("ping write: %w", err)
	}
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		return fmt.Errorf("ping read: %w", err)
	}
	rep, err := icmp.ParseMessage(proto, buf[:n])
	if err != nil {
		return fmt.Errorf("ping parse: %w", err)
	}
	if e, ok := rep.Body.(*icmp.Echo); !ok || string(e.Data) != "cloudvlan" {
		return fmt.Errorf("ping: unexpected reply %v", rep)
	}
	return nil
}

// eventually retries f until it succeeds or d passes.
func eventually(t *testing.T, d time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	var err error
	for {
		if err = f(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after %v: %v", what, d, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
