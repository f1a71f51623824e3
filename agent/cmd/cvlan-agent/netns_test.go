package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"

	"github.com/cloudvlan/cloudvlan/agent/internal/agent"
	"github.com/cloudvlan/cloudvlan/agent/internal/testctl"
	"github.com/cloudvlan/cloudvlan/agent/internal/testpki"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
)

// helper runs small network programs inside a namespace (the test binary re-executed under
// `ip netns exec`), so the test needs no ping or netcat on the machine.
func helper(mode, arg string) int {
	switch mode {
	case "echo-server":
		ln, err := net.Listen("tcp", arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	case "tcp-echo":
		c, err := net.DialTimeout("tcp", arg, 2*time.Second)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		msg := []byte("through the tunnel")
		if _, err := c.Write(msg); err != nil {
			return 1
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
			fmt.Fprintln(os.Stderr, "echo:", err)
			return 1
		}
		return 0
	case "dns":
		// The agent's resolver in TUN mode, on its default local address.
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "udp", "127.0.0.153:53")
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		addrs, err := r.LookupHost(ctx, arg)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		fmt.Println(strings.Join(addrs, " "))
		return 0
	case "ping":
		pc, err := icmp.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer pc.Close()
		id := os.Getpid() & 0xffff
		b, _ := (&icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: 1, Data: []byte("cvlan")}}).Marshal(nil)
		if _, err := pc.WriteTo(b, &net.IPAddr{IP: net.ParseIP(arg)}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		_ = pc.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil || m.Type != ipv4.ICMPTypeEchoReply || from.String() != arg {
				continue
			}
			if e, ok := m.Body.(*icmp.Echo); ok && e.ID == id {
				return 0
			}
		}
	}
	return 2
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// listenIn creates a TCP listener inside a network namespace: a socket stays in the namespace it was
// created in, so only the creating thread has to switch.
func listenIn(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	err := inNetns(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return err })
	return ln, err
}

// listenUDPIn is listenIn for UDP.
func listenUDPIn(ns, addr string) (*net.UDPConn, error) {
	var pc *net.UDPConn
	err := inNetns(ns, func() error {
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		pc, err = net.ListenUDP("udp", ua)
		return err
	})
	return pc, err
}

