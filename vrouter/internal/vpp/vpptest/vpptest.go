// Package vpptest provides an in-process stand-in for VPP built on govpp's mock adapter
// (go.fd.io/govpp/adapter/mock) and govpp's real core, for tests of code that drives package vpp. VPP
// itself cannot be installed in the test environment; the mock answers the messages package vpp sends
// the way VPP does (retval 0, fresh sw_if_index values for created interfaces, "already exists" for a
// second profile or loopback instance of the same name, dumps of interfaces, IKEv2 profiles and IKE SAs)
// and records every request. It keeps its state across Programmers on the same connection, like VPP
// across vrouter restarts.
package vpptest

import (
	"encoding/binary"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"go.fd.io/govpp/adapter"
	"go.fd.io/govpp/adapter/mock"
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/ikev2"
	"go.fd.io/govpp/binapi/ikev2_types"
	interfaces "go.fd.io/govpp/binapi/interface"
	"go.fd.io/govpp/binapi/interface_types"
	"go.fd.io/govpp/binapi/ip"
	"go.fd.io/govpp/binapi/ipip"
	"go.fd.io/govpp/binapi/memclnt"
	"go.fd.io/govpp/codec"
	"go.fd.io/govpp/core"
)

// Uplink is the name of the interface the mock VPP has from the start; use it as
// vpp.Options.UplinkInterface.
const Uplink = "GigabitEthernet0/8/0"

// UplinkIndex is Uplink's sw_if_index.
const UplinkIndex = 1

// Request is one message VPP received: its binapi name (e.g. "ikev2_profile_add_del") and the decoded
// message (e.g. *ikev2.Ikev2ProfileAddDel).
type Request struct {
	Name string
	Msg  api.Message
}

// Recorder lists the requests the mock VPP received (control pings excluded) and controls what it
// reports. It is safe for concurrent use.
type Recorder struct {
	mu         sync.Mutex
	reqs       []Request
	fail       map[string][]int32
	sas        map[string]ikev2_types.Ikev2State
	profiles   map[string]uint32 // IKEv2 profile name -> tunnel interface (~0: none)
	interfaces map[interface_types.InterfaceIndex]string
	next       interface_types.InterfaceIndex
}

// Requests returns the requests received since the start or the last Reset, oldest first.
func (r *Recorder) Requests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.reqs...)
}

// Names returns the names of Requests, oldest first.
func (r *Recorder) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, len(r.reqs))
	for i, q := range r.reqs {
		out[i] = q.Name
	}
	return out
}

// Reset forgets the recorded requests.
func (r *Recorder) Reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = nil
}

// SetSAEstablished makes ikev2_sa_v3_dump report an authenticated IKE SA for the profile (up) or no SA.
func (r *Recorder) SetSAEstablished(profile string, up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if up {
		r.sas[profile] = ikev2_types.AUTHENTICATED
	} else {
		delete(r.sas, profile)
	}
}

// SetSAState makes ikev2_sa_v3_dump report an IKE SA for the profile in the given state (e.g.
// ikev2_types.SA_INIT while negotiating, AUTH_FAILED after a wrong key).
func (r *Recorder) SetSAState(profile string, state ikev2_types.Ikev2State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sas[profile] = state
}

// FailNext makes the next request named msgName answer with retval (e.g. -1, VNET_API_ERROR_UNSPECIFIED)
// instead of succeeding; calls queue up.
func (r *Recorder) FailNext(msgName string, retval int32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fail[msgName] = append(r.fail[msgName], retval)
}

// Interfaces returns the interfaces the mock VPP has (sw_if_index -> name), the uplink included.
func (r *Recorder) Interfaces() map[uint32]string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[uint32]string, len(r.interfaces))
	for k, v := range r.interfaces {
		out[uint32(k)] = v
	}
	return out
}

// NewMockVPP returns a connection to a mock VPP and its Recorder; the connection is closed when the test
// ends.
func NewMockVPP(t testing.TB) (api.Connection, *Recorder) {
	t.Helper()
	rec := &Recorder{
		fail:       map[string][]int32{},
		sas:        map[string]ikev2_types.Ikev2State{},
		profiles:   map[string]uint32{},
		interfaces: map[interface_types.InterfaceIndex]string{UplinkIndex: Uplink},
		next:       UplinkIndex + 1,
	}
	a := &vppAdapter{VppAdapter: mock.NewVppAdapter(), rec: rec, types: messageTypes()}
	a.MockReplyHandler(a.reply)
	conn, err := core.Connect(a)
	if err != nil {
		t.Fatalf("vpptest: connect to the mock VPP: %v", err)
	}
	t.Cleanup(conn.Disconnect)
	return conn, rec
}

