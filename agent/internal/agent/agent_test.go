package agent

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
	xproxy "golang.org/x/net/proxy"

	"github.com/cloudvlan/cloudvlan/agent/internal/state"
	"github.com/cloudvlan/cloudvlan/agent/internal/testctl"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// gVisor's netstack keeps process-wide workers (timers, the TCP processor pool) alive.
		goleak.IgnoreAnyFunction("gvisor.dev/gvisor/pkg/sync.Gopark"),
		goleak.IgnoreAnyFunction("gvisor.dev/gvisor/pkg/tcpip/transport/tcp.(*processor).start"),
		goleak.IgnoreAnyFunction("gvisor.dev/gvisor/pkg/tcpip/transport/tcp.(*dispatcher).init.func1"),
	)
}

// TestMesh runs three agents (and later a fourth) through a controller and a relay: TCP and ICMP over
// IPv4 and IPv6 between every pair, direct paths, a filter change that cuts one pair and restores it,
// an unrelated change that leaves a working tunnel's handshake alone, DNS, and the controller going
// away while tunnels keep working, including across an agent restart from its state dir.
func TestMesh(t *testing.T) {
	m := newMesh(t, true)
	a := m.add("alpha", nil)
	b := m.add("bravo", nil)
	c := m.add("charlie", nil)
	all := []*Agent{a, b, c}
	for _, x := range all {
		serveEcho(t, x, addr4(x), 7)
		serveEcho(t, x, addr6(x), 7)
	}
	for _, from := range all {
		for _, to := range all {
			if from == to {
				continue
			}
			eventually(t, 20*time.Second, from.Enrollment.Identity.GetName()+" -> "+to.Enrollment.Identity.GetName()+" tcp4", func() error {
				return tcpEcho(from, netip.AddrPortFrom(addr4(to), 7), 2*time.Second)
			})
			eventually(t, 15*time.Second, "tcp6", func() error { return tcpEcho(from, netip.AddrPortFrom(addr6(to), 7), 2*time.Second) })
			eventually(t, 15*time.Second, "ping4", func() error { return ping(from, addr4(to), 2*time.Second) })
			eventually(t, 15*time.Second, "ping6", func() error { return ping(from, addr6(to), 2*time.Second) })
		}
	}
	// Loopback UDP works, so every path ends up direct.
	for _, x := range all {
		waitFor(t, 10*time.Second, "direct paths", func() bool {
			ps := x.Engine.Peers()
			for _, p := range ps {
				if !p.Path.Direct {
					return false
				}
			}
			return len(ps) == 2
		})
	}
	// The public endpoint was learned with STUN against the relay (on loopback it is the socket itself).
	waitFor(t, 10*time.Second, "STUN endpoint", func() bool {
		eps := a.Engine.Endpoints()
		return len(eps) > 0 && eps[0].GetType() == nodev1.EndpointType_ENDPOINT_TYPE_STUN && eps[0].GetAddress() == a.Engine.Bind().LocalAddr().String()
	})
	// Every node acknowledged its latest version with the controller's hash.
	waitFor(t, 10*time.Second, "acks in sync", func() bool { return a.Client.InSync() && b.Client.InSync() && c.Client.InSync() })

	// An unrelated change (a fourth node joins: alpha gets one peer added) leaves alpha-bravo alone.
	hsBefore := handshake(t, a, b)
	d := m.add("delta", nil)
	serveEcho(t, d, addr4(d), 7)
	eventually(t, 20*time.Second, "alpha -> delta", func() error { return tcpEcho(a, netip.AddrPortFrom(addr4(d), 7), 2*time.Second) })
	if err := tcpEcho(a, netip.AddrPortFrom(addr4(b), 7), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if hsAfter := handshake(t, a, b); !hsAfter.Equal(hsBefore) {
		t.Fatalf("alpha-bravo handshake changed from %v to %v after an unrelated change", hsBefore, hsAfter)
	}

	// Policy: alpha refuses bravo. Bravo can no longer reach alpha (within a second or so of the
	// change reaching it); charlie still can, and alpha can still open connections to bravo.
	denyAt := time.Now()
	m.ctl.SetDeny("n2", "n1", true)
	eventually(t, 10*time.Second, "bravo cut from alpha", func() error {
		if err := tcpEcho(b, netip.AddrPortFrom(addr4(a), 7), 700*time.Millisecond); err == nil {
			return errString("bravo still reaches alpha")
		}
		return nil
	})
	t.Logf("deny observed %v after the policy change (including one 700 ms probe)", time.Since(denyAt).Round(time.Millisecond))
	if err := ping(b, addr4(a), time.Second); err == nil {
		t.Fatal("bravo's ping reached alpha after the deny")
	}
	if err := tcpEcho(c, netip.AddrPortFrom(addr4(a), 7), 5*time.Second); err != nil {
		t.Fatalf("charlie -> alpha after an unrelated deny: %v", err)
	}
	if err := tcpEcho(a, netip.AddrPortFrom(addr4(b), 7), 5*time.Second); err != nil {
		t.Fatalf("alpha -> bravo (alpha's own flow) after the deny: %v", err)
	}
	m.ctl.SetDeny("n2", "n1", false)
	eventually(t, 10*time.Second, "bravo restored", func() error { return tcpEcho(b, netip.AddrPortFrom(addr4(a), 7), 2*time.Second) })

	// DNS inside the netstack, on alpha's own mesh address.
	dnsAt := netip.AddrPortFrom(addr4(a), 53)
	if got := lookup(t, a, dnsAt, "bravo."+testctl.Domain, dns.TypeA); got.Rcode != dns.RcodeSuccess || len(got.Answer) != 1 || got.Answer[0].(*dns.A).A.String() != addr4(b).String() {
		t.Fatalf("bravo A: %v", got)
	}
	if got := lookup(t, a, dnsAt, "Charlie."+testctl.Domain, dns.TypeAAAA); len(got.Answer) != 1 || got.Answer[0].(*dns.AAAA).AAAA.String() != addr6(c).String() {
		t.Fatalf("charlie AAAA: %v", got)
	}
	if got := lookup(t, a, dnsAt, "db."+testctl.Domain, dns.TypeA); len(got.Answer) != 1 || got.Answer[0].(*dns.A).A.String() != "100.64.9.9" {
		t.Fatalf("extra record: %v", got)
	}
	if got := lookup(t, a, dnsAt, "nobody."+testctl.Domain, dns.TypeA); got.Rcode != dns.RcodeNameError {
		t.Fatalf("unknown mesh name: rcode %d, want NXDOMAIN", got.Rcode)
	}
	if got := lookup(t, a, dnsAt, "example.com", dns.TypeA); got.Rcode != dns.RcodeRefused {
		t.Fatalf("outside name without resolvers: rcode %d, want REFUSED", got.Rcode)
	}

	// The controller goes away: tunnels keep working.
	m.ctl.Stop()
	time.Sleep(time.Second)
	for _, p := range [][2]*Agent{{a, b}, {b, c}, {c, a}} {
		if err := tcpEcho(p[0], netip.AddrPortFrom(addr4(p[1]), 7), 5*time.Second); err != nil {
			t.Fatalf("without controller: %v", err)
		}
	}
	// And an agent restarted from its state dir (same port) gets its tunnels back from the cached map.
	port := a.Engine.Bind().LocalAddr().Port()
	a.Close()
	o := m.options(m.dirs[0], "alpha", nil)
	o.ListenPort = port
	a2, err := Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a2.Close)
	serveEcho(t, a2, addr4(a2), 7)
	eventually(t, 20*time.Second, "restarted alpha -> bravo without controller", func() error {
		return tcpEcho(a2, netip.AddrPortFrom(addr4(b), 7), 2*time.Second)
	})
	eventually(t, 20*time.Second, "bravo -> restarted alpha", func() error { return tcpEcho(b, netip.AddrPortFrom(addr4(a2), 7), 2*time.Second) })
}

