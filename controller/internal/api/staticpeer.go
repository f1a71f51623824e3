package api

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/crypto/curve25519"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// privateKeyPlaceholder replaces the never-stored private key in GetStaticPeerConfig.
const privateKeyPlaceholder = "<PRIVATE_KEY>"

// defaultKeepalive is written into static peer configs when the request leaves it unset: NATed
// devices must keep their mapping open.
const defaultKeepalive = 25 * time.Second

// wgKeyPair generates a WireGuard (X25519) key pair, base64 encoded as wg(8) prints them.
func wgKeyPair() (priv, pub string, err error) {
	var k [32]byte
	if _, err := rand.Read(k[:]); err != nil {
		return "", "", fmt.Errorf("generate key: %w", err)
	}
	// Clamp as WireGuard does (RFC 7748).
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	p, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil {
		return "", "", fmt.Errorf("derive public key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(k[:]), base64.StdEncoding.EncodeToString(p), nil
}

func (s *server) CreateStaticPeer(ctx context.Context, req *connect.Request[v1.CreateStaticPeerRequest]) (*connect.Response[v1.CreateStaticPeerResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	priv, pub, err := wgKeyPair()
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	n := &domain.Node{
		TenantID: scope.TenantID, CvlanID: m.GetCvlanId(), Name: m.GetName(), Description: m.GetDescription(),
		Kind: domain.NodeKindStaticPeer, WireGuardPublicKey: pub, Tags: slices.Clone(m.GetTags()),
		Status: domain.NodeOffline,
	}
	for _, r := range m.GetRoutes() {
		p, err := parsePrefix(r)
		if err != nil {
			return nil, err
		}
		n.Routes = append(n.Routes, domain.NodeRoute{CIDR: p, Advertised: true, Approved: true})
	}
	if ep := m.GetEndpoint(); ep != "" {
		// Only literal addresses are stored as endpoints (domain.NodeEndpoint holds an AddrPort);
		// a host name stays in the device's own config.
		if ap, err := netip.ParseAddrPort(ep); err == nil {
			n.Endpoints = []domain.NodeEndpoint{{Address: ap, Type: domain.EndpointPublic}}
		}
	}
	keepalive := defaultKeepalive
	if m.PersistentKeepalive != nil {
		keepalive = m.GetPersistentKeepalive().AsDuration()
	}
	var conf string
	err = s.write(ctx, scope, func(tx store.Tx) error {
		if err := tx.CreateNode(ctx, n); err != nil {
			return err
		}
		if err := s.audit(ctx, tx, "node.create_static_peer", domain.ResourceNode, n.ID, nil, nodePB(n)); err != nil {
			return err
		}
		var err error
		conf, err = s.staticPeerConfig(ctx, tx, n, priv, keepalive)
		return err
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateStaticPeerResponse{Node: nodePB(n), WgQuickConfig: conf}), nil
}

func (s *server) GetStaticPeerConfig(ctx context.Context, req *connect.Request[v1.GetStaticPeerConfigRequest]) (*connect.Response[v1.GetStaticPeerConfigResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var conf string
	err = s.read(ctx, scope, func(tx store.Tx) error {
		n, err := tx.GetNode(ctx, req.Msg.GetId())
		if err != nil {
			return err
		}
		if n.Kind != domain.NodeKindStaticPeer {
			return connect.NewError(connect.CodeFailedPrecondition, errors.New("node is not a static peer"))
		}
		conf, err = s.staticPeerConfig(ctx, tx, n, privateKeyPlaceholder, defaultKeepalive)
		return err
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetStaticPeerConfigResponse{WgQuickConfig: conf}), nil
}

// staticPeerConfig renders the wg-quick file of static peer n: its interface and one [Peer] per
// node the tenant's policies let it talk to.
func (s *server) staticPeerConfig(ctx context.Context, tx store.Tx, n *domain.Node, privKey string, keepalive time.Duration) (string, error) {
	cv, err := tx.GetCvlan(ctx, n.CvlanID)
	if err != nil {
		return "", err
	}
	peers, err := policyPeers(ctx, tx, n)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# CloudVLAN static peer %q (node %s) in cvlan %q\n[Interface]\nPrivateKey = %s\n", n.Name, n.ID, cv.Name, privKey)
	addrs := []string{netip.PrefixFrom(n.IPv4Address, 32).String()}
	if n.IPv6Address.IsValid() {
		addrs = append(addrs, netip.PrefixFrom(n.IPv6Address, 128).String())
	}
	fmt.Fprintf(&b, "Address = %s\n", strings.Join(addrs, ", "))
	if len(cv.DNSNameservers) > 0 {
		fmt.Fprintf(&b, "DNS = %s\n", strings.Join(addrsStr(cv.DNSNameservers), ", "))
	}
	for _, p := range peers {
		fmt.Fprintf(&b, "\n# %s\n[Peer]\nPublicKey = %s\n", p.Name, p.WireGuardPublicKey)
		allowed := []string{netip.PrefixFrom(p.IPv4Address, 32).String()}
		if p.IPv6Address.IsValid() {
			allowed = append(allowed, netip.PrefixFrom(p.IPv6Address, 128).String())
		}
		for _, r := range p.Routes {
			if r.Advertised && r.Approved {
				allowed = append(allowed, r.CIDR.String())
			}
		}
		fmt.Fprintf(&b, "AllowedIPs = %s\n", strings.Join(allowed, ", "))
		if len(p.Endpoints) > 0 {
			fmt.Fprintf(&b, "Endpoint = %s\n", p.Endpoints[0].Address)
		}
		if keepalive > 0 {
			fmt.Fprintf(&b, "PersistentKeepalive = %d\n", int(keepalive.Seconds()))
		}
	}
	return b.String(), nil
}

// policyPeers returns the nodes of n's cvlan that the tenant's enabled policies let n exchange
// traffic with (quarantined nodes excluded).
func policyPeers(ctx context.Context, tx store.Tx, n *domain.Node) ([]*domain.Node, error) {
	var pols []policy.Policy
	if err := eachPage(func(tok string) (string, error) {
		p, err := tx.ListPolicies(ctx, store.PolicyFilter{}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
		if err != nil {
			return "", err
		}
		for _, dp := range p.Items {
			if dp.CvlanID == "" || dp.CvlanID == n.CvlanID {
				pols = append(pols, toPolicy(dp))
			}
		}
		return p.NextPageToken, nil
	}); err != nil {
		return nil, err
	}
	compiled, err := policy.Compile(pols, n.CvlanID)
	if err != nil {
		return nil, fmt.Errorf("%w: stored policies do not compile: %v", domain.ErrFailedPrecondition, err)
	}
	if compiled.Len() == 0 {
		return nil, nil // deny by default: no rule, no peer, and no need to load the cvlan's nodes
	}
	groupsOf := map[string][]string{} // node or user id -> group ids
	if err := eachPage(func(tok string) (string, error) {
		p, err := tx.ListGroups(ctx, store.GroupFilter{}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
		if err != nil {
			return "", err
		}
		for _, g := range p.Items {
			for _, m := range g.Members {
				groupsOf[m.NodeID+m.UserID] = append(groupsOf[m.NodeID+m.UserID], g.ID)
			}
		}
		return p.NextPageToken, nil
	}); err != nil {
		return nil, err
	}
	attrs := func(x *domain.Node) policy.NodeAttrs {
		a := policy.NodeAttrs{ID: x.ID, UserID: x.UserID, Tags: x.Tags, GroupIDs: append(slices.Clone(groupsOf[x.ID]), groupsOf[x.UserID]...)}
		for _, ad := range []netip.Addr{x.IPv4Address, x.IPv6Address} {
			if ad.IsValid() {
				a.Addresses = append(a.Addresses, ad)
			}
		}
		for _, r := range x.Routes {
			if r.Advertised && r.Approved {
				a.Routes = append(a.Routes, r.CIDR)
			}
		}
		return a
	}
	dir := policy.NewDirectory()
	dir.Track(compiled.CIDRs())
	byID := map[string]*domain.Node{}
	if err := eachPage(func(tok string) (string, error) {
		p, err := tx.ListNodes(ctx, store.NodeFilter{CvlanID: n.CvlanID}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
		if err != nil {
			return "", err
		}
		for _, x := range p.Items {
			if x.ID == n.ID || x.Status == domain.NodeQuarantined {
				continue
			}
			byID[x.ID] = x
			dir.Put(attrs(x))
		}
		return p.NextPageToken, nil
	}); err != nil {
		return nil, err
	}
	ids := compiled.Peers(dir, attrs(n))
	slices.Sort(ids)
	out := make([]*domain.Node, 0, len(ids))
	for _, id := range ids {
		if p := byID[id]; p != nil {
			out = append(out, p)
		}
	}
	return out, nil
}

// toPolicy converts a stored policy to the policy engine's model.
func toPolicy(p *domain.Policy) policy.Policy {
	out := policy.Policy{ID: p.ID, Enabled: p.Enabled, CvlanID: p.CvlanID}
	for _, r := range p.Rules {
		pr := policy.Rule{Action: policy.ActionAllow}
		if r.Action == domain.ActionDeny {
			pr.Action = policy.ActionDeny
		}
		switch r.Protocol {
		case domain.ProtocolTCP:
			pr.Protocol = policy.ProtoTCP
		case domain.ProtocolUDP:
			pr.Protocol = policy.ProtoUDP
		case domain.ProtocolICMP:
			pr.Protocol = policy.ProtoICMP
		default:
			pr.Protocol = policy.ProtoAny
		}
		for _, t := range r.Sources {
			pr.Sources = append(pr.Sources, toTarget(t))
		}
		for _, t := range r.Destinations {
			pr.Destinations = append(pr.Destinations, toTarget(t))
		}
		for _, pt := range r.Ports {
			last := pt.Last
			if last == 0 {
				last = pt.First
			}
			pr.Ports = append(pr.Ports, policy.PortRange{First: uint16(pt.First), Last: uint16(last)})
		}
		out.Rules = append(out.Rules, pr)
	}
	return out
}

func toTarget(t domain.PolicyTarget) policy.Target {
	switch {
	case t.Any:
		return policy.Any()
	case t.UserID != "":
		return policy.User(t.UserID)
	case t.GroupID != "":
		return policy.Group(t.GroupID)
	case t.Tag != "":
		return policy.Tag(t.Tag)
	case t.NodeID != "":
		return policy.Node(t.NodeID)
	}
	return policy.CIDR(t.CIDR.Masked())
}
