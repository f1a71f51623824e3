package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// fixture nodes:
//
//	web1, web2: tag web, user alice, group eng
//	db1:        tag db, user bob
//	lap:        user carol, group eng, no tags
//	gw:         tag gw, route 10.1.2.0/24
//	ops:        user dave, group ops
func fixture() []NodeAttrs {
	a := func(i int) []netip.Addr {
		return []netip.Addr{netip.AddrFrom4([4]byte{100, 64, 0, byte(i)}), netip.MustParseAddr(fmt.Sprintf("fd7a::%d", i))}
	}
	return []NodeAttrs{
		{ID: "web1", UserID: "alice", GroupIDs: []string{"eng"}, Tags: []string{"web"}, Addresses: a(1)},
		{ID: "web2", UserID: "alice", GroupIDs: []string{"eng"}, Tags: []string{"web"}, Addresses: a(2)},
		{ID: "db1", UserID: "bob", Tags: []string{"db"}, Addresses: a(3)},
		{ID: "lap", UserID: "carol", GroupIDs: []string{"eng"}, Addresses: a(4)},
		{ID: "gw", Tags: []string{"gw"}, Addresses: a(5), Routes: []netip.Prefix{netip.MustParsePrefix("10.1.2.0/24")}},
		{ID: "ops", UserID: "dave", GroupIDs: []string{"ops"}, Addresses: a(6)},
	}
}

func allow(src, dst []Target, proto Protocol, ports ...PortRange) Rule {
	return Rule{Action: ActionAllow, Sources: src, Destinations: dst, Protocol: proto, Ports: ports}
}

func deny(src, dst []Target, proto Protocol, ports ...PortRange) Rule {
	return Rule{Action: ActionDeny, Sources: src, Destinations: dst, Protocol: proto, Ports: ports}
}

func ts(t ...Target) []Target { return t }

func pol(id string, rules ...Rule) Policy { return Policy{ID: id, Enabled: true, Rules: rules} }

func newDir(c *Compiled, nodes []NodeAttrs) *Directory {
	d := NewDirectory()
	d.Track(c.CIDRs())
	for _, n := range nodes {
		d.Put(n)
	}
	return d
}

// pairs returns the visible pairs "a-b" (a < b) computed by Peers for every node.
func pairs(t *testing.T, c *Compiled, nodes []NodeAttrs) []string {
	t.Helper()
	d := newDir(c, nodes)
	var out []string
	for _, n := range nodes {
		for _, p := range c.Peers(d, n) {
			if n.ID < p {
				out = append(out, n.ID+"-"+p)
			}
			// Symmetry: p must list n too.
			pa, _ := d.Get(p)
			if !slices.Contains(c.Peers(d, pa), n.ID) {
				t.Errorf("%s sees %s but not the reverse", n.ID, p)
			}
		}
	}
	slices.Sort(out)
	return out
}

