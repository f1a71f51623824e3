package engine

import (
	"net"
	"net/netip"

	"github.com/cloudvlan/cloudvlan/agent/internal/bind"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayclient "github.com/cloudvlan/cloudvlan/relay/client"
)

// relaySender adapts the relay client to the Bind.
type relaySender struct{ c *relayclient.Client }

func (r relaySender) Send(dst [32]byte, pkt []byte) error { return r.c.Send(relayclient.Key(dst), pkt) }

var _ bind.Relay = relaySender{}

// setRelayMap keeps a connection to the home relay: the first relay of the first region, kept as long
// as it stays in the map (relays of a region mesh, so any of them reaches every peer of the region).
func (e *Engine) setRelayMap(rm *nodev1.RelayMap) {
	var stun []string
	var first *nodev1.RelayNode
	e.mu.Lock()
	current := e.relayURL
	keep := false
	for _, reg := range rm.GetRegions() {
		for _, r := range reg.GetRelays() {
			if first == nil && r.GetUrl() != "" {
				first = r
			}
			if r.GetUrl() == current && current != "" {
				keep = true
			}
			if r.GetStunAddress() != "" {
				stun = append(stun, r.GetStunAddress())
			}
		}
	}
	e.stunAddrs = stun
	if keep || e.cfg.RelayTLS == nil {
		e.mu.Unlock()
		return
	}
	old := e.relay
	e.relay, e.relayURL, e.relayID = nil, "", ""
	e.mu.Unlock()
	if old != nil {
		e.bind.SetRelay(nil)
		_ = old.Close()
		e.relayWG.Wait()
	}
	if first == nil {
		return
	}
	rc, err := relayclient.New(relayclient.Config{URL: first.GetUrl(), TLSConfig: e.cfg.RelayTLS, Logger: e.log.With("relay", first.GetRelayId())})
	if err != nil {
		e.log.Error("relay client", "url", first.GetUrl(), "err", err)
		return
	}
	e.mu.Lock()
	e.relay, e.relayURL, e.relayID = rc, first.GetUrl(), first.GetRelayId()
	e.mu.Unlock()
	e.bind.SetRelay(relaySender{rc})
	e.relayWG.Add(1)
	go func() {
		defer e.relayWG.Done()
		const batch = 32
		bufs := make([][]byte, batch)
		for i := range bufs {
			bufs[i] = make([]byte, 65535)
		}
		sizes := make([]int, batch)
		srcs := make([]relayclient.Key, batch)
		for {
			n, err := rc.RecvBatch(bufs, sizes, srcs)
			if err != nil {
				return
			}
			for i := 0; i < n; i++ {
				e.bind.DeliverRelay(srcs[i], bufs[i][:sizes[i]])
			}
		}
	}()
	e.log.Info("home relay", "relay", first.GetRelayId(), "url", first.GetUrl())
}

// localEndpoints lists the UDP endpoints at which this node's socket can be reached directly.
func localEndpoints(bound netip.AddrPort, overlay []netip.Prefix) []netip.AddrPort {
	if !bound.IsValid() {
		return nil
	}
	if !bound.Addr().IsUnspecified() {
		return []netip.AddrPort{bound}
	}
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.AddrPort
	for _, a := range addrs {
		pfx, err := netip.ParsePrefix(a.String())
		if err != nil {
			continue
		}
		ip := pfx.Addr()
		if ip.IsLinkLocalUnicast() || ip.IsMulticast() || ip.IsLoopback() {
			continue
		}
		// Our own overlay addresses are not underlay endpoints.
		own := false
		for _, o := range overlay {
			own = own || o.Addr() == ip
		}
		if own {
			continue
		}
		out = append(out, netip.AddrPortFrom(ip, bound.Port()))
	}
	return out
}
