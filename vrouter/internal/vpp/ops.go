package vpp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/fib_types"
	"go.fd.io/govpp/binapi/ikev2"
	"go.fd.io/govpp/binapi/ikev2_types"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip"
	"go.fd.io/govpp/binapi/ip_types"
	"go.fd.io/govpp/binapi/ipip"
	"go.fd.io/govpp/binapi/memclnt"
	"go.fd.io/govpp/binapi/tunnel_types"
)

// IKEv2 constants from VPP's ikev2 plugin (ikev2.h).
const (
	ikev2AuthSharedKeyMIC = 2 // IKEV2_AUTH_METHOD_SHARED_KEY_MIC
	ikev2IDIPv4Addr       = 1 // IKEV2_ID_TYPE_ID_IPV4_ADDR
	ikev2IDIPv6Addr       = 5 // IKEV2_ID_TYPE_ID_IPV6_ADDR
)

// vrfLoopbackAddr is the address of the per-VRF loopback the tunnels borrow (unnumbered) so that VPP
// accepts IPv4 on them; link-local, it never leaves the tenant VRF.
var vrfLoopbackAddr = netip.MustParsePrefix("169.254.0.1/32")

// usedMessages are the requests Programmer sends, checked for compatibility with VPP in New.
var usedMessages = []api.Message{
	(*ip.IPTableAddDel)(nil), (*ip.IPTableAddDelReply)(nil),
	(*ip.IPRouteAddDel)(nil), (*ip.IPRouteAddDelReply)(nil),
	(*interfaces.SwInterfaceDump)(nil), (*interfaces.SwInterfaceDetails)(nil),
	(*interfaces.CreateLoopbackInstance)(nil), (*interfaces.CreateLoopbackInstanceReply)(nil),
	(*ip.IPTableFlush)(nil), (*ip.IPTableFlushReply)(nil),
	(*ikev2.Ikev2ProfileDump)(nil), (*ikev2.Ikev2ProfileDetails)(nil),
	(*interfaces.DeleteLoopback)(nil), (*interfaces.DeleteLoopbackReply)(nil),
	(*interfaces.SwInterfaceSetTable)(nil), (*interfaces.SwInterfaceSetTableReply)(nil),
	(*interfaces.SwInterfaceAddDelAddress)(nil), (*interfaces.SwInterfaceAddDelAddressReply)(nil),
	(*interfaces.SwInterfaceSetFlags)(nil), (*interfaces.SwInterfaceSetFlagsReply)(nil),
	(*interfaces.SwInterfaceSetUnnumbered)(nil), (*interfaces.SwInterfaceSetUnnumberedReply)(nil),
	(*ipip.IpipAddTunnel)(nil), (*ipip.IpipAddTunnelReply)(nil),
	(*ipip.IpipDelTunnel)(nil), (*ipip.IpipDelTunnelReply)(nil),
	(*ikev2.Ikev2ProfileAddDel)(nil), (*ikev2.Ikev2ProfileAddDelReply)(nil),
	(*ikev2.Ikev2ProfileSetAuth)(nil), (*ikev2.Ikev2ProfileSetAuthReply)(nil),
	(*ikev2.Ikev2ProfileSetID)(nil), (*ikev2.Ikev2ProfileSetIDReply)(nil),
	(*ikev2.Ikev2ProfileSetTs)(nil), (*ikev2.Ikev2ProfileSetTsReply)(nil),
	(*ikev2.Ikev2SetResponder)(nil), (*ikev2.Ikev2SetResponderReply)(nil),
	(*ikev2.Ikev2SetTunnelInterface)(nil), (*ikev2.Ikev2SetTunnelInterfaceReply)(nil),
	(*ikev2.Ikev2SaV3Dump)(nil), (*ikev2.Ikev2SaV3Details)(nil),
}

// call sends req, waits for reply and turns a non-zero retval into an *APIError about object.
func (p *Programmer) call(ctx context.Context, object string, req, reply api.Message) error {
	if err := p.conn.Invoke(ctx, req, reply); err != nil {
		return fmt.Errorf("%s: %s: %w", object, req.GetMessageName(), err)
	}
	if rv := retval(reply); rv != 0 {
		return &APIError{Message: req.GetMessageName(), Object: object, Retval: rv, Err: api.RetvalToVPPApiError(rv)}
	}
	return nil
}

// retval reads the Retval field every binapi reply has.
func retval(reply api.Message) int32 {
	v := reflect.ValueOf(reply)
	if v.Kind() == reflect.Pointer {
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return 0
	}
	f := v.FieldByName("Retval")
	if !f.IsValid() || f.Kind() != reflect.Int32 {
		return 0
	}
	return int32(f.Int())
}

