// Package engine is the agent's data plane: a TUN device (or gVisor's netstack in userspace) wrapped by
// the packet filter, wireguard-go on the agent's Bind, the relay client for fallback, and the mesh DNS
// resolver. It applies network maps from the control client and reports status back.
package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime"
	"sort"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/tun"
	"golang.zx2c4.com/wireguard/tun/netstack"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/agent/internal/bind"
	"github.com/cloudvlan/cloudvlan/agent/internal/dns"
	"github.com/cloudvlan/cloudvlan/agent/internal/filter"
	"github.com/cloudvlan/cloudvlan/agent/internal/wg"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayclient "github.com/cloudvlan/cloudvlan/relay/client"
)

// Version is the agent version reported to the controller.
const Version = "0.1.0"

// DefaultMTU leaves room for WireGuard's 80 bytes of overhead on a 1500-byte path... and for the relay's
// TLS framing, which carries the same packets.
const DefaultMTU = 1280

// HolePuncher asks the controller to make a peer punch towards this node.
type HolePuncher interface {
	RequestHolePunch(ctx context.Context, peerNodeID string) (bool, error)
}

// Config configures an Engine.
type Config struct {
	// PrivateKey is the node's WireGuard private key.
	PrivateKey [32]byte
	// PublicKey is its public key.
	PublicKey [32]byte
	// Addresses are the node's overlay addresses (from its identity; the map may update them in TUN mode).
	Addresses []netip.Prefix
	// Netstack selects userspace networking instead of a TUN device.
	Netstack bool
	// TUNName names the TUN device (TUN mode).
	TUNName string
	// MTU of the tunnel (default DefaultMTU).
	MTU int
	// ListenIP binds the WireGuard UDP socket (invalid: all addresses); ListenPort 0 picks one.
	ListenIP   netip.Addr
	ListenPort uint16
	// RelayTLS is the TLS configuration for relays: node certificate and root CA.
	RelayTLS *tls.Config
	// DNSListen is where the resolver listens in TUN mode (default 127.0.0.53:53 is left to the OS; empty
	// disables it). In netstack mode the resolver listens on the node's first overlay address, port 53.
	DNSListen string
	// DropDirect is a test hook passed to the Bind (simulated firewall).
	DropDirect func(netip.AddrPort) bool
	// DirectTimeout and ProbeInterval tune the Bind (zero: its defaults).
	DirectTimeout, ProbeInterval time.Duration
	// Logger logs; nil uses slog.Default().
	Logger *slog.Logger
}

// Engine is a running data plane.
type Engine struct {
	cfg    Config
	log    *slog.Logger
	bind   *bind.Bind
	filter *filter.Filter
	dev    *wg.Device
	tnet   *netstack.Net
	osTUN  *osTUN
	dns    *dns.Server

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	peersByKey  map[[32]byte]*nodev1.Peer
	relayURL    string
	relayID     string
	relay       *relayclient.Client
	relayWG     sync.WaitGroup
	stunAddrs   []string
	publicEP    netip.AddrPort
	puncher     HolePuncher
	punchedAt   map[[32]byte]time.Time
	mapVersion  uint64
	onChange    func()
	lastApplied *nodev1.NetworkMap
}

// New creates the device and brings it up with no peers.
func New(cfg Config) (*Engine, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MTU <= 0 {
		cfg.MTU = DefaultMTU
	}
	if len(cfg.Addresses) == 0 {
		return nil, errors.New("engine: the node has no overlay address")
	}
	e := &Engine{cfg: cfg, log: cfg.Logger, filter: filter.New(), peersByKey: map[[32]byte]*nodev1.Peer{}, punchedAt: map[[32]byte]time.Time{}}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	var (
		dev tun.Device
		err error
	)
	if cfg.Netstack {
		addrs := make([]netip.Addr, len(cfg.Addresses))
		for i, p := range cfg.Addresses {
			addrs[i] = p.Addr()
		}
		dev, e.tnet, err = netstack.CreateNetTUN(addrs, nil, cfg.MTU)
		if err != nil {
			return nil, fmt.Errorf("engine: create netstack: %w", err)
		}
	} else {
		e.osTUN, dev, err = createOSTUN(cfg.TUNName, cfg.MTU, cfg.Addresses, cfg.Logger)
		if err != nil {
			return nil, err
		}
	}
	e.bind = bind.New(bind.Config{
		Self: cfg.PublicKey, ListenIP: cfg.ListenIP, Logger: cfg.Logger, DropDirect: cfg.DropDirect,
		DirectTimeout: cfg.DirectTimeout, ProbeInterval: cfg.ProbeInterval,
		OnPathChange: func([32]byte, bind.Path) { e.changed() },
	})
	e.dev, err = wg.New(filter.Wrap(dev, e.filter), e.bind, cfg.PrivateKey, cfg.Logger)
	if err != nil {
		return nil, err
	}
	if cfg.ListenPort != 0 {
		if err := e.setListenPort(cfg.ListenPort); err != nil {
			e.dev.Close()
			return nil, err
		}
	}
	if err := e.startDNS(); err != nil {
		e.dev.Close()
		return nil, err
	}
	e.wg.Add(1)
	go func() { defer e.wg.Done(); e.maintain() }()
	return e, nil
}