type errString string

func (e errString) Error() string { return string(e) }

func handshake(t *testing.T, from, to *Agent) time.Time {
	t.Helper()
	for _, p := range from.Engine.Peers() {
		if p.NodeID == to.Enrollment.Identity.GetNodeId() {
			if p.Stats.LastHandshake.IsZero() {
				t.Fatalf("no handshake between %s and %s", from.Enrollment.Identity.GetName(), to.Enrollment.Identity.GetName())
			}
			return p.Stats.LastHandshake
		}
	}
	t.Fatalf("%s has no peer %s", from.Enrollment.Identity.GetName(), to.Enrollment.Identity.GetNodeId())
	return time.Time{}
}

func lookup(t *testing.T, from *Agent, server netip.AddrPort, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c, err := from.Engine.Net().DialUDPAddrPort(netip.AddrPort{}, server)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	q := new(dns.Msg)
	q.SetQuestion(dns.Fqdn(name), qtype)
	resp, _, err := (&dns.Client{}).ExchangeWithConn(q, &dns.Conn{Conn: c})
	if err != nil {
		t.Fatalf("query %s: %v", name, err)
	}
	return resp
}

// TestRelayFallbackAndUpgrade blocks direct UDP between two agents: traffic flows through the real
// relay; unblocked, the path upgrades to direct; blocked again mid-stream, it falls back to the relay.
func TestRelayFallbackAndUpgrade(t *testing.T) {
	m := newMesh(t, true)
	blk := &blocker{}
	blk.set(true)
	a := m.add("alpha", blk.drop)
	b := m.add("bravo", nil)
	serveEcho(t, b, addr4(b), 7)
	serveEcho(t, a, addr4(a), 7)

	// Once both know each other and hold a relay connection, the very first exchange must go through
	// the relay: WireGuard retries a lost handshake only after 5 s, so finishing well before that shows
	// the first handshake was carried by the relay rather than lost on the blocked direct path.
	waitFor(t, 20*time.Second, "maps and relay connections", func() bool {
		return a.Engine.RelayConnected() && b.Engine.RelayConnected() && len(a.Engine.Peers()) == 1 && len(b.Engine.Peers()) == 1
	})
	start := time.Now()
	if err := tcpEcho(a, netip.AddrPortFrom(addr4(b), 7), 10*time.Second); err != nil {
		t.Fatalf("alpha -> bravo through the relay: %v", err)
	}
	if took := time.Since(start); took > 4500*time.Millisecond {
		t.Fatalf("first relayed exchange took %v: the first handshake was not carried by the relay", took)
	} else {
		t.Logf("first relayed exchange took %v", took.Round(time.Millisecond))
	}
	if p := peerPath(a, b); p.Direct || !p.Relayed {
		t.Fatalf("alpha's path to bravo = %+v, want relayed", p)
	}
	if err := tcpEcho(b, netip.AddrPortFrom(addr4(a), 7), 5*time.Second); err != nil {
		t.Fatalf("bravo -> alpha through the relay: %v", err)
	}

	// Unblock: a probe succeeds and the path upgrades to direct.
	blk.set(false)
	waitFor(t, 15*time.Second, "upgrade to direct", func() bool { return peerPath(a, b).Direct && peerPath(b, a).Direct })
	if err := tcpEcho(a, netip.AddrPortFrom(addr4(b), 7), 5*time.Second); err != nil {
		t.Fatalf("after upgrade: %v", err)
	}

	// Block again: the direct path is given up and the relay carries the traffic.
	blk.set(true)
	waitFor(t, 20*time.Second, "fall back to the relay", func() bool { return !peerPath(a, b).Direct })
	eventually(t, 20*time.Second, "alpha -> bravo after fallback", func() error { return tcpEcho(a, netip.AddrPortFrom(addr4(b), 7), 2*time.Second) })
}

