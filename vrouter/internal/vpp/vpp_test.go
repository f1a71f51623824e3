package vpp_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/ikev2"
	"go.fd.io/govpp/binapi/ikev2_types"
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
	case *interfaces.CreateLoopbackInstance:
		return fmt.Sprintf("create_loopback_instance specified=%v instance=%d", m.IsSpecified, m.UserInstance)
	case *ip.IPTableFlush:
		return fmt.Sprintf("ip_table_flush table=%d ip6=%v", m.Table.TableID, m.Table.IsIP6)
	case *ikev2.Ikev2ProfileDump:
		return "ikev2_profile_dump"
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
		return fmt.Sprintf("sw_interface_dump filter=%v", m.NameFilterValid)
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
		fmt.Sprintf("create_loopback_instance specified=true instance=%d", table),
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
	return newProgrammerOn(t, c, rec), rec
}

// newProgrammerOn starts a Programmer on an existing mock VPP (a restarted vrouter).
func newProgrammerOn(t *testing.T, c api.Connection, rec *vpptest.Recorder) *vpp.Programmer {
	t.Helper()
	rec.Reset()
	p, err := vpp.New(c, vpp.Options{UplinkInterface: vpptest.Uplink, LocalAddress: netip.MustParseAddr(local)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = p.Close() })
	if got := describeAll(rec.Requests()); !slices.Equal(got, []string{"sw_interface_dump filter=false", "ikev2_profile_dump"}) {
		t.Fatalf("New sent %q, want the interface and profile dumps", got)
	}
	rec.Reset()
	return p
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

func TestApplyVPPErrors(t *testing.T) {
	b1 := connCreate("branch1", "203.0.113.9", psk1, 3, 7, "10.0.0.0-10.0.255.255", "192.168.1.0-192.168.2.255", "192.168.1.0/24", "192.168.2.0/24")
	b2 := connCreate("branch2", "203.0.113.10", psk2, 4, 7, "10.0.0.0-10.0.255.255", "172.16.0.0-172.31.255.255", "172.16.0.0/12")
	tests := []struct {
		name      string
		setup     *vrouterv1.WatchVRouterConfigResponse // applied successfully first (nil: none)
		failMsg   string
		cfg       *vrouterv1.WatchVRouterConfigResponse
		wantErr   []string // substrings of the error
		wantSent  []string // requests of the failing Apply
		wantRetry []string // requests of the retry with the same config
	}{
		{
			name:    "profile auth fails: the other connection is still created",
			failMsg: "ikev2_profile_set_auth",
			cfg:     config(7, branch1, branch2),
			wantErr: []string{`connection "branch1"`, "ikev2_profile_set_auth", "retval -1"},
			// branch1 stops after set_auth; branch2 gets the next tunnel index (4)
			wantSent:  concat(vrfCreate(7), b1[:7], b2),
			wantRetry: b1[6:],
		},
		{
			name:      "tunnel creation fails",
			failMsg:   "ipip_add_tunnel",
			cfg:       config(7, branch1),
			wantErr:   []string{`connection "branch1"`, "ipip_add_tunnel", "retval -1"},
			wantSent:  concat(vrfCreate(7), b1[:1]),
			wantRetry: b1,
		},
		{
			name:      "route fails: the first route is remembered",
			failMsg:   "ip_route_add_del",
			cfg:       config(7, branch1),
			wantErr:   []string{`connection "branch1"`, "ip_route_add_del"},
			wantSent:  concat(vrfCreate(7), b1[:14]),
			wantRetry: b1[13:],
		},
		{
			name:      "vrf creation fails: no connection is attempted",
			failMsg:   "create_loopback_instance",
			cfg:       config(7, branch1),
			wantErr:   []string{"vrf 7", "create_loopback_instance", "retval -1"},
			wantSent:  vrfCreate(7)[:3],
			wantRetry: concat(vrfCreate(7)[2:], b1),
		},
		{
			name:      "profile delete fails on removal: retried, tunnel kept until then",
			setup:     config(7, branch1),
			failMsg:   "ikev2_profile_add_del",
			cfg:       config(7),
			wantErr:   []string{`connection "branch1"`, "ikev2_profile_add_del", "retval -1"},
			wantSent:  connDelete("branch1", 3, 7, "192.168.1.0/24", "192.168.2.0/24")[:3],
			wantRetry: connDelete("branch1", 3, 7)[0:],
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, rec := newProgrammer(t)
			ctx := context.Background()
			if tt.setup != nil {
				if err := p.Apply(ctx, tt.setup); err != nil {
					t.Fatalf("setup Apply: %v", err)
				}
				rec.Reset()
			}
			rec.FailNext(tt.failMsg, -1)
			err := p.Apply(ctx, tt.cfg)
			if err == nil {
				t.Fatal("Apply succeeded, want the VPP error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			var apiErr *vpp.APIError
			if !errors.As(err, &apiErr) || apiErr.Message != tt.failMsg || apiErr.Retval != -1 {
				t.Errorf("error %v is not an *APIError for %s with retval -1 (got %+v)", err, tt.failMsg, apiErr)
			}
			diff(t, "failing apply", describeAll(rec.Requests()), tt.wantSent)
			rec.Reset()
			if err := p.Apply(ctx, tt.cfg); err != nil {
				t.Fatalf("retry Apply: %v", err)
			}
			diff(t, "retry", describeAll(rec.Requests()), tt.wantRetry)
			rec.Reset()
			if err := p.Apply(ctx, tt.cfg); err != nil {
				t.Fatalf("third Apply: %v", err)
			}
			diff(t, "third apply", describeAll(rec.Requests()), nil)
		})
	}
}

func TestApplyRejectsBadInput(t *testing.T) {
	tests := []struct {
		name    string
		cfg     *vrouterv1.WatchVRouterConfigResponse
		wantErr string
	}{
		{"nil config", nil, "config is nil"},
		{"no vrf", &vrouterv1.WatchVRouterConfigResponse{Version: 3}, "vrf is missing"},
		{"default table", config(0, branch1), "vrf.table_id must not be 0"},
		{"bad remote address", config(7, conn("b", "203.0.113.300", nil, nil, psk1)), `connection "b": remote_address`},
		{"hostname remote", config(7, conn("b", "vpn.example.com", nil, nil, psk1)), `connection "b": remote_address`},
		{"remote is us", config(7, conn("b", local, nil, nil, psk1)), `connection "b": remote_address`},
		{"ipv6 remote with ipv4 local", config(7, conn("b", "2001:db8::1", nil, nil, psk1)), `connection "b": remote_address`},
		{"bad local prefix", config(7, conn("b", "203.0.113.9", []string{"10.0.0.0/33"}, nil, psk1)), `connection "b": local_subnets[0]`},
		{"bad remote prefix", config(7, conn("b", "203.0.113.9", nil, []string{"10.0.0.0/8", "banana"}, psk1)), `connection "b": remote_subnets[1]`},
		{"mixed families one side", config(7, conn("b", "203.0.113.9", []string{"10.0.0.0/8", "fd00::/8"}, nil, psk1)), `connection "b": local_subnets[1]`},
		{"mixed families across sides", config(7, conn("b", "203.0.113.9", []string{"10.0.0.0/8"}, []string{"fd00::/8"}, psk1)), `connection "b": remote_subnets`},
		{"short psk", config(7, conn("b", "203.0.113.9", nil, nil, "short")), `connection "b": pre_shared_key`},
		{"empty name", config(7, conn("", "203.0.113.9", nil, nil, psk1)), "connections[0]: name"},
		{"name with space", config(7, conn("a b", "203.0.113.9", nil, nil, psk1)), `connection "a b": name`},
		{"name too long", config(7, conn(strings.Repeat("n", 64), "203.0.113.9", nil, nil, psk1)), ": name: longer than 63"},
		{"duplicate name", config(7, branch1, branch1), `connection "branch1": name: appears twice`},
		{"duplicate remote address", config(7, branch1, conn("b", "203.0.113.9", nil, nil, psk1)), `connection "b": remote_address: 203.0.113.9 is already connection "branch1"'s`},
		{"ike v1", config(7, &vrouterv1.IpsecConnection{Name: "b", RemoteAddress: "203.0.113.9", IkeVersion: 1, PreSharedKey: psk1}), `connection "b": ike_version`},
		// a good connection before the bad one is not applied either
		{"good then bad", config(7, branch1, conn("b", "203.0.113.9", nil, []string{"nope"}, psk1)), `connection "b": remote_subnets[0]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, rec := newProgrammer(t)
			err := p.Apply(context.Background(), tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Apply error = %v, want one containing %q", err, tt.wantErr)
			}
			if got := rec.Requests(); len(got) != 0 {
				t.Errorf("Apply sent %q for invalid input, want nothing", describeAll(got))
			}
			// The Programmer is still usable and starts from nothing.
			if err := p.Apply(context.Background(), config(7, branch2)); err != nil {
				t.Fatalf("Apply after the rejection: %v", err)
			}
			if n := len(rec.Requests()); n != len(vrfCreate(7))+14 {
				t.Errorf("Apply after the rejection sent %d requests, want %d", n, len(vrfCreate(7))+14)
			}
		})
	}
}

func TestStatus(t *testing.T) {
	const (
		up         = vrouterv1.ConnectionState_CONNECTION_STATE_UP
		connecting = vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING
		down       = vrouterv1.ConnectionState_CONNECTION_STATE_DOWN
	)
	branch3 := conn("branch3", "203.0.113.11", nil, []string{"192.168.3.0/24"}, psk1)
	tests := []struct {
		name    string
		saUp    []string // profiles with an authenticated IKE SA
		saInit  []string // profiles with an IKE SA still negotiating
		failMsg string   // makes branch3's creation fail
		want    map[string]vrouterv1.ConnectionState
	}{
		{"no SA", nil, nil, "", map[string]vrouterv1.ConnectionState{"branch1": connecting, "branch2": connecting, "branch3": connecting}},
		{"one SA", []string{"branch2"}, nil, "", map[string]vrouterv1.ConnectionState{"branch1": connecting, "branch2": up, "branch3": connecting}},
		{"all SAs", []string{"branch1", "branch2", "branch3"}, nil, "", map[string]vrouterv1.ConnectionState{"branch1": up, "branch2": up, "branch3": up}},
		{"SA of an unknown profile is ignored", []string{"other"}, nil, "", map[string]vrouterv1.ConnectionState{"branch1": connecting, "branch2": connecting, "branch3": connecting}},
		{"SA not yet authenticated is connecting", []string{"branch1"}, []string{"branch2", "branch3"}, "", map[string]vrouterv1.ConnectionState{"branch1": up, "branch2": connecting, "branch3": connecting}},
		{"failed connection is down", []string{"branch3"}, nil, "ipip_add_tunnel", map[string]vrouterv1.ConnectionState{"branch1": connecting, "branch2": connecting, "branch3": down}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, rec := newProgrammer(t)
			ctx := context.Background()
			if err := p.Apply(ctx, config(7, branch1, branch2)); err != nil {
				t.Fatal(err)
			}
			if tt.failMsg != "" {
				rec.FailNext(tt.failMsg, -1)
			}
			if err := p.Apply(ctx, config(7, branch1, branch2, branch3)); (err != nil) != (tt.failMsg != "") {
				t.Fatalf("Apply: %v", err)
			}
			for _, prof := range tt.saUp {
				rec.SetSAEstablished(prof, true)
			}
			for _, prof := range tt.saInit {
				rec.SetSAState(prof, ikev2_types.SA_INIT)
			}
			rec.Reset()
			got, err := p.Status(ctx)
			if err != nil {
				t.Fatalf("Status: %v", err)
			}
			if names := describeAll(rec.Requests()); !slices.Equal(names, []string{"ikev2_sa_v3_dump"}) {
				t.Errorf("Status sent %q, want one ikev2_sa_v3_dump", names)
			}
			var order []string
			for _, s := range got {
				order = append(order, s.GetName())
				if s.GetState() != tt.want[s.GetName()] {
					t.Errorf("%s: state %v, want %v", s.GetName(), s.GetState(), tt.want[s.GetName()])
				}
				if s.GetState() != down && s.GetLastChangeTime() == nil {
					t.Errorf("%s: no last_change_time", s.GetName())
				}
				if s.GetRxBytes() != 0 || s.GetTxBytes() != 0 {
					t.Errorf("%s: byte counters %d/%d, want 0 (not available)", s.GetName(), s.GetRxBytes(), s.GetTxBytes())
				}
			}
			if !slices.Equal(order, []string{"branch1", "branch2", "branch3"}) {
				t.Errorf("Status order %q, want config order", order)
			}
		})
	}
}

func TestStatusLastChange(t *testing.T) {
	p, rec := newProgrammer(t)
	ctx := context.Background()
	if err := p.Apply(ctx, config(7, branch1)); err != nil {
		t.Fatal(err)
	}
	first, err := p.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	again, err := p.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !again[0].GetLastChangeTime().AsTime().Equal(first[0].GetLastChangeTime().AsTime()) {
		t.Errorf("last_change_time moved without a state change: %v -> %v", first[0].GetLastChangeTime().AsTime(), again[0].GetLastChangeTime().AsTime())
	}
	rec.SetSAEstablished("branch1", true)
	upNow, err := p.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if upNow[0].GetState() != vrouterv1.ConnectionState_CONNECTION_STATE_UP || upNow[0].GetLastChangeTime().AsTime().Before(first[0].GetLastChangeTime().AsTime()) {
		t.Errorf("after the SA came up: %v", upNow[0])
	}
	rec.SetSAEstablished("branch1", false)
	downAgain, err := p.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if downAgain[0].GetState() != vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING {
		t.Errorf("after the SA went away: %v", downAgain[0])
	}
}

func TestNewErrors(t *testing.T) {
	c, _ := vpptest.NewMockVPP(t)
	tests := []struct {
		name    string
		conn    api.Connection
		o       vpp.Options
		wantErr string
	}{
		{"nil connection", nil, vpp.Options{UplinkInterface: vpptest.Uplink, LocalAddress: netip.MustParseAddr(local)}, "nil connection"},
		{"no local address", c, vpp.Options{UplinkInterface: vpptest.Uplink}, "local address"},
		{"no uplink name", c, vpp.Options{LocalAddress: netip.MustParseAddr(local)}, "uplink interface name is empty"},
		{"unknown uplink", c, vpp.Options{UplinkInterface: "GigabitEthernet0/9/0", LocalAddress: netip.MustParseAddr(local)}, `no interface named "GigabitEthernet0/9/0"`},
		{"uplink name is a prefix only", c, vpp.Options{UplinkInterface: "GigabitEthernet0/8", LocalAddress: netip.MustParseAddr(local)}, `no interface named "GigabitEthernet0/8"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := vpp.New(tt.conn, tt.o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("New error = %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestConnectWithoutVPP(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "api.sock")
	_, _, err := vpp.Connect(context.Background(), sock)
	if err == nil || !strings.Contains(err.Error(), "no VPP API socket at "+sock) {
		t.Fatalf("Connect error = %v, want one saying there is no VPP socket at %s", err, sock)
	}
}

func TestRestartReplacesLeftovers(t *testing.T) {
	c, rec := vpptest.NewMockVPP(t)
	ctx := context.Background()
	first := newProgrammerOn(t, c, rec)
	if err := first.Apply(ctx, config(7, branch1, branch2)); err != nil {
		t.Fatal(err)
	}
	_ = first.Close() // the vrouter restarts; VPP keeps its configuration

	second := newProgrammerOn(t, c, rec)
	if err := second.Apply(ctx, config(7, branch1)); err != nil {
		t.Fatalf("Apply after restart: %v", err)
	}
	// loopback was 2, tunnels 3 and 4; the new loopback is 5 and branch1's tunnel 6
	vrf := []string{
		"ip_table_add_del add=true table=7 ip6=false",
		"ip_table_add_del add=true table=7 ip6=true",
		"ip_table_flush table=7 ip6=false",
		"ip_table_flush table=7 ip6=true",
		"delete_loopback if=2",
	}
	vrf = append(vrf, strings.Split(strings.ReplaceAll(strings.Join(vrfCreate(7)[2:], "\n"), "if=2", "if=5"), "\n")...)
	b1 := connCreate("branch1", "203.0.113.9", psk1, 6, 7, "10.0.0.0-10.0.255.255", "192.168.1.0-192.168.2.255", "192.168.1.0/24", "192.168.2.0/24")
	b1[3] = "sw_interface_set_unnumbered if=5 unnumbered=6 add=true"
	diff(t, "apply after restart", describeAll(rec.Requests()), concat(
		[]string{"ikev2_profile_add_del branch1 add=false", "ipip_del_tunnel if=3", "ikev2_profile_add_del branch2 add=false", "ipip_del_tunnel if=4"},
		vrf, b1))

	want := map[uint32]string{vpptest.UplinkIndex: vpptest.Uplink, 5: "loop7", 6: "ipip6"}
	if got := rec.Interfaces(); !maps.Equal(got, want) {
		t.Errorf("VPP interfaces after restart %v, want %v (nothing leaked)", got, want)
	}
	rec.Reset()
	if err := second.Apply(ctx, config(7, branch1)); err != nil {
		t.Fatal(err)
	}
	diff(t, "same again", describeAll(rec.Requests()), nil)
}

func TestClosedAndConcurrentUse(t *testing.T) {
	p, rec := newProgrammer(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			cfg := config(7, branch1)
			if i%2 == 1 {
				cfg = config(7, branch1, branch2)
			}
			errs <- p.Apply(ctx, cfg)
		}()
		go func() {
			defer wg.Done()
			_, err := p.Status(ctx)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent use: %v", err)
		}
	}
	// Whatever the interleaving, VPP ends with one loopback and one tunnel per connection.
	if err := p.Apply(ctx, config(7, branch1, branch2)); err != nil {
		t.Fatal(err)
	}
	if ifs := rec.Interfaces(); len(ifs) != 4 {
		t.Errorf("VPP interfaces %v, want the uplink, the loopback and two tunnels", ifs)
	}
	rec.Reset()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Apply(ctx, config(7, branch1)); !errors.Is(err, vpp.ErrClosed) {
		t.Errorf("Apply after Close = %v, want ErrClosed", err)
	}
	if _, err := p.Status(ctx); !errors.Is(err, vpp.ErrClosed) {
		t.Errorf("Status after Close = %v, want ErrClosed", err)
	}
	if n := rec.Names(); len(n) != 0 {
		t.Errorf("sent %q after Close", n)
	}
}
