// Package vpp programs the vrouter's data plane: it turns the controller's desired IPsec configuration
// (one tenant VRF, one IKEv2 connection per legacy device) into VPP binary API calls through govpp, keeps
// track of what it created and reports each connection's state.
//
// Per tenant VRF it creates the IPv4 and IPv6 tables and a loopback in them (169.254.0.1/32) that the
// tunnels borrow as unnumbered interfaces. Per connection it creates a route-based tunnel: an ipip
// tunnel from Options.LocalAddress to the device, placed in the tenant VRF and admin up; an IKEv2
// profile named after the connection (pre-shared key, address identities, traffic selectors, responder
// on the uplink, the ipip tunnel as its tunnel interface); and one route per remote subnet in the
// tenant VRF via the tunnel.
package vpp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/ikev2"
	"go.fd.io/govpp/binapi/ikev2_types"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip"
	"go.fd.io/govpp/binapi/ip_types"
	"go.fd.io/govpp/binapi/ipip"
	"google.golang.org/protobuf/types/known/timestamppb"

	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// Options say where the vrouter meets its legacy devices.
type Options struct {
	// UplinkInterface is the VPP interface name facing the devices (e.g. "GigabitEthernet0/8/0"); it is
	// looked up by name when the Programmer is created.
	UplinkInterface string
	// LocalAddress is this vrouter's public address: the IKE identity and the tunnels' source.
	LocalAddress netip.Addr
	// Log receives one line per object created or deleted; nil discards.
	Log *slog.Logger
}

// Programmer applies desired configurations to VPP. It is meant for use by one goroutine at a time (the
// vrouter's config loop); its methods also serialise on an internal mutex, so a Status call from another
// goroutine waits for a running Apply instead of racing it.
//
// The Programmer remembers every VPP object it created (tables, loopback, tunnels, profiles, routes) so
// that the next Apply sends only the difference and a failed Apply can be retried or undone. Objects
// left by an earlier run (after a vrouter restart with VPP still running) are found in New: every IKEv2
// profile and its tunnel are deleted by the first Apply, and a tenant VRF's loopback is deleted and its
// routes flushed before the VRF is rebuilt. VPP is assumed to be dedicated to the vrouter.
type Programmer struct {
	conn   api.Connection
	log    *slog.Logger
	local  netip.Addr
	uplink interface_types.InterfaceIndex
	now    func() time.Time

	mu     sync.Mutex
	closed bool
	loops  map[uint32]interface_types.InterfaceIndex // loopbacks left by an earlier run, by table id
	vrf    *vrfState
	conns  map[string]*connState
	order  []string // configured connections, in config order
}

// vrfState is what exists of the tenant VRF; done counts completed vrfSteps.
type vrfState struct {
	spec    vrfSpec
	done    int
	loop    interface_types.InterfaceIndex
	hasLoop bool
	dying   bool // teardown started: finish it before anything else
	// leftover is the loopback an earlier run left for this table: it is deleted and the table's
	// routes are flushed before the VRF is rebuilt.
	leftover    interface_types.InterfaceIndex
	hasLeftover bool
}

// connState is what exists of one connection; done counts completed connSteps.
type connState struct {
	spec       connSpec
	done       int
	total      int
	tunnel     interface_types.InterfaceIndex
	hasTunnel  bool
	hasProfile bool
	routes     []netip.Prefix // routes present in VPP
	dying      bool           // teardown started: finish it before anything else

	state vrouterv1.ConnectionState
	since time.Time
}

func (c *connState) complete() bool { return !c.dying && c.done == c.total && c.total > 0 }

// setupTimeout bounds New's conversation with VPP.
const setupTimeout = 10 * time.Second

