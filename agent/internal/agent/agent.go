// Package agent assembles a node: it enrolls (or loads its state), starts the data plane, applies the
// cached network map at once (so tunnels come back without the controller), and keeps the control
// stream. cmd/cvlan-agent and the end-to-end tests both run nodes through it.
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/cloudvlan/cloudvlan/agent/internal/controlclient"
	"github.com/cloudvlan/cloudvlan/agent/internal/engine"
	"github.com/cloudvlan/cloudvlan/agent/internal/proxy"
	"github.com/cloudvlan/cloudvlan/agent/internal/state"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// Options configure a node.
type Options struct {
	// StateDir holds keys, certificates and the last map.
	StateDir string
	// Controller is the controller's node port (host:port); empty uses the enrolled control endpoints.
	Controller string
	// Token is the join token, needed only for the first start.
	Token string
	// ControllerCA verifies the controller during enrollment (nil: system roots).
	ControllerCA *x509.CertPool
	// Hostname and Name describe the node at enrollment.
	Hostname, Name string
	// Netstack selects userspace networking; TUNName names the TUN device otherwise.
	Netstack bool
	TUNName  string
	// ListenIP and ListenPort place the WireGuard socket.
	ListenIP   netip.Addr
	ListenPort uint16
	// DNSListen is the resolver's address in TUN mode.
	DNSListen string
	// DropDirect, DirectTimeout and ProbeInterval are passed to the transport (tests).
	DropDirect                   func(netip.AddrPort) bool
	DirectTimeout, ProbeInterval time.Duration
	// SOCKS5Addr and HTTPProxyAddr, when set in netstack mode, serve proxies into the mesh (loopback).
	SOCKS5Addr, HTTPProxyAddr string
	// MinBackoff and MaxBackoff bound reconnects to the controller.
	MinBackoff, MaxBackoff time.Duration
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

// Agent is a running node.
type Agent struct {
	Engine     *engine.Engine
	Client     *controlclient.Client
	Enrollment *state.Enrollment
	dir        *state.Dir
	log        *slog.Logger
	cancel     context.CancelFunc
	wg         sync.WaitGroup
	// SOCKS5 and HTTPProxy are the proxies' listen addresses (nil when not serving).
	SOCKS5, HTTPProxy net.Addr
}

// netDialer adapts the netstack to the proxies.
type netDialer struct{ n *netstack.Net }

func (d netDialer) DialContextTCPAddrPort(ctx context.Context, ap netip.AddrPort) (net.Conn, error) {
	return d.n.DialContextTCPAddrPort(ctx, ap)
}

// startProxies listens on the configured addresses and serves until ctx ends.
func (a *Agent) startProxies(ctx context.Context, o Options) error {
	if o.SOCKS5Addr == "" && o.HTTPProxyAddr == "" {
		return nil
	}
	if a.Engine.Net() == nil {
		return errors.New("agent: the SOCKS5 and HTTP proxies need netstack mode (in TUN mode the host reaches the mesh directly)")
	}
	p := &proxy.Proxy{Dialer: netDialer{a.Engine.Net()}, Resolver: a.Engine.DNS(), Log: a.log.With("component", "proxy")}
	for _, l := range []struct {
		addr  string
		dst   *net.Addr
		serve func(context.Context, net.Listener) error
	}{{o.SOCKS5Addr, &a.SOCKS5, p.ServeSOCKS5}, {o.HTTPProxyAddr, &a.HTTPProxy, p.ServeHTTP}} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("agent: proxy listen %s: %w", l.addr, err)
		}
		*l.dst = ln.Addr()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := l.serve(ctx, ln); err != nil {
				a.log.Error("proxy", "addr", ln.Addr().String(), "err", err)
			}
		}()
		a.log.Info("proxy listening", "addr", ln.Addr().String())
	}
	return nil
}