// vppAdapter is govpp's mock adapter with replies computed by reply and dumps answered with several
// details messages, which the mock's reply handlers cannot do.
type vppAdapter struct {
	*mock.VppAdapter
	rec   *Recorder
	types map[string]reflect.Type

	cbMu sync.Mutex
	cb   adapter.MsgCallback
}

func (a *vppAdapter) SetMsgCallback(cb adapter.MsgCallback) {
	a.cbMu.Lock()
	a.cb = cb
	a.cbMu.Unlock()
	a.VppAdapter.SetMsgCallback(cb)
}

// SendMsg answers dump requests with their details (the control ping that follows gets its reply from
// reply) and hands every other request to the mock adapter.
func (a *vppAdapter) SendMsg(clientID uint32, data []byte) error {
	if len(data) < 2 {
		return a.VppAdapter.SendMsg(clientID, data)
	}
	name, _ := a.GetMsgNameByID(binary.BigEndian.Uint16(data[0:2]))
	if !strings.HasSuffix(name, "_dump") {
		return a.VppAdapter.SendMsg(clientID, data)
	}
	req, ok := a.decode(name, data)
	if !ok {
		return a.VppAdapter.SendMsg(clientID, data)
	}
	a.rec.record(name, req)
	a.cbMu.Lock()
	cb := a.cb
	a.cbMu.Unlock()
	for _, d := range a.rec.details(req) {
		id, out, err := a.encode(clientID, d)
		if err != nil {
			return err
		}
		cb(id, out)
	}
	return nil
}

// reply is the mock's reply handler: control pings and every request but dumps.
func (a *vppAdapter) reply(req mock.MessageDTO) ([]byte, uint16, bool) {
	name, _ := a.GetMsgNameByID(req.MsgID)
	if name == "control_ping" {
		return a.encodeOK(req.ClientID, &memclnt.ControlPingReply{})
	}
	msg, ok := a.decode(name, req.Data)
	if !ok {
		return nil, 0, false // the mock answers with its default reply
	}
	a.rec.record(name, msg)
	rep, ok := a.rec.answer(name, msg)
	if !ok {
		rt, found := a.types[name+"_reply"]
		if !found {
			return nil, 0, false
		}
		rep = reflect.New(rt).Interface().(api.Message)
		if rv := a.rec.takeFailure(name); rv != 0 {
			reflect.ValueOf(rep).Elem().FieldByName("Retval").SetInt(int64(rv))
		}
	}
	return a.encodeOK(req.ClientID, rep)
}

func (a *vppAdapter) encodeOK(clientID uint32, m api.Message) ([]byte, uint16, bool) {
	id, data, err := a.encode(clientID, m)
	if err != nil {
		return nil, 0, false
	}
	return data, id, true
}

// encode encodes a reply or details message with the request's context, as VPP does.
func (a *vppAdapter) encode(clientID uint32, m api.Message) (uint16, []byte, error) {
	id, err := a.GetMsgID(m.GetMessageName(), m.GetCrcString())
	if err != nil {
		return 0, nil, err
	}
	data, err := codec.DefaultCodec.EncodeMsg(m, id)
	if err != nil {
		return 0, nil, err
	}
	binary.BigEndian.PutUint32(data[2:6], clientID)
	return id, data, nil
}

func (a *vppAdapter) decode(name string, data []byte) (api.Message, bool) {
	rt, ok := a.types[name]
	if !ok {
		return nil, false
	}
	m := reflect.New(rt).Interface().(api.Message)
	if err := codec.DefaultCodec.DecodeMsg(data, m); err != nil {
		return nil, false
	}
	return m, true
}

func (r *Recorder) record(name string, m api.Message) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, Request{Name: name, Msg: m})
}

func (r *Recorder) takeFailure(name string) int32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.fail[name]
	if len(q) == 0 {
		return 0
	}
	r.fail[name] = q[1:]
	return q[0]
}