// Net returns the userspace network stack (nil in TUN mode): dial and listen inside the mesh with it.
func (e *Engine) Net() *netstack.Net { return e.tnet }

// Bind returns the transport (for its paths).
func (e *Engine) Bind() *bind.Bind { return e.bind }

// Filter returns the packet filter.
func (e *Engine) Filter() *filter.Filter { return e.filter }

// Device returns the WireGuard device.
func (e *Engine) Device() *wg.Device { return e.dev }

// SetHolePuncher sets who to ask for hole punches (the control client) and a callback for changes that
// deserve a status report soon.
func (e *Engine) SetHolePuncher(h HolePuncher, onChange func()) {
	e.mu.Lock()
	e.puncher, e.onChange = h, onChange
	e.mu.Unlock()
}

func (e *Engine) changed() {
	e.mu.Lock()
	f := e.onChange
	e.mu.Unlock()
	if f != nil {
		f()
	}
}

// Close stops everything.
func (e *Engine) Close() {
	e.cancel()
	e.wg.Wait()
	e.mu.Lock()
	rc := e.relay
	e.relay = nil
	e.mu.Unlock()
	if rc != nil {
		e.bind.SetRelay(nil)
		_ = rc.Close()
		e.relayWG.Wait()
	}
	if e.dns != nil {
		e.dns.Close()
	}
	e.dev.Close()
	if e.osTUN != nil {
		e.osTUN.cleanup()
	}
}

// ApplyMap makes the data plane match m. It implements controlclient.Handler.
func (e *Engine) ApplyMap(ctx context.Context, m *nodev1.NetworkMap) error {
	rules, err := filter.Compile(m.GetPacketFilter())
	if err != nil {
		return err
	}
	var (
		wgPeers   []wg.PeerConfig
		bindPeers []bind.PeerInfo
		byKey     = map[[32]byte]*nodev1.Peer{}
		errs      []error
	)
	for _, p := range m.GetPeers() {
		if len(p.GetWireguardPublicKey()) != 32 {
			errs = append(errs, fmt.Errorf("peer %s: public key has %d bytes", p.GetNodeId(), len(p.GetWireguardPublicKey())))
			continue
		}
		key := [32]byte(p.GetWireguardPublicKey())
		pc := wg.PeerConfig{Key: key, Keepalive: p.GetPersistentKeepalive().AsDuration()}
		for _, s := range p.GetAllowedIps() {
			pfx, err := netip.ParsePrefix(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("peer %s: allowed IP %q: %w", p.GetNodeId(), s, err))
				continue
			}
			pc.AllowedIPs = append(pc.AllowedIPs, pfx.Masked())
		}
		bi := bind.PeerInfo{Key: key, NodeID: p.GetNodeId(), HomeRelayID: p.GetHomeRelayId()}
		for _, s := range p.GetEndpoints() {
			ap, err := netip.ParseAddrPort(s)
			if err != nil {
				e.log.Warn("ignoring peer endpoint", "peer", p.GetNodeId(), "endpoint", s, "err", err)
				continue
			}
			bi.Endpoints = append(bi.Endpoints, ap)
		}
		wgPeers = append(wgPeers, pc)
		bindPeers = append(bindPeers, bi)
		byKey[key] = p
	}
	// The Bind learns endpoints before WireGuard may send to a new peer; the filter changes before
	// the peers, so a removed permission never outlives its rule.
	e.filter.SetRules(rules)
	e.bind.SetPeers(bindPeers)
	added, changed, removed, err := e.dev.SetPeers(wgPeers)
	if err != nil {
		return err
	}
	if e.osTUN != nil {
		if err := e.osTUN.setRoutes(ctx, wgPeers); err != nil {
			errs = append(errs, err)
		}
	}
	e.mu.Lock()
	e.peersByKey = byKey
	e.mapVersion = m.GetVersion()
	e.lastApplied = m
	e.mu.Unlock()
	e.setRelayMap(m.GetRelayMap())
	if e.dns != nil {
		e.dns.SetConfig(dnsConfig(m))
	}
	e.log.Info("network map applied", "version", m.GetVersion(), "peers", len(wgPeers), "added", added, "changed", changed, "removed", removed, "rules", len(rules))
	return errors.Join(errs...)
}

// HolePunch implements controlclient.Handler.
func (e *Engine) HolePunch(hp *nodev1.HolePunch) {
	if len(hp.GetWireguardPublicKey()) != 32 {
		return
	}
	var eps []netip.AddrPort
	for _, s := range hp.GetEndpoints() {
		if ap, err := netip.ParseAddrPort(s); err == nil {
			eps = append(eps, ap)
		}
	}
	e.bind.HolePunch([32]byte(hp.GetWireguardPublicKey()), eps)
}