// Start brings the node up. It returns once the data plane runs; the control stream connects in the
// background.
func Start(ctx context.Context, o Options) (*Agent, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	dir, err := state.Open(o.StateDir)
	if err != nil {
		return nil, err
	}
	e, err := dir.LoadEnrollment()
	if errors.Is(err, state.ErrNotEnrolled) {
		if o.Token == "" {
			return nil, errors.New("agent: not enrolled yet: a join token (--token) is needed")
		}
		if o.Controller == "" {
			return nil, errors.New("agent: not enrolled yet: the controller address is needed")
		}
		host := o.Hostname
		if host == "" {
			host, _ = os.Hostname()
		}
		e, err = controlclient.Enroll(ctx, controlclient.EnrollOptions{
			Target: o.Controller, Token: o.Token, RootCAs: o.ControllerCA, Hostname: host, Name: o.Name,
			OS: runtime.GOOS + "/" + runtime.GOARCH, AgentVersion: engine.Version,
		})
		if err != nil {
			return nil, err
		}
		if err := dir.SaveEnrollment(e); err != nil {
			return nil, err
		}
		o.Logger.Info("enrolled", "node", e.Identity.GetNodeId(), "tenant", e.Identity.GetTenantId(), "ipv4", e.Identity.GetIpv4Address())
	} else if err != nil {
		return nil, err
	}
	log := o.Logger.With("node", e.Identity.GetNodeId())
	target := o.Controller
	if target == "" && len(e.ControlEndpoints) > 0 {
		target = e.ControlEndpoints[0]
	}
	if target == "" {
		return nil, errors.New("agent: no controller address (flag or enrolled control endpoints)")
	}
	pub, err := controlclient.WireGuardPublicKey(e.WireGuardKey)
	if err != nil {
		return nil, err
	}
	cached, err := dir.LoadNetworkMap()
	if err != nil {
		log.Warn("ignoring cached network map", "err", err)
		cached = nil
	}
	addrs := overlayAddresses(e.Identity, cached)

	a := &Agent{Enrollment: e, dir: dir, log: log}
	root, err := x509.ParseCertificate(e.RootCA)
	if err != nil {
		return nil, fmt.Errorf("agent: parse root CA: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	// The relay sees our current certificate through the client (renewals included).
	relayTLS := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return a.Client.Certificate(), nil }}
	eng, err := engine.New(engine.Config{
		PrivateKey: e.WireGuardKey, PublicKey: pub, Addresses: addrs, Netstack: o.Netstack, TUNName: o.TUNName,
		ListenIP: o.ListenIP, ListenPort: o.ListenPort, RelayTLS: relayTLS, DNSListen: o.DNSListen,
		DropDirect: o.DropDirect, DirectTimeout: o.DirectTimeout, ProbeInterval: o.ProbeInterval, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	a.Engine = eng
	a.Client, err = controlclient.New(controlclient.Config{
		Target: target, Enrollment: e, Store: dir, Handler: eng, InitialMap: cached, Logger: log,
		MinBackoff: o.MinBackoff, MaxBackoff: o.MaxBackoff,
	})
	if err != nil {
		eng.Close()
		return nil, err
	}
	eng.SetHolePuncher(a.Client, a.Client.TriggerReport)
	if cached != nil {
		// Tunnels come back from the cache before (and without) the controller.
		if err := eng.ApplyMap(ctx, cached); err != nil {
			log.Warn("apply cached network map", "version", cached.GetVersion(), "err", err)
		} else {
			log.Info("cached network map applied", "version", cached.GetVersion())
		}
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	a.cancel = cancel
	a.wg.Add(2)
	go func() { defer a.wg.Done(); _ = a.Client.Run(runCtx) }()
	go func() { defer a.wg.Done(); a.writeStatusLoop(runCtx) }()
	if err := a.startProxies(runCtx, o); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// Close stops the node and removes its interface.
func (a *Agent) Close() {
	a.cancel()
	a.wg.Wait()
	a.Engine.Close()
	// Removed last: `cvlan-agent down` waits for the pid file to go, and by then the interface is gone.
	_ = os.Remove(filepath.Join(a.dir.Path(), StatusFile))
	_ = os.Remove(filepath.Join(a.dir.Path(), PIDFile))
}

// overlayAddresses takes the node's addresses from the cached map (the newest view) or its identity.
func overlayAddresses(id *nodev1.NodeIdentity, cached *nodev1.NetworkMap) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range cached.GetSelf().GetAddresses() {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, s := range []string{id.GetIpv4Address(), id.GetIpv6Address()} {
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p)
		} else if ad, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(ad, ad.BitLen()))
		}
	}
	return out
}