// dump sends a dump request and passes each details message to each until VPP's control ping reply ends
// the list.
func dump(ctx context.Context, conn api.Connection, req api.Message, each func(api.Message)) error {
	s, err := conn.NewStream(ctx)
	if err != nil {
		return fmt.Errorf("%s: open stream: %w", req.GetMessageName(), err)
	}
	defer func() { _ = s.Close() }()
	if err := s.SendMsg(req); err != nil {
		return fmt.Errorf("%s: %w", req.GetMessageName(), err)
	}
	if err := s.SendMsg(&memclnt.ControlPing{}); err != nil {
		return fmt.Errorf("%s: control_ping: %w", req.GetMessageName(), err)
	}
	for {
		m, err := s.RecvMsg()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: %w", req.GetMessageName(), err)
		}
		if m.GetMessageName() == "control_ping_reply" {
			return nil
		}
		each(m)
	}
}

// listInterfaces returns VPP's interfaces by name.
func listInterfaces(ctx context.Context, conn api.Connection) (map[string]interface_types.InterfaceIndex, error) {
	out := map[string]interface_types.InterfaceIndex{}
	err := dump(ctx, conn, &interfaces.SwInterfaceDump{SwIfIndex: ^interface_types.InterfaceIndex(0)}, func(m api.Message) {
		if d, ok := m.(*interfaces.SwInterfaceDetails); ok {
			out[d.InterfaceName] = d.SwIfIndex
		}
	})
	return out, err
}

// listProfiles returns VPP's IKEv2 profiles and their tunnel interfaces (~0 when unset).
func listProfiles(ctx context.Context, conn api.Connection) (map[string]uint32, error) {
	out := map[string]uint32{}
	err := dump(ctx, conn, &ikev2.Ikev2ProfileDump{}, func(m api.Message) {
		if d, ok := m.(*ikev2.Ikev2ProfileDetails); ok {
			out[d.Profile.Name] = d.Profile.TunItf
		}
	})
	return out, err
}

// loopbackName is the name VPP gives the tenant VRF's loopback (instance = table id), which lets a
// restarted vrouter find the one it created before.
func loopbackName(table uint32) string { return fmt.Sprintf("loop%d", table) }

func toAddress(a netip.Addr) ip_types.Address {
	a = a.Unmap()
	if a.Is4() {
		return ip_types.Address{Af: ip_types.ADDRESS_IP4, Un: ip_types.AddressUnionIP4(a.As4())}
	}
	return ip_types.Address{Af: ip_types.ADDRESS_IP6, Un: ip_types.AddressUnionIP6(a.As16())}
}

func toPrefix(p netip.Prefix) ip_types.Prefix {
	return ip_types.Prefix{Address: toAddress(p.Addr()), Len: uint8(p.Bits())}
}

func nhProto(a netip.Addr) fib_types.FibPathNhProto {
	if a.Is4() {
		return fib_types.FIB_API_PATH_NH_PROTO_IP4
	}
	return fib_types.FIB_API_PATH_NH_PROTO_IP6
}

// ikeID is a profile identity: the address itself, as VPP's ID_IPV4_ADDR / ID_IPV6_ADDR want it.
func ikeID(name string, local bool, a netip.Addr) *ikev2.Ikev2ProfileSetID {
	t := uint8(ikev2IDIPv4Addr)
	if !a.Is4() {
		t = ikev2IDIPv6Addr
	}
	b := a.AsSlice()
	return &ikev2.Ikev2ProfileSetID{Name: name, IsLocal: local, IDType: t, DataLen: uint32(len(b)), Data: b}
}

// trafficSelector covers the prefixes (all ports and protocols); fallback picks the family when empty.
func trafficSelector(name string, local bool, ps []netip.Prefix, fallback netip.Addr) *ikev2.Ikev2ProfileSetTs {
	start, end := selectorRange(ps, fallback)
	return &ikev2.Ikev2ProfileSetTs{Name: name, Ts: ikev2_types.Ikev2Ts{
		IsLocal: local, ProtocolID: 0, StartPort: 0, EndPort: 0xffff,
		StartAddr: toAddress(start), EndAddr: toAddress(end),
	}}
}

func route(add bool, table uint32, p netip.Prefix, via interface_types.InterfaceIndex) *ip.IPRouteAddDel {
	return &ip.IPRouteAddDel{IsAdd: add, Route: ip.IPRoute{
		TableID: table, Prefix: toPrefix(p), NPaths: 1,
		Paths: []fib_types.FibPath{{
			SwIfIndex: uint32(via), TableID: table, Weight: 1,
			Type: fib_types.FIB_API_PATH_TYPE_NORMAL, Proto: nhProto(p.Addr()),
		}},
	}}
}

func ipipTunnel(src, dst netip.Addr) *ipip.IpipAddTunnel {
	return &ipip.IpipAddTunnel{Tunnel: ipip.IpipTunnel{
		Instance: ^uint32(0), Src: toAddress(src), Dst: toAddress(dst), TableID: 0,
		Flags: tunnel_types.TUNNEL_API_ENCAP_DECAP_FLAG_NONE, Mode: tunnel_types.TUNNEL_API_MODE_P2P,
	}}
}