func peerPath(from, to *Agent) (p struct{ Direct, Relayed bool }) {
	for _, x := range from.Engine.Peers() {
		if x.NodeID == to.Enrollment.Identity.GetNodeId() {
			return struct{ Direct, Relayed bool }{x.Path.Direct, x.Path.Relayed}
		}
	}
	return p
}

func TestStateDirPermissions(t *testing.T) {
	m := newMesh(t, false)
	a := m.add("alpha", nil)
	waitFor(t, 10*time.Second, "first map", func() bool { return a.Client.Version() > 0 })
	waitFor(t, 10*time.Second, "status file", func() bool {
		_, err := os.Stat(filepath.Join(m.dirs[0], StatusFile))
		return err == nil
	})
	fi, err := os.Stat(m.dirs[0])
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("state dir mode %v", fi.Mode().Perm())
	}
	ents, _ := os.ReadDir(m.dirs[0])
	for _, e := range ents {
		info, _ := e.Info()
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", e.Name(), info.Mode().Perm())
		}
	}
	d, _ := state.Open(m.dirs[0])
	if nm, err := d.LoadNetworkMap(); err != nil || nm.GetVersion() == 0 {
		t.Fatalf("cached map %v %v", nm, err)
	}
	_ = net.IPv4len
}

// TestProxies reaches a peer's services through the SOCKS5 and HTTP proxies of a netstack agent, by
// mesh name and by address.
func TestProxies(t *testing.T) {
	m := newMesh(t, false)
	dir := t.TempDir()
	o := m.options(dir, "alpha", nil)
	o.SOCKS5Addr, o.HTTPProxyAddr = "127.0.0.1:0", "127.0.0.1:0"
	a, err := Start(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	b := m.add("bravo", nil)
	serveEcho(t, b, addr4(b), 7)
	ln, err := b.Engine.Net().ListenTCPAddrPort(netip.AddrPortFrom(addr4(b), 80))
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "hello from bravo %s", r.URL.Path) })}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	eventually(t, 20*time.Second, "alpha -> bravo", func() error { return tcpEcho(a, netip.AddrPortFrom(addr4(b), 7), 2*time.Second) })

	// SOCKS5 with a mesh name (resolved by the agent's resolver).
	sd, err := xproxy.SOCKS5("tcp", a.SOCKS5.String(), nil, xproxy.Direct)
	if err != nil {
		t.Fatal(err)
	}
	c, err := sd.Dial("tcp", "bravo."+testctl.Domain+":7")
	if err != nil {
		t.Fatalf("socks5 dial: %v", err)
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte("via socks")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 9)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "via socks" {
		t.Fatalf("socks5 echo %q %v", got, err)
	}
	c.Close()
	if _, err := sd.Dial("tcp", "nobody."+testctl.Domain+":7"); err == nil {
		t.Fatal("socks5 reached an unknown mesh name")
	}

	// HTTP: absolute-URI GET and CONNECT through the HTTP proxy.
	pu, _ := url.Parse("http://" + a.HTTPProxy.String())
	hc := &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(pu)}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://bravo." + testctl.Domain + "/x")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "hello from bravo /x" {
		t.Fatalf("HTTP via proxy: %q", body)
	}
	pc, err := net.Dial("tcp", a.HTTPProxy.String())
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	_ = pc.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(pc, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", netip.AddrPortFrom(addr4(b), 7), netip.AddrPortFrom(addr4(b), 7))
	br := bufio.NewReader(pc)
	cr, err := http.ReadResponse(br, nil)
	if err != nil || cr.StatusCode != 200 {
		t.Fatalf("CONNECT: %v %v", cr, err)
	}
	pc.Write([]byte("via connect"))
	got = make([]byte, 11)
	if _, err := io.ReadFull(br, got); err != nil || string(got) != "via connect" {
		t.Fatalf("CONNECT echo %q %v", got, err)
	}
}