// StatusFile is the file in the state directory where the running agent writes its status, and
// PIDFile the file holding its process id (for `cvlan-agent down`).
const (
	StatusFile = "status.json"
	PIDFile    = "agent.pid"
)

// Status is what `cvlan-agent status` prints.
type Status struct {
	Time       time.Time    `json:"time"`
	PID        int          `json:"pid"`
	NodeID     string       `json:"node_id"`
	Name       string       `json:"name"`
	Addresses  []string     `json:"addresses"`
	PublicKey  string       `json:"public_key"`
	MapVersion uint64       `json:"map_version"`
	InSync     bool         `json:"in_sync"`
	Endpoints  []string     `json:"endpoints"`
	Peers      []PeerStatus `json:"peers"`
}

// PeerStatus is one peer in Status.
type PeerStatus struct {
	NodeID        string    `json:"node_id"`
	Name          string    `json:"name"`
	FQDN          string    `json:"fqdn"`
	Addresses     []string  `json:"addresses"`
	Path          string    `json:"path"`
	Endpoint      string    `json:"endpoint,omitempty"`
	LatencyMS     float64   `json:"latency_ms,omitempty"`
	LastHandshake time.Time `json:"last_handshake,omitzero"`
	RxBytes       uint64    `json:"rx_bytes"`
	TxBytes       uint64    `json:"tx_bytes"`
}

// Status returns the node's current status.
func (a *Agent) Status() Status {
	pub, _ := controlclient.WireGuardPublicKey(a.Enrollment.WireGuardKey)
	s := Status{Time: time.Now(), PID: os.Getpid(), NodeID: a.Enrollment.Identity.GetNodeId(), Name: a.Enrollment.Identity.GetName(),
		PublicKey: fmt.Sprintf("%x", pub), MapVersion: a.Client.Version(), InSync: a.Client.InSync()}
	for _, p := range a.Engine.Addresses() {
		s.Addresses = append(s.Addresses, p.String())
	}
	for _, ep := range a.Engine.Endpoints() {
		s.Endpoints = append(s.Endpoints, ep.GetAddress())
	}
	for _, p := range a.Engine.Peers() {
		ps := PeerStatus{NodeID: p.NodeID, Name: p.Name, FQDN: p.FQDN, Addresses: p.Addresses, Path: "unknown",
			LastHandshake: p.Stats.LastHandshake, RxBytes: p.Stats.RxBytes, TxBytes: p.Stats.TxBytes,
			LatencyMS: float64(p.Path.Latency.Microseconds()) / 1000}
		switch {
		case p.Path.Direct:
			ps.Path, ps.Endpoint = "direct", p.Path.Endpoint.String()
		case p.Path.Relayed:
			ps.Path = "relayed"
		}
		s.Peers = append(s.Peers, ps)
	}
	return s
}

func (a *Agent) writeStatusLoop(ctx context.Context) {
	_ = a.dir.WriteFile(PIDFile, []byte(strconv.Itoa(os.Getpid())+"\n"))
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		if b, err := json.MarshalIndent(a.Status(), "", "  "); err == nil {
			if err := a.dir.WriteFile(StatusFile, b); err != nil {
				a.log.Debug("write status", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
