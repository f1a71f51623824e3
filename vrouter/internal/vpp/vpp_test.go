package vpp_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/ikev2"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/ip"
	"go.fd.io/govpp/binapi/ipip"

	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/vpp"
	"github.com/cloudvlan/cloudvlan/vrouter/internal/vpp/vpptest"
)

// These tests run against govpp's mock adapter (package vpptest): VPP cannot be installed here.

const (
	local = "198.51.100.1"
	psk1  = "0123456789abcdef"
	psk2  = "fedcba9876543210"
)

func conn(name, remote string, ls, rs []string, psk string) *vrouterv1.IpsecConnection {
	return &vrouterv1.IpsecConnection{Name: name, RemoteAddress: remote, LocalSubnets: ls, RemoteSubnets: rs,
		IkeVersion: vrouterv1.IkeVersion_IKE_VERSION_2, PreSharedKey: psk}
}

func config(table uint32, conns ...*vrouterv1.IpsecConnection) *vrouterv1.WatchVRouterConfigResponse {
	return &vrouterv1.WatchVRouterConfigResponse{Version: 1, Vrf: &vrouterv1.Vrf{TableId: table, TenantId: "acme"}, Connections: conns}
}

var (
	branch1 = conn("branch1", "203.0.113.9", []string{"10.0.0.0/16"}, []string{"192.168.1.0/24", "192.168.2.0/24"}, psk1)
	branch2 = conn("branch2", "203.0.113.10", []string{"10.0.0.0/16"}, []string{"172.16.0.0/12"}, psk2)
)

// describe renders a request's fields that matter, so expectations read like VPP's CLI.
func describe(r vpptest.Request) string {
	switch m := r.Msg.(type) {
	case *ip.IPTableAddDel:
		return fmt.Sprintf("ip_table_add_del add=%v table=%d ip6=%v", m.IsAdd, m.Table.TableID, m.Table.IsIP6)
	case *interfaces.CreateLoopback:
		return "create_loopback"
	case *interfaces.DeleteLoopback:
		return fmt.Sprintf("delete_loopback if=%d", m.SwIfIndex)
	case *interfaces.SwInterfaceSetTable:
		return fmt.Sprintf("sw_interface_set_table if=%d ip6=%v vrf=%d", m.SwIfIndex, m.IsIPv6, m.VrfID)
	case *interfaces.SwInterfaceAddDelAddress:
		return fmt.Sprintf("sw_interface_add_del_address if=%d add=%v %s", m.SwIfIndex, m.IsAdd, m.Prefix)
	case *interfaces.SwInterfaceSetFlags:
		return fmt.Sprintf("sw_interface_set_flags if=%d flags=%d", m.SwIfIndex, m.Flags)
	case *interfaces.SwInterfaceSetUnnumbered:
		return fmt.Sprintf("sw_interface_set_unnumbered if=%d unnumbered=%d add=%v", m.SwIfIndex, m.UnnumberedSwIfIndex, m.IsAdd)
	case *interfaces.SwInterfaceDump:
		return fmt.Sprintf("sw_interface_dump name=%s", m.NameFilter)
	case *ipip.IpipAddTunnel:
		return fmt.Sprintf("ipip_add_tunnel %s->%s table=%d", m.Tunnel.Src, m.Tunnel.Dst, m.Tunnel.TableID)
	case *ipip.IpipDelTunnel:
		return fmt.Sprintf("ipip_del_tunnel if=%d", m.SwIfIndex)
	case *ikev2.Ikev2ProfileAddDel:
		return fmt.Sprintf("ikev2_profile_add_del %s add=%v", m.Name, m.IsAdd)
	case *ikev2.Ikev2ProfileSetAuth:
		return fmt.Sprintf("ikev2_profile_set_auth %s method=%d hex=%v key=%s", m.Name, m.AuthMethod, m.IsHex, m.Data)
	case *ikev2.Ikev2ProfileSetID:
		a, _ := netip.AddrFromSlice(m.Data)
		return fmt.Sprintf("ikev2_profile_set_id %s local=%v type=%d %s", m.Name, m.IsLocal, m.IDType, a)
	case *ikev2.Ikev2ProfileSetTs:
		return fmt.Sprintf("ikev2_profile_set_ts %s local=%v %s-%s ports=%d-%d proto=%d", m.Name, m.Ts.IsLocal,
			m.Ts.StartAddr, m.Ts.EndAddr, m.Ts.StartPort, m.Ts.EndPort, m.Ts.ProtocolID)
	case *ikev2.Ikev2SetResponder:
		return fmt.Sprintf("ikev2_set_responder %s if=%d %s", m.Name, m.Responder.SwIfIndex, m.Responder.Addr)
	case *ikev2.Ikev2SetTunnelInterface:
		return fmt.Sprintf("ikev2_set_tunnel_interface %s if=%d", m.Name, m.SwIfIndex)
	case *ip.IPRouteAddDel:
		var via []string
		for _, p := range m.Route.Paths {
			via = append(via, fmt.Sprintf("if=%d/table=%d/proto=%d", p.SwIfIndex, p.TableID, p.Proto))
		}
		return fmt.Sprintf("ip_route_add_del add=%v table=%d %s via %s", m.IsAdd, m.Route.TableID, m.Route.Prefix, strings.Join(via, ","))
	case *ikev2.Ikev2SaV3Dump:
		return "ikev2_sa_v3_dump"
	}
	return r.Name
}