// inNetns runs f on a thread switched into the namespace ns.
func inNetns(ns string, f func() error) error {
	type result struct{ err error }
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread is discarded if restoring fails
		orig, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer orig.Close()
		target, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		ferr := f()
		if err := unix.Setns(int(orig.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns back: %w", err)}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{ferr}
	}()
	return (<-ch).err
}

// TestNetNamespaces runs three agents with real TUN devices in three network namespaces joined by a
// bridge in a fourth (where the test controller and the relay listen): TCP and ICMP between every
// pair; with UDP between two of them blocked by nftables their traffic flows through the relay, and
// once unblocked the path upgrades to direct; with the controller gone traffic keeps flowing; `down`
// removes the interface.
func TestNetNamespaces(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces, veth pairs and TUN devices")
	}
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (iproute2, nftables)", tool)
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	p := fmt.Sprintf("cvt%d", os.Getpid())
	hub := p + "h"
	sh(t, "ip", "netns", "add", hub)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", hub).Run() })
	sh(t, "ip", "-n", hub, "link", "add", "br0", "type", "bridge")
	sh(t, "ip", "-n", hub, "addr", "add", "10.77.0.1/24", "dev", "br0")
	sh(t, "ip", "-n", hub, "link", "set", "br0", "up")
	sh(t, "ip", "-n", hub, "link", "set", "lo", "up")
	var nss []string
	for i := 1; i <= 3; i++ {
		ns := fmt.Sprintf("%sn%d", p, i)
		sh(t, "ip", "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
		sh(t, "ip", "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", fmt.Sprintf("v%d", i), "netns", hub)
		sh(t, "ip", "-n", hub, "link", "set", fmt.Sprintf("v%d", i), "master", "br0", "up")
		sh(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.77.0.%d/24", 10+i), "dev", "eth0")
		sh(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		sh(t, "ip", "-n", ns, "link", "set", "lo", "up")
		nss = append(nss, ns)
	}

	ca, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	ctlLn, err := listenIn(hub, "10.77.0.1:8444")
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := testctl.NewControllerOn(ca, ctlLn, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctl.Stop)
	relayLn, err := listenIn(hub, "10.77.0.1:8443")
	if err != nil {
		t.Fatal(err)
	}
	stunPC, err := listenUDPIn(hub, "10.77.0.1:3478")
	if err != nil {
		t.Fatal(err)
	}
	rm, stopRelay, err := testctl.StartRelayOn(ca, nil, relayLn, stunPC)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stopRelay)
	ctl.SetRelayMap(rm)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}

	// UDP between ns1 and ns2 is blocked from the start.
	rules := filepath.Join(t.TempDir(), "block.nft")
	os.WriteFile(rules, []byte(`table inet cvtblock {
  chain out { type filter hook output priority 0; ip daddr 10.77.0.12 meta l4proto udp drop; }
  chain in { type filter hook input priority 0; ip saddr 10.77.0.12 meta l4proto udp drop; }
}
`), 0o600)
	sh(t, "ip", "netns", "exec", nss[0], "nft", "-f", rules)

	bg := func(ns string, env []string, args ...string) (*exec.Cmd, *proctest.Buffer) {
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, os.Args[0]}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		logs := &proctest.Buffer{}
		cmd.Stderr = logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan struct{})
		go func() { _ = cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
		})
		return cmd, logs
	}
	var dirs []string
	var logs []*proctest.Buffer
	for i, ns := range nss {
		dir := filepath.Join(t.TempDir(), "state")
		dirs = append(dirs, dir)
		_, l := bg(ns, []string{"CVLAN_AGENT_RUN_MAIN=1"}, "up", "--controller", "https://10.77.0.1:8444", "--token", testctl.Token,
			"--controller-ca", caFile, "--state-dir", dir, "--name", fmt.Sprintf("node%d", i+1), "--tun", "cvlan0", "--log-level", "debug")
		logs = append(logs, l)
		// Enroll one at a time so node i gets 100.64.0.i.
		waitFile(t, filepath.Join(dir, agent.StatusFile), l)
		bg(ns, []string{"CVLAN_TEST_HELPER=echo-server", "CVLAN_TEST_ARG=0.0.0.0:7"})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, l := range logs {
				t.Logf("agent %d logs (tail):\n%s", i+1, tail(l.String(), 4000))
			}
		}
	})

	reach := func(from int, toIP string) error {
		for _, h := range []struct{ mode, arg string }{{"tcp-echo", toIP + ":7"}, {"ping", toIP}} {
			cmd := exec.Command("ip", "netns", "exec", nss[from], os.Args[0])
			cmd.Env = append(os.Environ(), "CVLAN_TEST_HELPER="+h.mode, "CVLAN_TEST_ARG="+h.arg)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("%s from node%d to %s: %v: %s", h.mode, from+1, h.arg, err, out)
			}
		}
		return nil
	}
	eventuallyNS := func(d time.Duration, what string, f func() error) {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			err := f()
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: %v", what, err)
			}
			time.Sleep(300 * time.Millisecond)
		}
	}
	for from := 0; from < 3; from++ {
		for to := 0; to < 3; to++ {
			if from != to {
				eventuallyNS(30*time.Second, "reach", func() error { return reach(from, fmt.Sprintf("100.64.0.%d", to+1)) })
			}
		}
	}
	dnsCmd := exec.Command("ip", "netns", "exec", nss[0], os.Args[0])
	dnsCmd.Env = append(os.Environ(), "CVLAN_TEST_HELPER=dns", "CVLAN_TEST_ARG=node3."+testctl.Domain)
	if out, err := dnsCmd.Output(); err != nil || !strings.Contains(string(out), "100.64.0.3") {
		t.Fatalf("mesh DNS in TUN mode: %q %v", out, err)
	}
	path := func(dir, peer string) string {
		s, err := readStatus(dir)
		if err != nil {
			return err.Error()
		}
		for _, p := range s.Peers {
			if p.Name == peer {
				return p.Path
			}
		}
		return "absent"
	}
	eventuallyNS(15*time.Second, "node1-node2 relayed", func() error {
		if got := path(dirs[0], "node2"); got != "relayed" {
			return fmt.Errorf("node1's path to node2 is %s", got)
		}
		return nil
	})
	t.Logf("node1 -> node2 relayed while UDP is blocked")
	eventuallyNS(15*time.Second, "node1-node3 direct", func() error {
		if got := path(dirs[0], "node3"); got != "direct" {
			return fmt.Errorf("node1's path to node3 is %s", got)
		}
		return nil
	})

	// Unblock: the path upgrades to direct.
	sh(t, "ip", "netns", "exec", nss[0], "nft", "delete", "table", "inet", "cvtblock")
	eventuallyNS(30*time.Second, "node1-node2 upgraded", func() error {
		if got := path(dirs[0], "node2"); got != "direct" {
			return fmt.Errorf("node1's path to node2 is %s", got)
		}
		return reach(0, "100.64.0.2")
	})

	// The controller goes away: traffic keeps flowing.
	ctl.Stop()
	time.Sleep(time.Second)
	for _, pr := range [][2]int{{0, 1}, {1, 2}, {2, 0}} {
		if err := reach(pr[0], fmt.Sprintf("100.64.0.%d", pr[1]+1)); err != nil {
			t.Fatalf("without the controller: %v", err)
		}
	}

	// `down` stops node1 and its interface disappears.
	var so, se bytes.Buffer
	if err := run(context.Background(), []string{"down", "--state-dir", dirs[0]}, &so, &se); err != nil {
		t.Fatalf("down: %v %s", err, se.String())
	}
	if out, err := exec.Command("ip", "-n", nss[0], "link", "show", "cvlan0").CombinedOutput(); err == nil {
		t.Fatalf("cvlan0 still exists after down: %s", out)
	}
	if st, err := readStatus(dirs[1]); err == nil {
		b, _ := json.MarshalIndent(st.Peers, "", "  ")
		t.Logf("node2 peers at the end: %s", b)
	}
}

func waitFile(t *testing.T, path string, logs *proctest.Buffer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared; logs:\n%s", path, tail(logs.String(), 4000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
