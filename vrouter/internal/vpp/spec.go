package vpp

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// maxNameLen is the longest IKEv2 profile name VPP stores (string[64] with its terminating NUL).
const maxNameLen = 63

// vrfSpec is the validated tenant VRF.
type vrfSpec struct {
	tableID  uint32
	tenantID string
}

// connSpec is one validated connection; two equal specs program identical VPP objects.
type connSpec struct {
	name   string
	remote netip.Addr
	local  []netip.Prefix // sorted, masked
	remSub []netip.Prefix // sorted, masked
	psk    string
}

func (c connSpec) equal(o connSpec) bool {
	return c.name == o.name && c.remote == o.remote && c.psk == o.psk &&
		slices.Equal(c.local, o.local) && slices.Equal(c.remSub, o.remSub)
}

// desired is a validated configuration.
type desired struct {
	version uint64
	vrf     vrfSpec
	conns   map[string]connSpec
	order   []string // connection names in config order
}

// validate checks cfg against this vrouter's local address and returns the desired state, or an error
// naming the connection and field at fault.
func validate(cfg *vrouterv1.WatchVRouterConfigResponse, local netip.Addr) (*desired, error) {
	if cfg == nil {
		return nil, fmt.Errorf("config is nil")
	}
	v := cfg.GetVrf()
	if v == nil {
		return nil, fmt.Errorf("config version %d: vrf is missing", cfg.GetVersion())
	}
	if v.GetTableId() == 0 {
		return nil, fmt.Errorf("config version %d: vrf.table_id must not be 0 (the default table is not a tenant VRF)", cfg.GetVersion())
	}
	d := &desired{
		version: cfg.GetVersion(),
		vrf:     vrfSpec{tableID: v.GetTableId(), tenantID: v.GetTenantId()},
		conns:   make(map[string]connSpec, len(cfg.GetConnections())),
	}
	for i, c := range cfg.GetConnections() {
		s, err := validateConn(c, local)
		if err != nil {
			if c.GetName() == "" {
				return nil, fmt.Errorf("connections[%d]: %w", i, err)
			}
			return nil, fmt.Errorf("connection %q: %w", c.GetName(), err)
		}
		if _, dup := d.conns[s.name]; dup {
			return nil, fmt.Errorf("connection %q: name: appears twice", s.name)
		}
		for _, other := range d.order {
			if d.conns[other].remote == s.remote {
				return nil, fmt.Errorf("connection %q: remote_address: %s is already connection %q's (one tunnel per device)", s.name, s.remote, other)
			}
		}
		d.conns[s.name] = s
		d.order = append(d.order, s.name)
	}
	return d, nil
}

func validateConn(c *vrouterv1.IpsecConnection, local netip.Addr) (connSpec, error) {
	name := c.GetName()
	switch {
	case name == "":
		return connSpec{}, fmt.Errorf("name: empty")
	case len(name) > maxNameLen:
		return connSpec{}, fmt.Errorf("name: longer than %d bytes", maxNameLen)
	case strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return connSpec{}, fmt.Errorf("name: contains a space or control character")
	}
	remote, err := netip.ParseAddr(c.GetRemoteAddress())
	if err != nil || remote.Zone() != "" {
		return connSpec{}, fmt.Errorf("remote_address: %q is not an IP address", c.GetRemoteAddress())
	}
	remote = remote.Unmap()
	if remote.Is4() != local.Is4() {
		return connSpec{}, fmt.Errorf("remote_address: %s is not of the same family as the vrouter's local address %s", remote, local)
	}
	if remote.IsUnspecified() || remote.IsMulticast() || remote.IsLoopback() || remote == local {
		return connSpec{}, fmt.Errorf("remote_address: %s cannot be a tunnel endpoint", remote)
	}
	switch c.GetIkeVersion() {
	case vrouterv1.IkeVersion_IKE_VERSION_UNSPECIFIED, vrouterv1.IkeVersion_IKE_VERSION_2:
	default:
		return connSpec{}, fmt.Errorf("ike_version: %v is not supported (IKEv2 only)", c.GetIkeVersion())
	}
	if len(c.GetPreSharedKey()) < 16 {
		return connSpec{}, fmt.Errorf("pre_shared_key: shorter than 16 bytes")
	}
	if len(c.GetPreSharedKey()) > 1024 {
		return connSpec{}, fmt.Errorf("pre_shared_key: longer than 1024 bytes")
	}
	ls, err := prefixes("local_subnets", c.GetLocalSubnets())
	if err != nil {
		return connSpec{}, err
	}
	rs, err := prefixes("remote_subnets", c.GetRemoteSubnets())
	if err != nil {
		return connSpec{}, err
	}
	if len(ls) > 0 && len(rs) > 0 && ls[0].Addr().Is4() != rs[0].Addr().Is4() {
		return connSpec{}, fmt.Errorf("remote_subnets: %s is not of the same address family as local_subnets %s", rs[0], ls[0])
	}
	return connSpec{name: name, remote: remote, local: ls, remSub: rs, psk: c.GetPreSharedKey()}, nil
}

// prefixes parses a list of prefixes of one address family (a VPP IKEv2 profile has one traffic
// selector per side, so a side cannot mix families), masked, sorted and without duplicates.
func prefixes(field string, in []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(in))
	for i, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s[%d]: %q is not an IP prefix", field, i, s)
		}
		p = p.Masked()
		if len(out) > 0 && out[0].Addr().Is4() != p.Addr().Is4() {
			return nil, fmt.Errorf("%s[%d]: %s mixes address families with %s (VPP's IKEv2 profile takes one traffic selector per side)", field, i, p, out[0])
		}
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(out), nil
}

// selectorRange is the address range one traffic selector must cover: exactly the prefix when there is
// one, the smallest range spanning all of them otherwise (the routes then steer precisely), the whole
// family of fallback when there is none.
func selectorRange(ps []netip.Prefix, fallback netip.Addr) (start, end netip.Addr) {
	if len(ps) == 0 {
		if fallback.Is4() {
			return netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255})
		}
		var all [16]byte
		for i := range all {
			all[i] = 0xff
		}
		return netip.IPv6Unspecified(), netip.AddrFrom16(all)
	}
	start = ps[0].Addr()
	end = lastAddr(ps[0])
	for _, p := range ps[1:] {
		if p.Addr().Less(start) {
			start = p.Addr()
		}
		if l := lastAddr(p); end.Less(l) {
			end = l
		}
	}
	return start, end
}

// lastAddr is the highest address of a masked prefix.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
