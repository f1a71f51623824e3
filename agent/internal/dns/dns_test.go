package dns

import (
	"context"
	"net"
	"net/netip"
	"testing"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// upstream starts a real resolver on loopback answering every A query with addr.
func upstream(t *testing.T, addr string) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP(addr)})
		_ = w.WriteMsg(m)
	})}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return pc.LocalAddr().String()
}

func TestResolve(t *testing.T) {
	corp := upstream(t, "10.1.1.1")
	eng := upstream(t, "10.2.2.2")
	world := upstream(t, "93.184.216.34")
	s := New(nil)
	s.SetConfig(Config{
		Records:  map[string][]netip.Addr{"alpha.c1.mesh.test": {netip.MustParseAddr("100.64.0.1"), netip.MustParseAddr("fd7a::1")}},
		Domain:   "c1.mesh.test",
		Split:    []Route{{Domain: "corp.example", Resolvers: []string{corp}}, {Domain: "eng.corp.example", Resolvers: []string{"127.0.0.1:1", eng}}},
		Fallback: []string{world},
	})
	addr, err := s.ListenAndServe("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	tests := []struct {
		name  string
		qtype uint16
		rcode int
		want  string
	}{
		{"ALPHA.c1.mesh.test.", dns.TypeA, dns.RcodeSuccess, "100.64.0.1"},
		{"alpha.c1.mesh.test.", dns.TypeAAAA, dns.RcodeSuccess, "fd7a::1"},
		{"alpha.c1.mesh.test.", dns.TypeMX, dns.RcodeSuccess, ""},
		{"ghost.c1.mesh.test.", dns.TypeA, dns.RcodeNameError, ""},
		{"wiki.corp.example.", dns.TypeA, dns.RcodeSuccess, "10.1.1.1"},
		{"ci.eng.corp.example.", dns.TypeA, dns.RcodeSuccess, "10.2.2.2"}, // longest match, second resolver
		{"example.org.", dns.TypeA, dns.RcodeSuccess, "93.184.216.34"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := new(dns.Msg)
			q.SetQuestion(tt.name, tt.qtype)
			r, err := dns.Exchange(q, addr.String())
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != tt.rcode {
				t.Fatalf("rcode %d, want %d", r.Rcode, tt.rcode)
			}
			got := ""
			if len(r.Answer) > 0 {
				switch a := r.Answer[0].(type) {
				case *dns.A:
					got = a.A.String()
				case *dns.AAAA:
					got = a.AAAA.String()
				}
			}
			if got != tt.want {
				t.Fatalf("answer %q, want %q", got, tt.want)
			}
		})
	}
	ips, err := s.LookupNetIP(context.Background(), "alpha.c1.mesh.test")
	if err != nil || len(ips) != 2 {
		t.Fatalf("LookupNetIP = %v, %v", ips, err)
	}
	s.SetConfig(Config{Domain: "c1.mesh.test"})
	q := new(dns.Msg)
	q.SetQuestion("example.org.", dns.TypeA)
	if r, err := dns.Exchange(q, addr.String()); err != nil || r.Rcode != dns.RcodeRefused {
		t.Fatalf("without fallback: %v %v, want REFUSED", r, err)
	}
}
