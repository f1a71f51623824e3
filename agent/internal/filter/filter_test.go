package filter

import (
	"net/netip"
	"testing"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// Packets are built with gvisor's header encoders (the same code netstack uses), checksums included.

func ipHeader(src, dst netip.Addr, proto uint8, payload []byte) []byte {
	if src.Is4() {
		b := make([]byte, header.IPv4MinimumSize+len(payload))
		ip := header.IPv4(b)
		ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(b)), TTL: 64, Protocol: proto,
			SrcAddr: tcpip.AddrFrom4(src.As4()), DstAddr: tcpip.AddrFrom4(dst.As4())})
		ip.SetChecksum(^ip.CalculateChecksum())
		copy(b[header.IPv4MinimumSize:], payload)
		return b
	}
	b := make([]byte, header.IPv6MinimumSize+len(payload))
	header.IPv6(b).Encode(&header.IPv6Fields{PayloadLength: uint16(len(payload)), TransportProtocol: tcpip.TransportProtocolNumber(proto),
		HopLimit: 64, SrcAddr: tcpip.AddrFrom16(src.As16()), DstAddr: tcpip.AddrFrom16(dst.As16())})
	copy(b[header.IPv6MinimumSize:], payload)
	return b
}

func tcpPkt(src, dst string, sport, dport uint16, flags header.TCPFlags) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	t := make([]byte, header.TCPMinimumSize)
	header.TCP(t).Encode(&header.TCPFields{SrcPort: sport, DstPort: dport, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: flags, WindowSize: 1000})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, tcpip.AddrFromSlice(s.AsSlice()), tcpip.AddrFromSlice(d.AsSlice()), uint16(len(t)))
	header.TCP(t).SetChecksum(^checksum.Checksum(t, xsum))
	return ipHeader(s, d, uint8(header.TCPProtocolNumber), t)
}

func udpPkt(src, dst string, sport, dport uint16) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	u := make([]byte, header.UDPMinimumSize+4)
	header.UDP(u).Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(len(u))})
	return ipHeader(s, d, uint8(header.UDPProtocolNumber), u)
}

func echoPkt(src, dst string, request bool, id uint16) []byte {
	s, d := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	if s.Is4() {
		ic := header.ICMPv4(make([]byte, header.ICMPv4MinimumSize))
		ic.SetType(header.ICMPv4EchoReply)
		if request {
			ic.SetType(header.ICMPv4Echo)
		}
		ic.SetIdent(id)
		ic.SetChecksum(^checksum.Checksum(ic, 0))
		return ipHeader(s, d, uint8(header.ICMPv4ProtocolNumber), ic)
	}
	ic := header.ICMPv6(make([]byte, header.ICMPv6MinimumSize))
	ic.SetType(header.ICMPv6EchoReply)
	if request {
		ic.SetType(header.ICMPv6EchoRequest)
	}
	ic.SetIdent(id)
	return ipHeader(s, d, uint8(header.ICMPv6ProtocolNumber), ic)
}

const (
	self4, peer4, other4 = "100.64.0.1", "100.64.0.2", "100.64.0.3"
	self6, peer6         = "fd7a::1", "fd7a::2"
)

func rules(t *testing.T) []Rule {
	t.Helper()
	pf := &nodev1.PacketFilter{Rules: []*nodev1.FilterRule{
		// peer may reach TCP 22 and 80-81 on us, over v4 and v6
		{Action: nodev1.FilterAction_FILTER_ACTION_ALLOW, SourcePrefixes: []string{peer4 + "/32", peer6 + "/128"}, DestinationPrefixes: []string{self4, self6},
			Protocol: nodev1.FilterProtocol_FILTER_PROTOCOL_TCP, Ports: []*nodev1.FilterPortRange{{First: 22, Last: 22}, {First: 80, Last: 81}}},
		// an explicit deny of other's ICMP before the broad allow below: first match wins
		{Action: nodev1.FilterAction_FILTER_ACTION_DENY, SourcePrefixes: []string{other4 + "/32"}, DestinationPrefixes: []string{"100.64.0.0/10"},
			Protocol: nodev1.FilterProtocol_FILTER_PROTOCOL_ICMP},
		{Action: nodev1.FilterAction_FILTER_ACTION_ALLOW, SourcePrefixes: []string{"100.64.0.0/10"}, DestinationPrefixes: []string{self4 + "/32"},
			Protocol: nodev1.FilterProtocol_FILTER_PROTOCOL_ICMP},
		{Action: nodev1.FilterAction_FILTER_ACTION_ALLOW, SourcePrefixes: []string{"100.64.0.0/10"}, DestinationPrefixes: []string{self4 + "/32"},
			Protocol: nodev1.FilterProtocol_FILTER_PROTOCOL_UDP, Ports: []*nodev1.FilterPortRange{{First: 53, Last: 53}}},
	}}
	r, err := Compile(pf)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestInbound(t *testing.T) {
	f := New()
	f.SetRules(rules(t))
	tests := []struct {
		name string
		pkt  []byte
		want bool
	}{
		{"v4 tcp 22 from peer", tcpPkt(peer4, self4, 40000, 22, header.TCPFlagSyn), true},
		{"v4 tcp 81 (range end)", tcpPkt(peer4, self4, 40000, 81, header.TCPFlagSyn), true},
		{"v4 tcp 82 outside range", tcpPkt(peer4, self4, 40000, 82, header.TCPFlagSyn), false},
		{"v4 tcp 22 from other", tcpPkt(other4, self4, 40000, 22, header.TCPFlagSyn), false},
		{"v6 tcp 80 from peer", tcpPkt(peer6, self6, 40000, 80, header.TCPFlagSyn), true},
		{"v6 tcp 443 from peer", tcpPkt(peer6, self6, 40000, 443, header.TCPFlagSyn), false},
		{"v4 ping from peer", echoPkt(peer4, self4, true, 7), true},
		{"v4 ping from other: deny wins (first match)", echoPkt(other4, self4, true, 7), false},
		{"v6 ping: no rule, default deny", echoPkt(peer6, self6, true, 7), false},
		{"v4 udp 53", udpPkt(other4, self4, 5000, 53), true},
		{"v4 udp 54", udpPkt(other4, self4, 5000, 54), false},
		{"tcp to another destination", tcpPkt(peer4, other4, 40000, 22, header.TCPFlagSyn), false},
		{"garbage", []byte{0x45, 0, 0}, false},
		{"empty", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := f.Inbound(tt.pkt); got != tt.want {
				t.Fatalf("Inbound = %v, want %v", got, tt.want)
			}
		})
	}
	if New().Inbound(tcpPkt(peer4, self4, 1, 22, header.TCPFlagSyn)) {
		t.Fatal("a filter without rules let a packet in")
	}
}