func TestVisibility(t *testing.T) {
	nodes := fixture()
	cidr := func(s string) Target { return CIDR(netip.MustParsePrefix(s)) }
	tests := []struct {
		name     string
		policies []Policy
		want     []string
	}{
		{"deny by default", nil, nil},
		{"disabled policy", []Policy{{ID: "p", Rules: []Rule{allow(ts(Any()), ts(Any()), ProtoAny)}}}, nil},
		{"other cvlan", []Policy{{ID: "p", Enabled: true, CvlanID: "other", Rules: []Rule{allow(ts(Any()), ts(Any()), ProtoAny)}}}, nil},
		{"tag to tag", []Policy{pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoTCP, PortRange{5432, 5432}))},
			[]string{"db1-web1", "db1-web2"}},
		{"group to tag", []Policy{pol("p", allow(ts(Group("eng")), ts(Tag("db")), ProtoAny))},
			[]string{"db1-lap", "db1-web1", "db1-web2"}},
		{"user to node", []Policy{pol("p", allow(ts(User("dave")), ts(Node("gw")), ProtoICMP))},
			[]string{"gw-ops"}},
		{"same tag both sides", []Policy{pol("p", allow(ts(Tag("web")), ts(Tag("web")), ProtoAny))},
			[]string{"web1-web2"}},
		{"cidr source via approved route", []Policy{pol("p", allow(ts(cidr("10.1.0.0/16")), ts(Tag("db")), ProtoAny))},
			[]string{"db1-gw"}},
		{"cidr destination of a single address", []Policy{pol("p", allow(ts(User("carol")), ts(cidr("100.64.0.3/32")), ProtoAny))},
			[]string{"db1-lap"}},
		{"cidr matching no node", []Policy{pol("p", allow(ts(cidr("192.168.0.0/16")), ts(Any()), ProtoAny))}, nil},
		{"any to any", []Policy{pol("p", allow(ts(Any()), ts(Any()), ProtoAny))},
			[]string{"db1-gw", "db1-lap", "db1-ops", "db1-web1", "db1-web2", "gw-lap", "gw-ops", "gw-web1", "gw-web2",
				"lap-ops", "lap-web1", "lap-web2", "ops-web1", "ops-web2", "web1-web2"}},
		{"deny one direction keeps the other", []Policy{
			pol("p", allow(ts(Tag("web"), Tag("db")), ts(Tag("web"), Tag("db")), ProtoAny)),
			pol("q", deny(ts(Tag("web")), ts(Tag("db")), ProtoAny))},
			[]string{"db1-web1", "db1-web2", "web1-web2"}},
		{"deny both directions hides the pair", []Policy{
			pol("p", allow(ts(Tag("web"), Tag("db")), ts(Tag("web"), Tag("db")), ProtoAny)),
			pol("q", deny(ts(Tag("web")), ts(Tag("db")), ProtoAny), deny(ts(Tag("db")), ts(Tag("web")), ProtoAny))},
			[]string{"web1-web2"}},
		{"deny wins whatever the priority", []Policy{
			{ID: "deny-late", Enabled: true, Priority: 100, Rules: []Rule{deny(ts(Any()), ts(Tag("db")), ProtoAny)}},
			{ID: "allow-early", Enabled: true, Priority: 1, Rules: []Rule{allow(ts(Tag("web")), ts(Tag("db")), ProtoAny)}}},
			nil},
		{"partial deny leaves other ports", []Policy{
			pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoTCP)),
			pol("q", deny(ts(Any()), ts(Any()), ProtoTCP, PortRange{22, 22}))},
			[]string{"db1-web1", "db1-web2"}},
		{"deny covering all allowed ports", []Policy{
			pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoTCP, PortRange{22, 22}, PortRange{80, 80})),
			pol("q", deny(ts(Any()), ts(Any()), ProtoTCP, PortRange{1, 79}, PortRange{80, 1000}))},
			nil},
		{"deny of another protocol", []Policy{
			pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoUDP, PortRange{53, 53})),
			pol("q", deny(ts(Any()), ts(Any()), ProtoTCP), deny(ts(Any()), ts(Any()), ProtoICMP))},
			[]string{"db1-web1", "db1-web2"}},
		{"deny any protocol with ports spares icmp", []Policy{
			pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoAny)),
			pol("q", deny(ts(Any()), ts(Any()), ProtoAny, PortRange{0, 65535}))},
			[]string{"db1-web1", "db1-web2"}},
		{"deny all protocols", []Policy{
			pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoICMP)),
			pol("q", deny(ts(Any()), ts(Any()), ProtoAny))},
			nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Compile(tt.policies, "cv1")
			if err != nil {
				t.Fatal(err)
			}
			got := pairs(t, c, nodes)
			if !slices.Equal(got, tt.want) {
				t.Errorf("visible pairs\n got %v\nwant %v", got, tt.want)
			}
		})
	}
}