// PeerStatus is one peer as `cvlan-agent status` shows it.
type PeerStatus struct {
	NodeID, Name, FQDN string
	Key                [32]byte
	Addresses          []string
	Path               bind.Path
	Stats              wg.PeerStats
}

// Peers returns every peer's status, sorted by name.
func (e *Engine) Peers() []PeerStatus {
	paths := e.bind.Paths()
	stats, err := e.dev.Stats()
	if err != nil {
		e.log.Warn("read device stats", "err", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]PeerStatus, 0, len(e.peersByKey))
	for k, p := range e.peersByKey {
		out = append(out, PeerStatus{NodeID: p.GetNodeId(), Name: p.GetName(), FQDN: p.GetFqdn(), Key: k, Addresses: p.GetAddresses(), Path: paths[k], Stats: stats[k]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name+out[i].NodeID < out[j].Name+out[j].NodeID })
	return out
}

// Endpoints returns the node's UDP endpoints, best first.
func (e *Engine) Endpoints() []*nodev1.Endpoint {
	var out []*nodev1.Endpoint
	e.mu.Lock()
	pub := e.publicEP
	e.mu.Unlock()
	if pub.IsValid() {
		out = append(out, &nodev1.Endpoint{Address: pub.String(), Type: nodev1.EndpointType_ENDPOINT_TYPE_STUN})
	}
	for _, ap := range localEndpoints(e.bind.LocalAddr(), e.cfg.Addresses) {
		if ap != pub {
			out = append(out, &nodev1.Endpoint{Address: ap.String(), Type: nodev1.EndpointType_ENDPOINT_TYPE_LOCAL})
		}
	}
	if len(out) > 32 {
		out = out[:32]
	}
	return out
}

// Status implements controlclient.Handler.
func (e *Engine) Status() *nodev1.ReportStatusRequest {
	r := &nodev1.ReportStatusRequest{Endpoints: e.Endpoints(), AgentVersion: Version, Os: runtime.GOOS + "/" + runtime.GOARCH}
	e.mu.Lock()
	r.HomeRelayId = e.relayID
	e.mu.Unlock()
	for _, p := range e.Peers() {
		ps := &nodev1.PeerStatus{PeerNodeId: p.NodeID, RxBytes: p.Stats.RxBytes, TxBytes: p.Stats.TxBytes}
		switch {
		case p.Path.Direct:
			ps.Path, ps.Endpoint = nodev1.PathType_PATH_TYPE_DIRECT, p.Path.Endpoint.String()
		case p.Path.Relayed:
			ps.Path, ps.RelayId = nodev1.PathType_PATH_TYPE_RELAYED, r.HomeRelayId
		}
		if p.Path.Latency > 0 {
			ps.Latency = durationpb.New(p.Path.Latency)
		}
		if !p.Stats.LastHandshake.IsZero() {
			ps.LastHandshakeTime = timestamppb.New(p.Stats.LastHandshake)
		}
		r.Peers = append(r.Peers, ps)
	}
	return r
}

// maintain asks for hole punches towards peers without a direct path and refreshes the STUN endpoint.
func (e *Engine) maintain() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var lastSTUN time.Time
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		e.mu.Lock()
		stunAddrs := e.stunAddrs
		puncher := e.puncher
		e.mu.Unlock()
		if len(stunAddrs) > 0 && now.Sub(lastSTUN) > time.Minute {
			lastSTUN = now
			ctx, cancel := context.WithTimeout(e.ctx, 3*time.Second)
			ap, err := e.bind.STUN(ctx, stunAddrs)
			cancel()
			if err == nil {
				e.mu.Lock()
				changed := e.publicEP != ap
				e.publicEP = ap
				e.mu.Unlock()
				if changed {
					e.log.Info("public endpoint learned", "endpoint", ap)
					e.changed()
				}
			} else {
				e.log.Debug("STUN", "err", err)
			}
		}
		if puncher == nil {
			continue
		}
		for k, p := range e.bind.Paths() {
			if p.Direct {
				continue
			}
			e.mu.Lock()
			peer := e.peersByKey[k]
			last := e.punchedAt[k]
			due := peer != nil && len(peer.GetEndpoints()) > 0 && now.Sub(last) > 30*time.Second
			if due {
				e.punchedAt[k] = now
			}
			e.mu.Unlock()
			if due {
				ctx, cancel := context.WithTimeout(e.ctx, 5*time.Second)
				if _, err := puncher.RequestHolePunch(ctx, peer.GetNodeId()); err != nil {
					e.log.Debug("request hole punch", "peer", peer.GetNodeId(), "err", err)
				}
				cancel()
				e.bind.HolePunch(k, nil)
			}
		}
	}
}

func (e *Engine) setListenPort(port uint16) error {
	return e.dev.SetListenPort(port)
}

// Addresses returns the node's overlay addresses.
func (e *Engine) Addresses() []netip.Prefix { return e.cfg.Addresses }

// RelayConnected reports whether the home relay connection is up.
func (e *Engine) RelayConnected() bool {
	e.mu.Lock()
	rc := e.relay
	e.mu.Unlock()
	return rc != nil && rc.Connected()
}
