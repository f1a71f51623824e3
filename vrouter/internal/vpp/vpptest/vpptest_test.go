package vpptest_test

import (
	"context"
	"slices"
	"testing"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/ikev2"
	"go.fd.io/govpp/binapi/ikev2_types"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ipip"
	"go.fd.io/govpp/binapi/memclnt"

	"github.com/cloudvlan/cloudvlan/vrouter/internal/vpp/vpptest"
)

// dumpAll collects a dump's details through a govpp stream, as a client of real VPP does.
func dumpAll(t *testing.T, c api.Connection, req api.Message) []api.Message {
	t.Helper()
	s, err := c.NewStream(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	if err := s.SendMsg(req); err != nil {
		t.Fatal(err)
	}
	if err := s.SendMsg(&memclnt.ControlPing{}); err != nil {
		t.Fatal(err)
	}
	var out []api.Message
	for {
		m, err := s.RecvMsg()
		if err != nil {
			t.Fatal(err)
		}
		if m.GetMessageName() == "control_ping_reply" {
			return out
		}
		out = append(out, m)
	}
}

func TestMockVPP(t *testing.T) {
	c, rec := vpptest.NewMockVPP(t)
	ctx := context.Background()

	// Created interfaces get fresh indexes and appear in dumps; a failure creates nothing.
	r := &ipip.IpipAddTunnelReply{}
	if err := c.Invoke(ctx, &ipip.IpipAddTunnel{}, r); err != nil || r.Retval != 0 || r.SwIfIndex != 2 {
		t.Fatalf("ipip_add_tunnel: %v %+v, want sw_if_index 2", err, r)
	}
	rec.FailNext("ipip_add_tunnel", -6)
	if err := c.Invoke(ctx, &ipip.IpipAddTunnel{}, r); err != nil || r.Retval != -6 {
		t.Fatalf("failed ipip_add_tunnel: %v %+v, want retval -6", err, r)
	}
	lr := &interfaces.CreateLoopbackReply{}
	if err := c.Invoke(ctx, &interfaces.CreateLoopback{}, lr); err != nil || lr.SwIfIndex != 3 {
		t.Fatalf("create_loopback: %v %+v, want sw_if_index 3", err, lr)
	}
	var names []string
	for _, m := range dumpAll(t, c, &interfaces.SwInterfaceDump{SwIfIndex: ^interface_types.InterfaceIndex(0)}) {
		names = append(names, m.(*interfaces.SwInterfaceDetails).InterfaceName)
	}
	if want := []string{vpptest.Uplink, "ipip2", "loop3"}; !slices.Equal(names, want) {
		t.Errorf("interfaces %q, want %q", names, want)
	}

	// FailNext applies to one request only; other messages get retval 0.
	rec.FailNext("ikev2_profile_add_del", -1)
	pr := &ikev2.Ikev2ProfileAddDelReply{}
	for i, want := range []int32{-1, 0} {
		if err := c.Invoke(ctx, &ikev2.Ikev2ProfileAddDel{Name: "p", IsAdd: true}, pr); err != nil || pr.Retval != want {
			t.Fatalf("profile add %d: %v retval %d, want %d", i, err, pr.Retval, want)
		}
	}

	// SAs as set.
	rec.SetSAEstablished("p", true)
	rec.SetSAState("q", ikev2_types.SA_INIT)
	got := map[string]ikev2_types.Ikev2State{}
	for _, m := range dumpAll(t, c, &ikev2.Ikev2SaV3Dump{}) {
		d := m.(*ikev2.Ikev2SaV3Details)
		got[d.Sa.ProfileName] = d.Sa.State
	}
	if len(got) != 2 || got["p"] != ikev2_types.AUTHENTICATED || got["q"] != ikev2_types.SA_INIT {
		t.Errorf("SAs %v, want p AUTHENTICATED and q SA_INIT", got)
	}

	want := []string{"ipip_add_tunnel", "ipip_add_tunnel", "create_loopback", "sw_interface_dump",
		"ikev2_profile_add_del", "ikev2_profile_add_del", "ikev2_sa_v3_dump"}
	if n := rec.Names(); !slices.Equal(n, want) {
		t.Errorf("recorded %q, want %q", n, want)
	}
	if p := rec.Requests()[4].Msg.(*ikev2.Ikev2ProfileAddDel); p.Name != "p" || !p.IsAdd {
		t.Errorf("recorded fields %+v, want the profile name and is_add", p)
	}
	rec.Reset()
	if n := rec.Names(); len(n) != 0 {
		t.Errorf("after Reset: %q", n)
	}
}