func TestFilter(t *testing.T) {
	nodes := fixture()
	p := netip.MustParsePrefix
	tests := []struct {
		name     string
		policies []Policy
		node     string
		want     []FilterRule
	}{
		{"deny by default: empty filter", nil, "db1", nil},
		{"tag source expands to member addresses", []Policy{pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoTCP, PortRange{5432, 5432}))}, "db1",
			[]FilterRule{{Action: ActionAllow, Protocol: ProtoTCP, Ports: []PortRange{{5432, 5432}},
				Sources:      []netip.Prefix{p("100.64.0.1/32"), p("100.64.0.2/32"), p("fd7a::1/128"), p("fd7a::2/128")},
				Destinations: []netip.Prefix{p("100.64.0.3/32"), p("fd7a::3/128")}}}},
		{"no inbound rule at the source", []Policy{pol("p", allow(ts(Tag("web")), ts(Tag("db")), ProtoTCP))}, "web1", nil},
		{"any source and cidr destination on a route", []Policy{pol("p", allow(ts(Any()), ts(CIDR(p("10.0.0.0/8"))), ProtoAny))}, "gw",
			[]FilterRule{{Action: ActionAllow, Protocol: ProtoAny,
				Sources:      []netip.Prefix{p("0.0.0.0/0"), p("::/0")},
				Destinations: []netip.Prefix{p("10.1.2.0/24")}}}},
		{"cidr destination narrower than the route", []Policy{pol("p", allow(ts(CIDR(p("192.168.1.0/24"))), ts(CIDR(p("10.1.2.128/25"))), ProtoAny))}, "gw",
			[]FilterRule{{Action: ActionAllow, Protocol: ProtoAny,
				Sources:      []netip.Prefix{p("192.168.1.0/24")},
				Destinations: []netip.Prefix{p("10.1.2.128/25")}}}},
		{"denies first, then priority", []Policy{
			{ID: "a", Enabled: true, Priority: 5, Rules: []Rule{allow(ts(User("dave")), ts(Tag("db")), ProtoICMP)}},
			{ID: "b", Enabled: true, Priority: 1, Rules: []Rule{allow(ts(User("carol")), ts(Tag("db")), ProtoUDP, PortRange{53, 53})}},
			{ID: "c", Enabled: true, Priority: 9, Rules: []Rule{deny(ts(Node("ops")), ts(Node("db1")), ProtoTCP, PortRange{22, 22})}}},
			"db1",
			[]FilterRule{
				{Action: ActionDeny, Protocol: ProtoTCP, Ports: []PortRange{{22, 22}},
					Sources: []netip.Prefix{p("100.64.0.6/32"), p("fd7a::6/128")}, Destinations: []netip.Prefix{p("100.64.0.3/32"), p("fd7a::3/128")}},
				{Action: ActionAllow, Protocol: ProtoUDP, Ports: []PortRange{{53, 53}},
					Sources: []netip.Prefix{p("100.64.0.4/32"), p("fd7a::4/128")}, Destinations: []netip.Prefix{p("100.64.0.3/32"), p("fd7a::3/128")}},
				{Action: ActionAllow, Protocol: ProtoICMP,
					Sources: []netip.Prefix{p("100.64.0.6/32"), p("fd7a::6/128")}, Destinations: []netip.Prefix{p("100.64.0.3/32"), p("fd7a::3/128")}}}},
		{"rule whose source has no members is omitted", []Policy{pol("p", allow(ts(Tag("nobody")), ts(Tag("db")), ProtoAny))}, "db1", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Compile(tt.policies, "cv1")
			if err != nil {
				t.Fatal(err)
			}
			d := newDir(c, nodes)
			n, _ := d.Get(tt.node)
			got := c.Filter(d, n)
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("filter\n got %v\nwant %v", got, tt.want)
			}
			if (HashFilter(got) == HashFilter(tt.want)) != (fmt.Sprint(got) == fmt.Sprint(tt.want)) {
				t.Error("HashFilter disagrees with equality")
			}
		})
	}
}