func describeAll(rs []vpptest.Request) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = describe(r)
	}
	return out
}

// vrfCreate: the uplink is sw_if_index 1, the loopback 2.
func vrfCreate(table uint32) []string {
	return []string{
		fmt.Sprintf("ip_table_add_del add=true table=%d ip6=false", table),
		fmt.Sprintf("ip_table_add_del add=true table=%d ip6=true", table),
		"create_loopback",
		fmt.Sprintf("sw_interface_set_table if=2 ip6=false vrf=%d", table),
		fmt.Sprintf("sw_interface_set_table if=2 ip6=true vrf=%d", table),
		"sw_interface_add_del_address if=2 add=true 169.254.0.1/32",
		"sw_interface_set_flags if=2 flags=1",
	}
}

func connCreate(name, remote, psk string, tunnel, table uint32, lts, rts string, routes ...string) []string {
	out := []string{
		fmt.Sprintf("ipip_add_tunnel %s->%s table=0", local, remote),
		fmt.Sprintf("sw_interface_set_table if=%d ip6=false vrf=%d", tunnel, table),
		fmt.Sprintf("sw_interface_set_table if=%d ip6=true vrf=%d", tunnel, table),
		fmt.Sprintf("sw_interface_set_unnumbered if=2 unnumbered=%d add=true", tunnel),
		fmt.Sprintf("sw_interface_set_flags if=%d flags=1", tunnel),
		fmt.Sprintf("ikev2_profile_add_del %s add=true", name),
		fmt.Sprintf("ikev2_profile_set_auth %s method=2 hex=false key=%s", name, psk),
		fmt.Sprintf("ikev2_profile_set_id %s local=true type=1 %s", name, local),
		fmt.Sprintf("ikev2_profile_set_id %s local=false type=1 %s", name, remote),
		fmt.Sprintf("ikev2_profile_set_ts %s local=true %s ports=0-65535 proto=0", name, lts),
		fmt.Sprintf("ikev2_profile_set_ts %s local=false %s ports=0-65535 proto=0", name, rts),
		fmt.Sprintf("ikev2_set_responder %s if=1 %s", name, remote),
		fmt.Sprintf("ikev2_set_tunnel_interface %s if=%d", name, tunnel),
	}
	for _, r := range routes {
		out = append(out, fmt.Sprintf("ip_route_add_del add=true table=%d %s via if=%d/table=%d/proto=0", table, r, tunnel, table))
	}
	return out
}

func connDelete(name string, tunnel, table uint32, routes ...string) []string {
	var out []string
	for i := len(routes) - 1; i >= 0; i-- {
		out = append(out, fmt.Sprintf("ip_route_add_del add=false table=%d %s via if=%d/table=%d/proto=0", table, routes[i], tunnel, table))
	}
	return append(out, fmt.Sprintf("ikev2_profile_add_del %s add=false", name), fmt.Sprintf("ipip_del_tunnel if=%d", tunnel))
}