// answer builds the replies that carry more than a retval: created interfaces get a fresh sw_if_index
// (and only when the request succeeds), deleted ones are forgotten.
func (r *Recorder) answer(name string, m api.Message) (api.Message, bool) {
	rv := r.takeFailure(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	newIf := func(prefix string, instance uint32) interface_types.InterfaceIndex {
		if rv != 0 {
			return 0
		}
		idx := r.next
		r.next++
		r.interfaces[idx] = prefix + strconv.FormatUint(uint64(instance), 10)
		return idx
	}
	switch req := m.(type) {
	case *interfaces.CreateLoopbackInstance:
		name := "loop" + strconv.FormatUint(uint64(req.UserInstance), 10)
		if rv == 0 && req.IsSpecified && slices.Contains(slices.Collect(maps.Values(r.interfaces)), name) {
			rv = -56 // VNET_API_ERROR_INSTANCE_IN_USE
		}
		inst := uint32(r.next)
		if req.IsSpecified {
			inst = req.UserInstance
		}
		return &interfaces.CreateLoopbackInstanceReply{Retval: rv, SwIfIndex: newIf("loop", inst)}, true
	case *ikev2.Ikev2ProfileAddDel:
		if rv == 0 {
			_, exists := r.profiles[req.Name]
			switch {
			case req.IsAdd && exists:
				rv = -1
			case req.IsAdd:
				r.profiles[req.Name] = ^uint32(0)
			case !exists:
				rv = -1
			default:
				delete(r.profiles, req.Name)
			}
		}
		return &ikev2.Ikev2ProfileAddDelReply{Retval: rv}, true
	case *ikev2.Ikev2SetTunnelInterface:
		if rv == 0 {
			if _, ok := r.profiles[req.Name]; ok {
				r.profiles[req.Name] = uint32(req.SwIfIndex)
			} else {
				rv = -1
			}
		}
		return &ikev2.Ikev2SetTunnelInterfaceReply{Retval: rv}, true
	case *ipip.IpipAddTunnel:
		return &ipip.IpipAddTunnelReply{Retval: rv, SwIfIndex: newIf("ipip", uint32(r.next))}, true
	case *interfaces.CreateLoopback:
		return &interfaces.CreateLoopbackReply{Retval: rv, SwIfIndex: newIf("loop", uint32(r.next))}, true
	case *ipip.IpipDelTunnel:
		if rv == 0 {
			delete(r.interfaces, req.SwIfIndex)
		}
		return &ipip.IpipDelTunnelReply{Retval: rv}, true
	case *interfaces.DeleteLoopback:
		if rv == 0 {
			delete(r.interfaces, req.SwIfIndex)
		}
		return &interfaces.DeleteLoopbackReply{Retval: rv}, true
	case *ip.IPRouteAddDel:
		return &ip.IPRouteAddDelReply{Retval: rv}, true
	}
	if rv != 0 {
		// put it back: the generic path in reply applies it
		r.fail[name] = append([]int32{rv}, r.fail[name]...)
	}
	return nil, false
}

// details answers a dump request.
func (r *Recorder) details(m api.Message) []api.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []api.Message
	switch req := m.(type) {
	case *interfaces.SwInterfaceDump:
		for _, idx := range slices.Sorted(maps.Keys(r.interfaces)) {
			name := r.interfaces[idx]
			if req.NameFilterValid && !strings.Contains(name, req.NameFilter) {
				continue
			}
			if req.SwIfIndex != ^interface_types.InterfaceIndex(0) && req.SwIfIndex != idx {
				continue
			}
			out = append(out, &interfaces.SwInterfaceDetails{SwIfIndex: idx, SupSwIfIndex: uint32(idx), InterfaceName: name})
		}
	case *ikev2.Ikev2ProfileDump:
		for _, name := range slices.Sorted(maps.Keys(r.profiles)) {
			out = append(out, &ikev2.Ikev2ProfileDetails{Profile: ikev2_types.Ikev2Profile{Name: name, TunItf: r.profiles[name]}})
		}
	case *ikev2.Ikev2SaV3Dump:
		i := uint32(0)
		for _, profile := range slices.Sorted(maps.Keys(r.sas)) {
			out = append(out, &ikev2.Ikev2SaV3Details{Sa: ikev2_types.Ikev2SaV3{
				SaIndex: i, ProfileName: profile, State: r.sas[profile],
			}})
			i++
		}
	}
	return out
}

// messageTypes maps binapi names to message types for every registered binapi package (those imported
// by the test binary, which include the ones above).
func messageTypes() map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for _, msgs := range api.GetRegisteredMessages() {
		for _, m := range msgs {
			out[m.GetMessageName()] = reflect.TypeOf(m).Elem()
		}
	}
	// Pin the packages package vpp uses, whatever else is registered under the same names.
	for _, m := range []api.Message{
		&memclnt.ControlPing{}, &memclnt.ControlPingReply{},
		&interfaces.SwInterfaceDump{}, &interfaces.SwInterfaceDetails{},
		&ikev2.Ikev2SaV3Dump{}, &ikev2.Ikev2SaV3Details{},
	} {
		out[m.GetMessageName()] = reflect.TypeOf(m).Elem()
	}
	return out
}
