// Package dns is the agent's resolver: it answers the mesh's names (<node>.<cvlan>.<domain> and the
// map's extra records) itself, sends queries under split-DNS domains to their resolvers, and forwards
// the rest to the fallback resolvers (or refuses them when there are none).
package dns

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Route sends queries under Domain to Resolvers (host:port).
type Route struct {
	Domain    string
	Resolvers []string
}

// Config is what the resolver knows.
type Config struct {
	// Records maps fully qualified names to their addresses.
	Records map[string][]netip.Addr
	// Domain is the mesh domain: unknown names under it are NXDOMAIN, never forwarded.
	Domain string
	// Split lists split-DNS routes; the longest matching domain wins.
	Split []Route
	// Fallback resolvers for every other name; empty refuses them.
	Fallback []string
}

type compiled struct {
	records  map[string][]netip.Addr
	domain   string
	split    []Route
	fallback []string
}

// TTL of mesh answers: short, because the map changes.
const TTL = 30

// Server answers DNS queries. It is a dns.Handler.
type Server struct {
	log     *slog.Logger
	cfg     atomic.Pointer[compiled]
	client  *dns.Client
	mu      sync.Mutex
	servers []*dns.Server
	wg      sync.WaitGroup
}

// New returns a resolver with no names.
func New(log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{log: log, client: &dns.Client{Timeout: 3 * time.Second}}
	s.cfg.Store(&compiled{records: map[string][]netip.Addr{}})
	return s
}

// SetConfig replaces what the resolver knows.
func (s *Server) SetConfig(c Config) {
	cc := &compiled{records: map[string][]netip.Addr{}, domain: fqdn(c.Domain), fallback: c.Fallback}
	for n, a := range c.Records {
		cc.records[fqdn(n)] = append(cc.records[fqdn(n)], a...)
	}
	for _, r := range c.Split {
		cc.split = append(cc.split, Route{Domain: fqdn(r.Domain), Resolvers: r.Resolvers})
	}
	s.cfg.Store(cc)
}

func fqdn(n string) string {
	if n == "" {
		return ""
	}
	return strings.ToLower(dns.Fqdn(n))
}

// under reports whether name is domain or below it.
func under(name, domain string) bool {
	return domain != "" && (name == domain || strings.HasSuffix(name, "."+domain) || domain == ".")
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	resp := s.Resolve(context.Background(), r)
	_ = w.WriteMsg(resp)
}

// Resolve answers one query message.
func (s *Server) Resolve(ctx context.Context, r *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(r)
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	c := s.cfg.Load()
	if addrs, ok := c.records[name]; ok {
		m.Authoritative = true
		for _, a := range addrs {
			switch {
			case q.Qtype == dns.TypeA && a.Is4():
				m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: TTL}, A: a.AsSlice()})
			case q.Qtype == dns.TypeAAAA && a.Is6():
				m.Answer = append(m.Answer, &dns.AAAA{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeAAAA, Class: dns.ClassINET, Ttl: TTL}, AAAA: a.AsSlice()})
			}
		}
		return m // NOERROR with no answer for other types (the name exists)
	}
	// The longest split domain that matches wins over the mesh domain and the fallback.
	var best *Route
	for i := range c.split {
		if under(name, c.split[i].Domain) && (best == nil || len(c.split[i].Domain) > len(best.Domain)) {
			best = &c.split[i]
		}
	}
	if best == nil && under(name, c.domain) {
		m.Authoritative = true
		m.Rcode = dns.RcodeNameError
		return m
	}
	upstream := c.fallback
	if best != nil {
		upstream = best.Resolvers
	}
	if len(upstream) == 0 {
		m.Rcode = dns.RcodeRefused
		return m
	}
	for _, u := range upstream {
		resp, _, err := s.client.ExchangeContext(ctx, r, u)
		if err == nil && resp != nil && resp.Truncated {
			tc := &dns.Client{Net: "tcp", Timeout: s.client.Timeout}
			resp, _, err = tc.ExchangeContext(ctx, r, u)
		}
		if err == nil && resp != nil {
			return resp
		}
		s.log.Debug("dns upstream", "upstream", u, "name", name, "err", err)
	}
	m.Rcode = dns.RcodeServerFailure
	return m
}

// Serve answers on a packet connection and a stream listener (either may be nil) until Close.
func (s *Server) Serve(pc net.PacketConn, ln net.Listener) {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := func(srv *dns.Server) {
		s.servers = append(s.servers, srv)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := srv.ActivateAndServe(); err != nil {
				s.log.Debug("dns server stopped", "err", err)
			}
		}()
	}
	if pc != nil {
		start(&dns.Server{PacketConn: pc, Handler: s})
	}
	if ln != nil {
		start(&dns.Server{Listener: ln, Handler: s})
	}
}

// ListenAndServe listens on addr (UDP and TCP).
func (s *Server) ListenAndServe(addr string) (net.Addr, error) {
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return nil, fmt.Errorf("dns: listen udp %s: %w", addr, err)
	}
	ln, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("dns: listen tcp %s: %w", addr, err)
	}
	s.Serve(pc, ln)
	return pc.LocalAddr(), nil
}

// Close stops every listener.
func (s *Server) Close() {
	s.mu.Lock()
	srvs := s.servers
	s.servers = nil
	s.mu.Unlock()
	for _, srv := range srvs {
		_ = srv.Shutdown()
	}
	s.wg.Wait()
}

// LookupNetIP resolves host in-process (mesh names, split DNS, fallback), IPv4 first.
func (s *Server) LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	var out []netip.Addr
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(host), qt)
		r := s.Resolve(ctx, q)
		for _, rr := range r.Answer {
			switch v := rr.(type) {
			case *dns.A:
				if a, ok := netip.AddrFromSlice(v.A); ok {
					out = append(out, a.Unmap())
				}
			case *dns.AAAA:
				if a, ok := netip.AddrFromSlice(v.AAAA); ok {
					out = append(out, a)
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("dns: no address for %q", host)
	}
	return out, nil
}