func TestFlowsAndRuleChange(t *testing.T) {
	f := New()
	f.SetRules(rules(t))
	steps := []struct {
		name string
		out  bool // direction: true = leaving (Outbound)
		pkt  []byte
		want bool
	}{
		// We open TCP to other:443; its answers come in although no rule allows other->us:40001.
		{"syn out", true, tcpPkt(self4, other4, 40001, 443, header.TCPFlagSyn), true},
		{"syn-ack in (reply)", false, tcpPkt(other4, self4, 443, 40001, header.TCPFlagSyn|header.TCPFlagAck), true},
		{"unsolicited in from other", false, tcpPkt(other4, self4, 443, 40002, header.TCPFlagAck), false},
		// A ping we send: its reply may come in, even from other (whose pings to us are denied).
		{"v6 ping out", true, echoPkt(self6, peer6, true, 9), true},
		{"v6 pong in", false, echoPkt(peer6, self6, false, 9), true},
		{"v6 pong with other id", false, echoPkt(peer6, self6, false, 10), false},
		// Answers to inbound flows leave only while the rules allow the flow.
		{"syn-ack out to allowed peer", true, tcpPkt(self4, peer4, 22, 40000, header.TCPFlagSyn|header.TCPFlagAck), true},
		{"ack out to other on 22 (flow not allowed)", true, tcpPkt(self4, other4, 22, 40000, header.TCPFlagAck), false},
		{"echo reply out to other (their ping is denied)", true, echoPkt(self4, other4, false, 3), false},
		{"echo reply out to peer", true, echoPkt(self4, peer4, false, 3), true},
		{"udp out opens a flow", true, udpPkt(self4, other4, 6000, 7000), true},
		{"udp reply in", false, udpPkt(other4, self4, 7000, 6000), true},
	}
	for _, s := range steps {
		got := f.Inbound
		if s.out {
			got = f.Outbound
		}
		if g := got(s.pkt); g != s.want {
			t.Fatalf("%s: got %v, want %v", s.name, g, s.want)
		}
	}

	// The rules change: peer may no longer reach port 22. The established inbound connection is cut in
	// both directions, while our own outbound connection keeps working.
	f.SetRules(nil)
	if f.Inbound(tcpPkt(peer4, self4, 40000, 22, header.TCPFlagAck)) {
		t.Fatal("inbound packet of a now denied flow was let in")
	}
	if f.Outbound(tcpPkt(self4, peer4, 22, 40000, header.TCPFlagAck)) {
		t.Fatal("answer of a now denied flow was let out")
	}
	if !f.Inbound(tcpPkt(other4, self4, 443, 40001, header.TCPFlagAck)) {
		t.Fatal("reply of our own flow was dropped after an unrelated rule change")
	}
	if in, out := f.Dropped(); in == 0 || out == 0 {
		t.Fatalf("drop counters %d/%d", in, out)
	}
}

func TestCompileRejectsMalformed(t *testing.T) {
	for _, r := range []*nodev1.FilterRule{
		{SourcePrefixes: []string{"not-an-ip"}},
		{DestinationPrefixes: []string{"10.0.0.0/33"}},
		{Ports: []*nodev1.FilterPortRange{{First: 10, Last: 5}}},
		{Ports: []*nodev1.FilterPortRange{{First: 1, Last: 70000}}},
	} {
		if _, err := Compile(&nodev1.PacketFilter{Rules: []*nodev1.FilterRule{r}}); err == nil {
			t.Errorf("Compile(%v) accepted a malformed rule", r)
		}
	}
}