// New returns a Programmer that talks to VPP over conn. It checks that VPP knows the messages the
// Programmer sends (when conn is a govpp core connection) and looks up the uplink interface.
func New(conn api.Connection, o Options) (*Programmer, error) {
	if conn == nil {
		return nil, errors.New("vpp: nil connection")
	}
	if !o.LocalAddress.IsValid() || o.LocalAddress.IsUnspecified() || o.LocalAddress.Zone() != "" {
		return nil, fmt.Errorf("vpp: local address %q is not a usable IP address", o.LocalAddress)
	}
	if o.UplinkInterface == "" {
		return nil, errors.New("vpp: uplink interface name is empty")
	}
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cc, ok := conn.(interface {
		NewAPIChannel() (api.Channel, error)
	}); ok {
		ch, err := cc.NewAPIChannel()
		if err != nil {
			return nil, fmt.Errorf("vpp: open API channel: %w", err)
		}
		err = ch.CheckCompatiblity(usedMessages...)
		ch.Close()
		if err != nil {
			return nil, fmt.Errorf("vpp: VPP lacks messages the vrouter needs (is the ikev2 plugin loaded?): %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	ifs, err := listInterfaces(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("vpp: list interfaces: %w", err)
	}
	uplink, ok := ifs[o.UplinkInterface]
	if !ok {
		return nil, fmt.Errorf("vpp: uplink interface: VPP has no interface named %q", o.UplinkInterface)
	}
	profiles, err := listProfiles(ctx, conn)
	if err != nil {
		return nil, fmt.Errorf("vpp: list IKEv2 profiles: %w", err)
	}
	p := &Programmer{
		conn: conn, log: log, local: o.LocalAddress.Unmap(), uplink: uplink, now: time.Now,
		conns: make(map[string]*connState), loops: map[uint32]interface_types.InterfaceIndex{},
	}
	for name, idx := range ifs {
		var table uint32
		if _, err := fmt.Sscanf(name, "loop%d", &table); err == nil && loopbackName(table) == name {
			p.loops[table] = idx
		}
	}
	for name, tun := range profiles {
		st := &connState{dying: true, hasProfile: true}
		if tun != ^uint32(0) {
			st.tunnel, st.hasTunnel = interface_types.InterfaceIndex(tun), true
		}
		p.conns[name] = st
		log.Info("vpp: found IKEv2 profile from an earlier run, it will be replaced", "connection", name, "tunnel_sw_if_index", tun)
	}
	log.Info("vpp: programmer ready", "uplink", o.UplinkInterface, "uplink_sw_if_index", uint32(uplink), "local_address", o.LocalAddress)
	return p, nil
}

// Apply makes VPP match cfg. Input is validated first: an invalid configuration returns an error naming
// the connection and field, and nothing is sent. Then only the difference with what the Programmer
// created before is sent: removed and changed connections are deleted (routes, profile, tunnel), the
// tenant VRF is created once (and rebuilt with every connection if its table id changes), and new and
// changed connections are created. A failed VPP request (an *APIError) stops that connection only; the
// others are still applied and the errors are joined. Applying the same configuration again sends
// nothing, and applying it after a failure continues where the failure stopped.
func (p *Programmer) Apply(ctx context.Context, cfg *vrouterv1.WatchVRouterConfigResponse) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	want, err := validate(cfg, p.local)
	if err != nil {
		return fmt.Errorf("vpp: invalid config: %w", err)
	}
	p.order = want.order

	// A new table id moves every connection: tear everything down first.
	if p.vrf != nil && (p.vrf.spec != want.vrf || p.vrf.dying) {
		for _, name := range sortedKeys(p.conns) {
			if err := p.deleteConn(ctx, name); err != nil {
				return err
			}
		}
		if err := p.deleteVRF(ctx); err != nil {
			return err
		}
	}

	var errs []error
	failed := map[string]bool{}
	for _, name := range sortedKeys(p.conns) {
		st := p.conns[name]
		ws, ok := want.conns[name]
		if ok && !st.dying && st.spec.equal(ws) {
			continue
		}
		if err := p.deleteConn(ctx, name); err != nil {
			errs = append(errs, err)
			failed[name] = true
		}
	}

	if err := p.ensureVRF(ctx, want.vrf); err != nil {
		return errors.Join(append(errs, err)...)
	}

	for _, name := range want.order {
		if failed[name] {
			continue
		}
		if err := p.ensureConn(ctx, want.vrf.tableID, want.conns[name]); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// step is one VPP request of a creation sequence.
type step struct {
	name string
	run  func(context.Context) error
}

func (p *Programmer) vrfSteps(s vrfSpec) []step {
	obj := fmt.Sprintf("vrf %d", s.tableID)
	name := "cvlan-" + s.tenantID
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	table := func(ip6 bool) step {
		return step{"ip_table_add_del", func(ctx context.Context) error {
			return p.call(ctx, obj, &ip.IPTableAddDel{IsAdd: true, Table: ip.IPTable{TableID: s.tableID, IsIP6: ip6, Name: name}}, &ip.IPTableAddDelReply{})
		}}
	}
	setTable := func(ip6 bool) step {
		return step{"sw_interface_set_table", func(ctx context.Context) error {
			return p.call(ctx, obj, &interfaces.SwInterfaceSetTable{SwIfIndex: p.vrf.loop, IsIPv6: ip6, VrfID: s.tableID}, &interfaces.SwInterfaceSetTableReply{})
		}}
	}
	flush := func(ip6 bool) step {
		return step{"ip_table_flush", func(ctx context.Context) error {
			return p.call(ctx, obj, &ip.IPTableFlush{Table: ip.IPTable{TableID: s.tableID, IsIP6: ip6}}, &ip.IPTableFlushReply{})
		}}
	}
	steps := []step{table(false), table(true)}
	if p.vrf.hasLeftover {
		steps = append(steps, flush(false), flush(true), step{"delete_loopback", func(ctx context.Context) error {
			if err := p.call(ctx, obj, &interfaces.DeleteLoopback{SwIfIndex: p.vrf.leftover}, &interfaces.DeleteLoopbackReply{}); err != nil {
				return err
			}
			delete(p.loops, s.tableID)
			return nil
		}})
	}
	return append(steps,
		step{"create_loopback_instance", func(ctx context.Context) error {
			r := &interfaces.CreateLoopbackInstanceReply{}
			if err := p.call(ctx, obj, &interfaces.CreateLoopbackInstance{IsSpecified: true, UserInstance: s.tableID}, r); err != nil {
				return err
			}
			p.vrf.loop, p.vrf.hasLoop = r.SwIfIndex, true
			return nil
		}},
		setTable(false),
		setTable(true),
		step{"sw_interface_add_del_address", func(ctx context.Context) error {
			return p.call(ctx, obj, &interfaces.SwInterfaceAddDelAddress{
				SwIfIndex: p.vrf.loop, IsAdd: true,
				Prefix: ip_types.AddressWithPrefix(toPrefix(vrfLoopbackAddr)),
			}, &interfaces.SwInterfaceAddDelAddressReply{})
		}},
		step{"sw_interface_set_flags", func(ctx context.Context) error {
			return p.call(ctx, obj, &interfaces.SwInterfaceSetFlags{SwIfIndex: p.vrf.loop, Flags: interface_types.IF_STATUS_API_FLAG_ADMIN_UP}, &interfaces.SwInterfaceSetFlagsReply{})
		}},
	)
}

// ensureVRF creates what is missing of the tenant VRF.
func (p *Programmer) ensureVRF(ctx context.Context, s vrfSpec) error {
	if p.vrf == nil {
		p.vrf = &vrfState{spec: s}
		p.vrf.leftover, p.vrf.hasLeftover = p.loops[s.tableID]
	}
	steps := p.vrfSteps(s)
	if p.vrf.done == len(steps) {
		return nil
	}
	for i := p.vrf.done; i < len(steps); i++ {
		if err := steps[i].run(ctx); err != nil {
			return fmt.Errorf("vpp: create %w", err)
		}
		p.vrf.done = i + 1
	}
	p.log.Info("vpp: tenant vrf created", "table_id", s.tableID, "tenant", s.tenantID, "loopback_sw_if_index", uint32(p.vrf.loop))
	return nil
}

// deleteVRF removes the loopback and the tables.
func (p *Programmer) deleteVRF(ctx context.Context) error {
	v := p.vrf
	v.dying = true
	obj := fmt.Sprintf("vrf %d", v.spec.tableID)
	if v.hasLoop {
		if err := p.call(ctx, obj, &interfaces.DeleteLoopback{SwIfIndex: v.loop}, &interfaces.DeleteLoopbackReply{}); err != nil {
			return fmt.Errorf("vpp: delete %w", err)
		}
		v.hasLoop = false
	}
	for _, ip6 := range []bool{true, false} {
		idx := 0 // tables are steps 0 (IPv4) and 1 (IPv6)
		if ip6 {
			idx = 1
		}
		if v.done <= idx {
			continue
		}
		if err := p.call(ctx, obj, &ip.IPTableAddDel{IsAdd: false, Table: ip.IPTable{TableID: v.spec.tableID, IsIP6: ip6}}, &ip.IPTableAddDelReply{}); err != nil {
			return fmt.Errorf("vpp: delete %w", err)
		}
		v.done = idx
	}
	p.log.Info("vpp: tenant vrf deleted", "table_id", v.spec.tableID)
	p.vrf = nil
	return nil
}

func (p *Programmer) connSteps(table uint32, s connSpec, st *connState) []step {
	obj := fmt.Sprintf("connection %q", s.name)
	call := func(req, reply api.Message) func(context.Context) error {
		return func(ctx context.Context) error { return p.call(ctx, obj, req, reply) }
	}
	setTable := func(ip6 bool) step {
		return step{"sw_interface_set_table", func(ctx context.Context) error {
			return p.call(ctx, obj, &interfaces.SwInterfaceSetTable{SwIfIndex: st.tunnel, IsIPv6: ip6, VrfID: table}, &interfaces.SwInterfaceSetTableReply{})
		}}
	}
	// An empty side covers the whole family of the other side (or of the tunnel when both are empty).
	localFam, remoteFam := s.remote, s.remote
	if len(s.remSub) > 0 {
		localFam = s.remSub[0].Addr()
	}
	if len(s.local) > 0 {
		remoteFam = s.local[0].Addr()
	}
	steps := []step{
		{"ipip_add_tunnel", func(ctx context.Context) error {
			r := &ipip.IpipAddTunnelReply{}
			if err := p.call(ctx, obj, ipipTunnel(p.local, s.remote), r); err != nil {
				return err
			}
			st.tunnel, st.hasTunnel = r.SwIfIndex, true
			return nil
		}},
		setTable(false),
		setTable(true),
		{"sw_interface_set_unnumbered", func(ctx context.Context) error {
			return p.call(ctx, obj, &interfaces.SwInterfaceSetUnnumbered{SwIfIndex: p.vrf.loop, UnnumberedSwIfIndex: st.tunnel, IsAdd: true}, &interfaces.SwInterfaceSetUnnumberedReply{})
		}},
		{"sw_interface_set_flags", func(ctx context.Context) error {
			return p.call(ctx, obj, &interfaces.SwInterfaceSetFlags{SwIfIndex: st.tunnel, Flags: interface_types.IF_STATUS_API_FLAG_ADMIN_UP}, &interfaces.SwInterfaceSetFlagsReply{})
		}},
		{"ikev2_profile_add_del", func(ctx context.Context) error {
			if err := p.call(ctx, obj, &ikev2.Ikev2ProfileAddDel{Name: s.name, IsAdd: true}, &ikev2.Ikev2ProfileAddDelReply{}); err != nil {
				return err
			}
			st.hasProfile = true
			return nil
		}},
		{"ikev2_profile_set_auth", call(&ikev2.Ikev2ProfileSetAuth{
			Name: s.name, AuthMethod: ikev2AuthSharedKeyMIC, IsHex: false, DataLen: uint32(len(s.psk)), Data: []byte(s.psk),
		}, &ikev2.Ikev2ProfileSetAuthReply{})},
		{"ikev2_profile_set_id", call(ikeID(s.name, true, p.local), &ikev2.Ikev2ProfileSetIDReply{})},
		{"ikev2_profile_set_id", call(ikeID(s.name, false, s.remote), &ikev2.Ikev2ProfileSetIDReply{})},
		{"ikev2_profile_set_ts", call(trafficSelector(s.name, true, s.local, localFam), &ikev2.Ikev2ProfileSetTsReply{})},
		{"ikev2_profile_set_ts", call(trafficSelector(s.name, false, s.remSub, remoteFam), &ikev2.Ikev2ProfileSetTsReply{})},
		{"ikev2_set_responder", call(&ikev2.Ikev2SetResponder{Name: s.name, Responder: ikev2_types.Ikev2Responder{
			SwIfIndex: p.uplink, Addr: toAddress(s.remote),
		}}, &ikev2.Ikev2SetResponderReply{})},
		{"ikev2_set_tunnel_interface", func(ctx context.Context) error {
			return p.call(ctx, obj, &ikev2.Ikev2SetTunnelInterface{Name: s.name, SwIfIndex: st.tunnel}, &ikev2.Ikev2SetTunnelInterfaceReply{})
		}},
	}
	for _, pfx := range s.remSub {
		steps = append(steps, step{"ip_route_add_del", func(ctx context.Context) error {
			if err := p.call(ctx, obj, route(true, table, pfx, st.tunnel), &ip.IPRouteAddDelReply{}); err != nil {
				return err
			}
			st.routes = append(st.routes, pfx)
			return nil
		}})
	}
	return steps
}

// ensureConn creates what is missing of one connection.
func (p *Programmer) ensureConn(ctx context.Context, table uint32, s connSpec) error {
	st := p.conns[s.name]
	if st == nil {
		st = &connState{spec: s, state: vrouterv1.ConnectionState_CONNECTION_STATE_DOWN, since: p.now()}
		p.conns[s.name] = st
	}
	steps := p.connSteps(table, s, st)
	st.total = len(steps)
	if st.done == st.total {
		return nil
	}
	for i := st.done; i < len(steps); i++ {
		if err := steps[i].run(ctx); err != nil {
			return fmt.Errorf("vpp: create %w", err)
		}
		st.done = i + 1
	}
	st.state, st.since = vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING, p.now()
	p.log.Info("vpp: connection created", "connection", s.name, "remote", s.remote, "tunnel_sw_if_index", uint32(st.tunnel), "routes", len(st.routes))
	return nil
}

// deleteConn removes one connection's routes, profile and tunnel, remembering what is left on failure.
func (p *Programmer) deleteConn(ctx context.Context, name string) error {
	st := p.conns[name]
	st.dying = true
	obj := fmt.Sprintf("connection %q", name)
	table := uint32(0)
	if p.vrf != nil {
		table = p.vrf.spec.tableID
	}
	for len(st.routes) > 0 {
		pfx := st.routes[len(st.routes)-1]
		if err := p.call(ctx, obj, route(false, table, pfx, st.tunnel), &ip.IPRouteAddDelReply{}); err != nil {
			return fmt.Errorf("vpp: delete %w", err)
		}
		st.routes = st.routes[:len(st.routes)-1]
	}
	if st.hasProfile {
		if err := p.call(ctx, obj, &ikev2.Ikev2ProfileAddDel{Name: name, IsAdd: false}, &ikev2.Ikev2ProfileAddDelReply{}); err != nil {
			return fmt.Errorf("vpp: delete %w", err)
		}
		st.hasProfile = false
	}
	if st.hasTunnel {
		if err := p.call(ctx, obj, &ipip.IpipDelTunnel{SwIfIndex: st.tunnel}, &ipip.IpipDelTunnelReply{}); err != nil {
			return fmt.Errorf("vpp: delete %w", err)
		}
		st.hasTunnel = false
	}
	delete(p.conns, name)
	p.log.Info("vpp: connection deleted", "connection", name)
	return nil
}

// Status returns one entry per configured connection, in config order: UP when VPP holds an
// authenticated IKE SA for the connection's profile (ikev2_sa_v3_dump), CONNECTING when the connection
// is programmed but has none, DOWN when programming it failed. last_change_time is when this
// Programmer first saw the current state. rx_bytes and tx_bytes are 0: VPP's binary API does not carry
// IPsec byte counters (they live in the stats segment, which this package does not read yet).
func (p *Programmer) Status(ctx context.Context) ([]*vrouterv1.ConnectionStatus, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	up := map[string]bool{}
	if len(p.order) > 0 {
		err := dump(ctx, p.conn, &ikev2.Ikev2SaV3Dump{}, func(m api.Message) {
			if d, ok := m.(*ikev2.Ikev2SaV3Details); ok && d.Sa.State == ikev2_types.AUTHENTICATED {
				up[d.Sa.ProfileName] = true
			}
		})
		if err != nil {
			return nil, fmt.Errorf("vpp: status: %w", err)
		}
	}
	now := p.now()
	out := make([]*vrouterv1.ConnectionStatus, 0, len(p.order))
	for _, name := range p.order {
		st := p.conns[name]
		if st == nil {
			out = append(out, &vrouterv1.ConnectionStatus{Name: name, State: vrouterv1.ConnectionState_CONNECTION_STATE_DOWN})
			continue
		}
		s := vrouterv1.ConnectionState_CONNECTION_STATE_DOWN
		switch {
		case !st.complete():
		case up[name]:
			s = vrouterv1.ConnectionState_CONNECTION_STATE_UP
		default:
			s = vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING
		}
		if s != st.state {
			st.state, st.since = s, now
		}
		out = append(out, &vrouterv1.ConnectionStatus{Name: name, State: s, LastChangeTime: timestamppb.New(st.since)})
	}
	return out, nil
}

// ErrClosed is returned by Apply and Status after Close.
var ErrClosed = errors.New("vpp: programmer closed")

// Close forgets the Programmer's state; it leaves VPP's configuration in place (the data plane keeps
// forwarding until the next Programmer replaces it) and does not close the connection. Apply and
// Status return ErrClosed afterwards.
func (p *Programmer) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	p.vrf, p.conns, p.order = nil, nil, nil
	return nil
}