func TestValidate(t *testing.T) {
	good := allow(ts(Tag("a")), ts(Tag("b")), ProtoTCP, PortRange{80, 80})
	tests := []struct {
		name   string
		p      Policy
		fields []string // "rule/field" of every expected RuleError, in order
		policy bool     // expect an ErrInvalidPolicy too
	}{
		{"valid", pol("p", good), nil, false},
		{"empty id", Policy{Rules: []Rule{good}}, nil, true},
		{"bad action", pol("p", good, Rule{Sources: ts(Any()), Destinations: ts(Any())}), []string{"1/action"}, false},
		{"no sources or destinations", pol("p", Rule{Action: ActionAllow}), []string{"0/sources", "0/destinations"}, false},
		{"tag without name", pol("p", allow(ts(Tag("a"), Tag("")), ts(Any()), ProtoAny)), []string{"0/sources[1].id"}, false},
		{"unmasked cidr", pol("p", allow(ts(Any()), ts(CIDR(netip.MustParsePrefix("10.1.2.3/8"))), ProtoAny)), []string{"0/destinations[0].prefix"}, false},
		{"invalid cidr", pol("p", allow(ts(Any()), ts(Target{Kind: KindCIDR}), ProtoAny)), []string{"0/destinations[0].prefix"}, false},
		{"unknown kind", pol("p", allow(ts(Target{Kind: 42}), ts(Any()), ProtoAny)), []string{"0/sources[0].kind"}, false},
		{"any with id", pol("p", allow(ts(Target{Kind: KindAny, ID: "x"}), ts(Any()), ProtoAny)), []string{"0/sources[0]"}, false},
		{"icmp with ports", pol("p", allow(ts(Any()), ts(Any()), ProtoICMP, PortRange{1, 2})), []string{"0/ports"}, false},
		{"unknown protocol", pol("p", allow(ts(Any()), ts(Any()), Protocol(9))), []string{"0/protocol"}, false},
		{"reversed port range", pol("p", good, allow(ts(Any()), ts(Any()), ProtoUDP, PortRange{1, 2}, PortRange{90, 80})), []string{"1/ports[1]"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Validate(tt.p)
			var got []string
			gotPolicy := false
			if err != nil {
				for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
					var re *RuleError
					switch {
					case errors.As(e, &re):
						if !errors.Is(e, ErrInvalidRule) {
							t.Errorf("%v does not wrap ErrInvalidRule", e)
						}
						got = append(got, fmt.Sprintf("%d/%s", re.Rule, re.Field))
					case errors.Is(e, ErrInvalidPolicy):
						gotPolicy = true
					default:
						t.Errorf("unexpected error %v", e)
					}
				}
			}
			if !slices.Equal(got, tt.fields) || gotPolicy != tt.policy {
				t.Errorf("got fields %v policy-error %v, want %v %v (err: %v)", got, gotPolicy, tt.fields, tt.policy, err)
			}
			_, cerr := Compile([]Policy{tt.p}, "")
			if (cerr == nil) != (err == nil) {
				t.Errorf("Compile error %v disagrees with Validate %v", cerr, err)
			}
		})
	}
	t.Run("duplicate policy id", func(t *testing.T) {
		_, err := Compile([]Policy{pol("p", good), pol("p", good)}, "")
		if !errors.Is(err, ErrInvalidPolicy) || !strings.Contains(err.Error(), "duplicate") {
			t.Errorf("got %v, want duplicate ErrInvalidPolicy", err)
		}
	})
}

func TestCheck(t *testing.T) {
	nodes := fixture()
	get := func(id string) NodeAttrs {
		for _, n := range nodes {
			if n.ID == id {
				return n
			}
		}
		t.Fatalf("no node %s", id)
		return NodeAttrs{}
	}
	ps := []Policy{
		{ID: "web-db", Enabled: true, Priority: 1, Rules: []Rule{
			allow(ts(Tag("web")), ts(Tag("db")), ProtoTCP, PortRange{5432, 5432}),
			allow(ts(Group("eng")), ts(Any()), ProtoICMP)}},
		{ID: "no-ssh", Enabled: true, Priority: 50, Rules: []Rule{deny(ts(Any()), ts(Tag("db")), ProtoTCP, PortRange{22, 22})}},
		{ID: "admin", Enabled: true, Priority: 0, Rules: []Rule{allow(ts(User("dave")), ts(Any()), ProtoAny)}},
	}
	c, err := Compile(ps, "")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		src, dst string
		proto    Protocol
		port     uint16
		want     Verdict
	}{
		{"web1", "db1", ProtoTCP, 5432, Verdict{Allowed: true, PolicyID: "web-db", Rule: 0}},
		{"web1", "db1", ProtoTCP, 5433, Verdict{Rule: -1}},
		{"web1", "db1", ProtoUDP, 5432, Verdict{Rule: -1}},
		{"db1", "web1", ProtoTCP, 5432, Verdict{Rule: -1}},
		{"lap", "gw", ProtoICMP, 0, Verdict{Allowed: true, PolicyID: "web-db", Rule: 1}},
		{"ops", "db1", ProtoTCP, 22, Verdict{Allowed: false, PolicyID: "no-ssh", Rule: 0}},
		{"ops", "db1", ProtoAny, 0, Verdict{Allowed: true, PolicyID: "admin", Rule: 0}},
		{"ops", "db1", ProtoTCP, 23, Verdict{Allowed: true, PolicyID: "admin", Rule: 0}},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s->%s/%v/%d", tt.src, tt.dst, tt.proto, tt.port), func(t *testing.T) {
			if got := c.Check(get(tt.src), get(tt.dst), tt.proto, tt.port); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}