func concat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func newProgrammer(t *testing.T) (*vpp.Programmer, *vpptest.Recorder) {
	t.Helper()
	c, rec := vpptest.NewMockVPP(t)
	p, err := vpp.New(c, vpp.Options{UplinkInterface: vpptest.Uplink, LocalAddress: netip.MustParseAddr(local)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if got := describeAll(rec.Requests()); !slices.Equal(got, []string{"sw_interface_dump name=" + vpptest.Uplink}) {
		t.Fatalf("New sent %q, want only the uplink lookup", got)
	}
	rec.Reset()
	return p, rec
}

func diff(t *testing.T, step string, got, want []string) {
	t.Helper()
	if slices.Equal(got, want) {
		return
	}
	var b strings.Builder
	for i := range max(len(got), len(want)) {
		g, w := "", ""
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		mark := "  "
		if g != w {
			mark = "!="
		}
		fmt.Fprintf(&b, "\n%s got  %s\n   want %s", mark, g, w)
	}
	t.Errorf("%s: requests differ:%s", step, b.String())
}

func TestApplyIncremental(t *testing.T) {
	b1 := connCreate("branch1", "203.0.113.9", psk1, 3, 7, "10.0.0.0-10.0.255.255", "192.168.1.0-192.168.2.255", "192.168.1.0/24", "192.168.2.0/24")
	b1Del := connDelete("branch1", 3, 7, "192.168.1.0/24", "192.168.2.0/24")
	b2 := connCreate("branch2", "203.0.113.10", psk2, 4, 7, "10.0.0.0-10.0.255.255", "172.16.0.0-172.31.255.255", "172.16.0.0/12")
	b2Del := connDelete("branch2", 4, 7, "172.16.0.0/12")
	b1Rekeyed := conn("branch1", "203.0.113.9", []string{"10.0.0.0/16"}, []string{"192.168.1.0/24", "192.168.2.0/24"}, psk2)

	type step struct {
		name string
		cfg  *vrouterv1.WatchVRouterConfigResponse
		want []string
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"first apply then same again", []step{
			{"first", config(7, branch1), concat(vrfCreate(7), b1)},
			{"same", config(7, branch1), nil},
			{"same, subnets reordered", config(7, conn("branch1", "203.0.113.9", []string{"10.0.0.0/16"}, []string{"192.168.2.0/24", "192.168.1.0/24"}, psk1)), nil},
		}},
		{"add one connection", []step{
			{"first", config(7, branch1), concat(vrfCreate(7), b1)},
			{"add branch2", config(7, branch1, branch2), b2},
			{"same", config(7, branch2, branch1), nil},
		}},
		{"remove one connection", []step{
			{"first", config(7, branch1, branch2), concat(vrfCreate(7), b1, b2)},
			{"remove branch1", config(7, branch2), b1Del},
			{"remove branch2", config(7), b2Del},
			{"empty again", config(7), nil},
		}},
		{"change one connection", []step{
			{"first", config(7, branch1, branch2), concat(vrfCreate(7), b1, b2)},
			{"new psk for branch1", config(7, b1Rekeyed, branch2), concat(b1Del,
				connCreate("branch1", "203.0.113.9", psk2, 5, 7, "10.0.0.0-10.0.255.255", "192.168.1.0-192.168.2.255", "192.168.1.0/24", "192.168.2.0/24"))},
		}},
		{"change table id rebuilds everything", []step{
			{"first", config(7, branch1), concat(vrfCreate(7), b1)},
			{"table 8", config(8, branch1), concat(b1Del,
				[]string{"delete_loopback if=2", "ip_table_add_del add=false table=7 ip6=true", "ip_table_add_del add=false table=7 ip6=false"},
				// the fresh loopback is sw_if_index 4, the tunnel 5
				strings.Split(strings.ReplaceAll(strings.Join(vrfCreate(8), "\n"), "if=2", "if=4"), "\n"),
				[]string{
					"ipip_add_tunnel 198.51.100.1->203.0.113.9 table=0",
					"sw_interface_set_table if=5 ip6=false vrf=8",
					"sw_interface_set_table if=5 ip6=true vrf=8",
					"sw_interface_set_unnumbered if=4 unnumbered=5 add=true",
				},
				connCreate("branch1", "203.0.113.9", psk1, 5, 8, "10.0.0.0-10.0.255.255", "192.168.1.0-192.168.2.255", "192.168.1.0/24", "192.168.2.0/24")[4:])},
		}},
		{"ipv6 subnets over an ipv4 tunnel, empty local side", []step{
			{"first", config(9, conn("v6", "203.0.113.11", nil, []string{"fd00:1::/48"}, psk1)), concat(vrfCreate(9),
				connCreate("v6", "203.0.113.11", psk1, 3, 9, "::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "fd00:1::-fd00:1:0:ffff:ffff:ffff:ffff:ffff")[:13],
				[]string{"ip_route_add_del add=true table=9 fd00:1::/48 via if=3/table=9/proto=1"})},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, rec := newProgrammer(t)
			for _, s := range tt.steps {
				err := p.Apply(context.Background(), s.cfg)
				if err != nil {
					t.Fatalf("%s: Apply: %v", s.name, err)
				}
				diff(t, s.name, describeAll(rec.Requests()), s.want)
				rec.Reset()
			}
		})
	}
}

var _ = errors.New
var _ = filepath.Join
var _ api.Message
