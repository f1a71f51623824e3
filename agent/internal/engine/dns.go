package engine

import (
	"net/netip"
	"strings"

	"github.com/cloudvlan/cloudvlan/agent/internal/dns"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// startDNS starts the resolver: on the node's first overlay address inside the netstack, or on
// cfg.DNSListen in TUN mode.
func (e *Engine) startDNS() error {
	e.dns = dns.New(e.log.With("component", "dns"))
	if e.tnet != nil {
		ap := netip.AddrPortFrom(e.cfg.Addresses[0].Addr(), 53)
		pc, err := e.tnet.ListenUDPAddrPort(ap)
		if err != nil {
			return err
		}
		ln, err := e.tnet.ListenTCPAddrPort(ap)
		if err != nil {
			pc.Close()
			return err
		}
		e.dns.Serve(pc, ln)
		return nil
	}
	if e.cfg.DNSListen != "" {
		if _, err := e.dns.ListenAndServe(e.cfg.DNSListen); err != nil {
			return err
		}
	}
	return nil
}

// DNS returns the resolver.
func (e *Engine) DNS() *dns.Server { return e.dns }

func hostAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Addr())
		} else if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a)
		}
	}
	return out
}

// dnsConfig extracts the resolver's configuration from a map.
func dnsConfig(m *nodev1.NetworkMap) dns.Config {
	c := dns.Config{Records: map[string][]netip.Addr{}, Domain: m.GetDns().GetDomain()}
	add := func(name string, addrs []netip.Addr) {
		if name = strings.TrimSpace(name); name != "" && len(addrs) > 0 {
			c.Records[name] = append(c.Records[name], addrs...)
		}
	}
	add(m.GetSelf().GetFqdn(), hostAddrs(m.GetSelf().GetAddresses()))
	for _, p := range m.GetPeers() {
		add(p.GetFqdn(), hostAddrs(p.GetAddresses()))
	}
	for _, r := range m.GetDns().GetExtraRecords() {
		add(r.GetName(), hostAddrs(r.GetAddresses()))
	}
	for _, r := range m.GetDns().GetSplitRoutes() {
		c.Split = append(c.Split, dns.Route{Domain: r.GetDomain(), Resolvers: r.GetResolvers()})
	}
	return c
}
