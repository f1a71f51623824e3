package api

import (
	"net/netip"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// This file converts between the generated cloudvlan.v1 messages and the domain types. Domain
// enum strings are the lower-case suffixes of the proto enum value names (NODE_KIND_STATIC_PEER
// <-> "static_peer"), so one pair of helpers converts every enum.

// enumPrefix is the common prefix of an enum's value names ("NODE_KIND_").
func enumPrefix(d protoreflect.EnumDescriptor) string {
	zero := string(d.Values().ByNumber(0).Name())
	return strings.TrimSuffix(zero, "UNSPECIFIED")
}

// enumStr converts a proto enum value to its domain string ("" for UNSPECIFIED).
func enumStr(e protoreflect.Enum) string {
	if e.Number() == 0 {
		return ""
	}
	v := e.Descriptor().Values().ByNumber(e.Number())
	if v == nil {
		return ""
	}
	return strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(e.Descriptor())))
}

// enumNum converts a domain string to a proto enum number (0 when unknown or empty).
func enumNum(d protoreflect.EnumDescriptor, s string) protoreflect.EnumNumber {
	if s == "" {
		return 0
	}
	v := d.Values().ByName(protoreflect.Name(enumPrefix(d) + strings.ToUpper(s)))
	if v == nil {
		return 0
	}
	return v.Number()
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

func fromTS(t *timestamppb.Timestamp) time.Time {
	if t == nil {
		return time.Time{}
	}
	return t.AsTime()
}

func dur(d time.Duration) *durationpb.Duration {
	if d == 0 {
		return nil
	}
	return durationpb.New(d)
}

// etag is the opaque version string of a resource: derived from the store's Version.
func etag(m domain.Meta) string { return "v" + strconv.FormatInt(m.Version, 10) }

func addrStr(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func prefixStr(p netip.Prefix) string {
	if !p.IsValid() {
		return ""
	}
	return p.String()
}

func addrsStr(as []netip.Addr) []string {
	out := make([]string, 0, len(as))
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// Parsers below run after protovalidate accepted the request, so their errors are programming
// errors or values protovalidate does not check; they still return errors, never panic.

func parseAddrs(ss []string) ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, invalid("address %q: %v", s, err)
		}
		out = append(out, a)
	}
	return out, nil
}

func parsePrefix(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, invalid("prefix %q: %v", s, err)
	}
	return p.Masked(), nil
}

// --- tenants

func tenantPB(t *domain.Tenant, used int32) *v1.Tenant {
	return &v1.Tenant{
		Id: t.ID, Name: t.Name, Description: t.Description, CreateTime: ts(t.CreateTime),
		UpdateTime: ts(t.UpdateTime), Etag: etag(t.Meta), DisplayName: t.DisplayName,
		Status:   v1.TenantStatus(enumNum(v1.TenantStatus(0).Descriptor(), string(t.Status))),
		Capacity: &v1.Capacity{Limit: t.MaxNodes, Used: used},
		Settings: &v1.TenantSettings{
			DnsDomain: t.Settings.DNSDomain, QuarantineOnConflict: t.Settings.QuarantineOnConflict,
			EphemeralOfflineTimeout: dur(t.Settings.EphemeralOfflineTimeout),
			NodeCertificateTtl:      dur(t.Settings.NodeCertificateTTL), MaxCvlans: t.Settings.MaxCvlans,
		},
	}
}

func tenantSettingsDomain(s *v1.TenantSettings) domain.TenantSettings {
	if s == nil {
		return domain.TenantSettings{}
	}
	return domain.TenantSettings{
		DNSDomain: s.GetDnsDomain(), QuarantineOnConflict: s.GetQuarantineOnConflict(),
		EphemeralOfflineTimeout: s.GetEphemeralOfflineTimeout().AsDuration(),
		NodeCertificateTTL:      s.GetNodeCertificateTtl().AsDuration(), MaxCvlans: s.GetMaxCvlans(),
	}
}

// --- cvlans

func cvlanPB(c *domain.Cvlan) *v1.Cvlan {
	out := &v1.Cvlan{
		Id: c.ID, TenantId: c.TenantID, Name: c.Name, Description: c.Description,
		CreateTime: ts(c.CreateTime), UpdateTime: ts(c.UpdateTime), Etag: etag(c.Meta),
		Ipv4Cidr: prefixStr(c.IPv4CIDR), Ipv6Cidr: prefixStr(c.IPv6CIDR), DnsDomain: c.DNSDomain,
		DnsNameservers: addrsStr(c.DNSNameservers),
	}
	for _, r := range c.SplitDNS {
		out.SplitDns = append(out.SplitDns, &v1.SplitDnsRoute{Domain: r.Domain, Nameservers: addrsStr(r.Nameservers)})
	}
	return out
}

func cvlanDomain(c *v1.Cvlan) (*domain.Cvlan, error) {
	out := &domain.Cvlan{Name: c.GetName(), Description: c.GetDescription(), DNSDomain: c.GetDnsDomain()}
	var err error
	if out.IPv4CIDR, err = parsePrefix(c.GetIpv4Cidr()); err != nil {
		return nil, err
	}
	if out.IPv6CIDR, err = parsePrefix(c.GetIpv6Cidr()); err != nil {
		return nil, err
	}
	if out.DNSNameservers, err = parseAddrs(c.GetDnsNameservers()); err != nil {
		return nil, err
	}
	for _, r := range c.GetSplitDns() {
		ns, err := parseAddrs(r.GetNameservers())
		if err != nil {
			return nil, err
		}
		out.SplitDNS = append(out.SplitDNS, domain.SplitDNSRoute{Domain: r.GetDomain(), Nameservers: ns})
	}
	return out, nil
}

// --- nodes

func nodePB(n *domain.Node) *v1.Node {
	out := &v1.Node{
		Id: n.ID, TenantId: n.TenantID, Name: n.Name, Description: n.Description,
		CreateTime: ts(n.CreateTime), UpdateTime: ts(n.UpdateTime), Etag: etag(n.Meta),
		CvlanId: n.CvlanID, Hostname: n.Hostname,
		Kind:               v1.NodeKind(enumNum(v1.NodeKind(0).Descriptor(), string(n.Kind))),
		WireguardPublicKey: n.WireGuardPublicKey, Ipv4Address: addrStr(n.IPv4Address),
		Ipv6Address: addrStr(n.IPv6Address), Tags: n.Tags, Os: n.OS, AgentVersion: n.AgentVersion,
		Status: v1.NodeStatus(enumNum(v1.NodeStatus(0).Descriptor(), string(n.Status))),
		Sync: &v1.NodeSync{
			State:          v1.NodeSyncState(enumNum(v1.NodeSyncState(0).Descriptor(), string(n.Sync.State))),
			DesiredVersion: n.Sync.DesiredVersion, AppliedVersion: n.Sync.AppliedVersion,
			AppliedHash: n.Sync.AppliedHash, Error: n.Sync.Error, ApplyTime: ts(n.Sync.ApplyTime),
		},
		HomeRelayId: n.HomeRelayID, Ephemeral: n.Ephemeral, UserId: n.UserID,
		LastSeenTime: ts(n.LastSeenTime), CertExpireTime: ts(n.CertExpireTime),
		QuarantineReason: n.QuarantineReason, QuarantineTime: ts(n.QuarantineTime),
		LinkedResourceId: n.LinkedResourceID, JoinTokenId: n.JoinTokenID,
	}
	for _, e := range n.Endpoints {
		out.Endpoints = append(out.Endpoints, &v1.NodeEndpoint{
			Address: e.Address.String(), ObserveTime: ts(e.ObserveTime),
			Type: v1.NodeEndpointType(enumNum(v1.NodeEndpointType(0).Descriptor(), string(e.Type))),
		})
	}
	if c := n.Conflict; c != nil {
		out.Conflict = &v1.NodeConflict{DetectTime: ts(c.DetectTime), Addresses: c.Addresses, Active: c.Active, Quarantined: c.Quarantined}
	}
	for _, r := range n.Routes {
		out.Routes = append(out.Routes, &v1.NodeRoute{Cidr: r.CIDR.String(), Advertised: r.Advertised, Approved: r.Approved})
	}
	for _, p := range n.PeerPaths {
		out.PeerPaths = append(out.PeerPaths, &v1.NodePeerPath{
			PeerNodeId: p.PeerNodeID, RelayId: p.RelayID, Endpoint: p.Endpoint, Latency: dur(p.Latency),
			Path:              v1.NodePathType(enumNum(v1.NodePathType(0).Descriptor(), string(p.Path))),
			LastHandshakeTime: ts(p.LastHandshakeTime), ReportTime: ts(p.ReportTime),
		})
	}
	return out
}

// --- users

func userPB(u *domain.User, groupIDs []string) *v1.User {
	return &v1.User{
		Id: u.ID, TenantId: u.TenantID, Name: u.Name, Description: u.Description,
		CreateTime: ts(u.CreateTime), UpdateTime: ts(u.UpdateTime), Etag: etag(u.Meta),
		Email: u.Email, DisplayName: u.DisplayName,
		Role:       v1.UserRole(enumNum(v1.UserRole(0).Descriptor(), string(u.Role))),
		Status:     v1.UserStatus(enumNum(v1.UserStatus(0).Descriptor(), string(u.Status))),
		OidcIssuer: u.OIDCIssuer, OidcSubject: u.OIDCSubject, GroupIds: groupIDs,
		LastLoginTime: ts(u.LastLoginTime),
	}
}

// --- groups

func groupPB(g *domain.Group) *v1.Group {
	out := &v1.Group{
		Id: g.ID, TenantId: g.TenantID, Name: g.Name, Description: g.Description,
		CreateTime: ts(g.CreateTime), UpdateTime: ts(g.UpdateTime), Etag: etag(g.Meta),
		IdpGroupNames: g.IdPGroupNames, MemberCount: int32(len(g.Members)),
	}
	for _, m := range g.Members {
		out.Members = append(out.Members, memberPB(m))
	}
	return out
}

func memberPB(m domain.GroupMember) *v1.GroupMember {
	if m.NodeID != "" {
		return &v1.GroupMember{Member: &v1.GroupMember_NodeId{NodeId: m.NodeID}}
	}
	return &v1.GroupMember{Member: &v1.GroupMember_UserId{UserId: m.UserID}}
}

func membersDomain(ms []*v1.GroupMember) []domain.GroupMember {
	out := make([]domain.GroupMember, 0, len(ms))
	for _, m := range ms {
		out = append(out, domain.GroupMember{UserID: m.GetUserId(), NodeID: m.GetNodeId()})
	}
	return out
}

// --- tags

func tagPB(t *domain.Tag, nodeCount int32) *v1.Tag {
	return &v1.Tag{
		Id: t.ID, TenantId: t.TenantID, Name: t.Name, Description: t.Description,
		CreateTime: ts(t.CreateTime), UpdateTime: ts(t.UpdateTime), Etag: etag(t.Meta),
		OwnerGroupIds: t.OwnerGroupIDs, NodeCount: nodeCount,
	}
}

// --- policies

func policyPB(p *domain.Policy) *v1.Policy {
	out := &v1.Policy{
		Id: p.ID, TenantId: p.TenantID, Name: p.Name, Description: p.Description,
		CreateTime: ts(p.CreateTime), UpdateTime: ts(p.UpdateTime), Etag: etag(p.Meta),
		CvlanId: p.CvlanID, Enabled: p.Enabled, Priority: p.Priority,
	}
	for _, r := range p.Rules {
		pr := &v1.PolicyRule{
			Name: r.Name, Description: r.Description,
			Action:   v1.PolicyAction(enumNum(v1.PolicyAction(0).Descriptor(), string(r.Action))),
			Protocol: v1.Protocol(enumNum(v1.Protocol(0).Descriptor(), string(r.Protocol))),
		}
		for _, t := range r.Sources {
			pr.Sources = append(pr.Sources, targetPB(t))
		}
		for _, t := range r.Destinations {
			pr.Destinations = append(pr.Destinations, targetPB(t))
		}
		for _, pt := range r.Ports {
			pr.Ports = append(pr.Ports, &v1.PortRange{First: pt.First, Last: pt.Last})
		}
		out.Rules = append(out.Rules, pr)
	}
	return out
}

func targetPB(t domain.PolicyTarget) *v1.PolicyTarget {
	switch {
	case t.Any:
		return &v1.PolicyTarget{Target: &v1.PolicyTarget_Any{Any: true}}
	case t.UserID != "":
		return &v1.PolicyTarget{Target: &v1.PolicyTarget_UserId{UserId: t.UserID}}
	case t.GroupID != "":
		return &v1.PolicyTarget{Target: &v1.PolicyTarget_GroupId{GroupId: t.GroupID}}
	case t.Tag != "":
		return &v1.PolicyTarget{Target: &v1.PolicyTarget_Tag{Tag: t.Tag}}
	case t.NodeID != "":
		return &v1.PolicyTarget{Target: &v1.PolicyTarget_NodeId{NodeId: t.NodeID}}
	default:
		return &v1.PolicyTarget{Target: &v1.PolicyTarget_Cidr{Cidr: prefixStr(t.CIDR)}}
	}
}

func policyDomain(p *v1.Policy) (*domain.Policy, error) {
	out := &domain.Policy{Name: p.GetName(), Description: p.GetDescription(), CvlanID: p.GetCvlanId(), Enabled: p.GetEnabled(), Priority: p.GetPriority()}
	for _, r := range p.GetRules() {
		dr := domain.PolicyRule{
			Name: r.GetName(), Description: r.GetDescription(),
			Action:   domain.PolicyAction(enumStr(r.GetAction())),
			Protocol: domain.Protocol(enumStr(r.GetProtocol())),
		}
		for _, list := range []struct {
			in  []*v1.PolicyTarget
			out *[]domain.PolicyTarget
		}{{r.GetSources(), &dr.Sources}, {r.GetDestinations(), &dr.Destinations}} {
			for _, t := range list.in {
				dt, err := targetDomain(t)
				if err != nil {
					return nil, err
				}
				*list.out = append(*list.out, dt)
			}
		}
		for _, pt := range r.GetPorts() {
			dr.Ports = append(dr.Ports, domain.PortRange{First: pt.GetFirst(), Last: pt.GetLast()})
		}
		out.Rules = append(out.Rules, dr)
	}
	return out, nil
}

func targetDomain(t *v1.PolicyTarget) (domain.PolicyTarget, error) {
	switch x := t.GetTarget().(type) {
	case *v1.PolicyTarget_Any:
		return domain.PolicyTarget{Any: x.Any}, nil
	case *v1.PolicyTarget_UserId:
		return domain.PolicyTarget{UserID: x.UserId}, nil
	case *v1.PolicyTarget_GroupId:
		return domain.PolicyTarget{GroupID: x.GroupId}, nil
	case *v1.PolicyTarget_Tag:
		return domain.PolicyTarget{Tag: x.Tag}, nil
	case *v1.PolicyTarget_NodeId:
		return domain.PolicyTarget{NodeID: x.NodeId}, nil
	case *v1.PolicyTarget_Cidr:
		p, err := parsePrefix(x.Cidr)
		return domain.PolicyTarget{CIDR: p}, err
	}
	return domain.PolicyTarget{}, invalid("policy target is empty")
}

// --- regions (global)

func regionPB(r *domain.Region, relayIDs []string) *v1.Region {
	return &v1.Region{
		Id: r.ID, Name: r.Name, Code: r.Code, Description: r.Description,
		CreateTime: ts(r.CreateTime), UpdateTime: ts(r.UpdateTime), Etag: etag(r.Meta), RelayIds: relayIDs,
	}
}

// --- relays (TenantID empty: shared)

func relayPB(r *domain.Relay) *v1.Relay {
	return &v1.Relay{
		Id: r.ID, TenantId: r.TenantID, Name: r.Name, Description: r.Description,
		CreateTime: ts(r.CreateTime), UpdateTime: ts(r.UpdateTime), Etag: etag(r.Meta),
		RegionId: r.RegionID, Hostname: r.Hostname, Addresses: r.Addresses, StunAddress: r.STUNAddress,
		Status: v1.RelayStatus(enumNum(v1.RelayStatus(0).Descriptor(), string(r.Status))),
		Stats: &v1.RelayStats{
			ConnectedClients: r.Stats.ConnectedClients, BytesForwarded: r.Stats.BytesForwarded,
			PacketsForwarded: r.Stats.PacketsForwarded, Drops: r.Stats.Drops, MeshPeers: r.Stats.MeshPeers,
			UpdateTime: ts(r.Stats.UpdateTime),
		},
		Version: r.SoftwareVersion, LastSeenTime: ts(r.LastSeenTime), CertExpireTime: ts(r.CertExpireTime),
	}
}

// --- vrouters

func vrouterPB(v *domain.VRouter) *v1.VRouter {
	out := &v1.VRouter{
		Id: v.ID, TenantId: v.TenantID, Name: v.Name, Description: v.Description,
		CreateTime: ts(v.CreateTime), UpdateTime: ts(v.UpdateTime), Etag: etag(v.Meta),
		RegionId: v.RegionID, CvlanId: v.CvlanID, NodeId: v.NodeID, LastSeenTime: ts(v.LastSeenTime),
		Status:        v1.VRouterStatus(enumNum(v1.VRouterStatus(0).Descriptor(), string(v.Status))),
		PublicAddress: v.PublicAddress, Version: v.SoftwareVersion,
		Stats: &v1.VRouterStats{
			ConnectionsTotal: v.Stats.ConnectionsTotal, ConnectionsUp: v.Stats.ConnectionsUp,
			BytesIn: v.Stats.BytesIn, BytesOut: v.Stats.BytesOut, PacketsIn: v.Stats.PacketsIn,
			PacketsOut: v.Stats.PacketsOut, UpdateTime: ts(v.Stats.UpdateTime),
		},
	}
	for _, c := range v.Connections {
		// The pre-shared key is never returned (nor written to the audit log): only whether it is set.
		pc := &v1.VRouterConnection{
			Name: c.Name, RemoteAddress: c.RemoteAddress, PreSharedKeySet: c.PreSharedKey != "",
			IkeVersion: v1.IkeVersion(enumNum(v1.IkeVersion(0).Descriptor(), c.IKEVersion)),
			RemoteId:   c.RemoteID, IkeProposal: c.IKEProposal, EspProposal: c.ESPProposal,
			Status:         v1.VRouterConnectionStatus(enumNum(v1.VRouterConnectionStatus(0).Descriptor(), c.Status)),
			LastChangeTime: ts(c.LastChangeTime), Error: c.Error,
		}
		for _, p := range c.LocalSubnets {
			pc.LocalSubnets = append(pc.LocalSubnets, p.String())
		}
		for _, p := range c.RemoteSubnets {
			pc.RemoteSubnets = append(pc.RemoteSubnets, p.String())
		}
		out.Connections = append(out.Connections, pc)
	}
	return out
}

// vrouterConnsDomain converts the requested connections; a connection sent without a
// pre-shared key keeps the one stored for the same name (clients never see it to send it back).
func vrouterConnsDomain(cs []*v1.VRouterConnection, old []domain.VRouterConnection) ([]domain.VRouterConnection, error) {
	prev := map[string]domain.VRouterConnection{}
	for _, c := range old {
		prev[c.Name] = c
	}
	out := make([]domain.VRouterConnection, 0, len(cs))
	for _, c := range cs {
		dc := domain.VRouterConnection{
			Name: c.GetName(), RemoteAddress: c.GetRemoteAddress(), IKEVersion: enumStr(c.GetIkeVersion()),
			PreSharedKey: c.GetPreSharedKey(), RemoteID: c.GetRemoteId(), IKEProposal: c.GetIkeProposal(),
			ESPProposal: c.GetEspProposal(),
		}
		for _, s := range c.GetLocalSubnets() {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, err
			}
			dc.LocalSubnets = append(dc.LocalSubnets, p)
		}
		for _, s := range c.GetRemoteSubnets() {
			p, err := parsePrefix(s)
			if err != nil {
				return nil, err
			}
			dc.RemoteSubnets = append(dc.RemoteSubnets, p)
		}
		if p, ok := prev[dc.Name]; ok {
			if dc.PreSharedKey == "" {
				dc.PreSharedKey = p.PreSharedKey
			}
			dc.Status, dc.LastChangeTime, dc.Error = p.Status, p.LastChangeTime, p.Error
		}
		out = append(out, dc)
	}
	return out, nil
}

// --- discovery servers

func discoveryPB(d *domain.DiscoveryServer) *v1.DiscoveryServer {
	return &v1.DiscoveryServer{
		Id: d.ID, TenantId: d.TenantID, Name: d.Name, Description: d.Description,
		CreateTime: ts(d.CreateTime), UpdateTime: ts(d.UpdateTime), Etag: etag(d.Meta),
		Address: d.Address, RegionId: d.RegionID, Enabled: d.Enabled, Username: d.Username,
		CredentialSet: d.Credential != "",
		Type:          v1.DiscoveryServerType(enumNum(v1.DiscoveryServerType(0).Descriptor(), d.Type)),
	}
}

// --- API keys

func apiKeyPB(k *domain.APIKey, now time.Time) *v1.ApiKey {
	out := &v1.ApiKey{
		Id: k.ID, TenantId: k.TenantID, Name: k.Name, Description: k.Description,
		CreateTime: ts(k.CreateTime), UpdateTime: ts(k.UpdateTime), Etag: etag(k.Meta),
		Prefix: k.Prefix, Role: v1.UserRole(enumNum(v1.UserRole(0).Descriptor(), string(k.Role))),
		Status: apiKeyStatus(k, now), ExpireTime: ts(k.ExpireTime), LastUsedTime: ts(k.LastUsedTime),
		CreatedBy: k.CreatedBy,
	}
	for _, s := range k.Scopes {
		out.Scopes = append(out.Scopes, v1.ApiScope(enumNum(v1.ApiScope(0).Descriptor(), s)))
	}
	return out
}

func apiKeyStatus(k *domain.APIKey, now time.Time) v1.ApiKeyStatus {
	switch {
	case k.Revoked:
		return v1.ApiKeyStatus_API_KEY_STATUS_REVOKED
	case !k.ExpireTime.IsZero() && !now.Before(k.ExpireTime):
		return v1.ApiKeyStatus_API_KEY_STATUS_EXPIRED
	}
	return v1.ApiKeyStatus_API_KEY_STATUS_ACTIVE
}

// --- join tokens

func joinTokenKindPB(k domain.NodeKind) v1.JoinTokenKind {
	return v1.JoinTokenKind(enumNum(v1.JoinTokenKind(0).Descriptor(), string(k)))
}

func joinTokenPB(j *domain.JoinToken, now time.Time) *v1.JoinToken {
	return &v1.JoinToken{
		Id: j.ID, TenantId: j.TenantID, Name: j.Name, Description: j.Description,
		CreateTime: ts(j.CreateTime), UpdateTime: ts(j.UpdateTime), Etag: etag(j.Meta),
		CvlanId: j.CvlanID, Kind: joinTokenKindPB(j.Kind), TargetId: j.TargetID, Reusable: j.Reusable,
		MaxUses: j.MaxUses, UseCount: j.UseCount, Ephemeral: j.Ephemeral, Tags: j.Tags,
		ExpireTime: ts(j.ExpireTime), Revoked: j.Revoked, Prefix: j.Prefix,
		Status: joinTokenStatus(j, now), CreatedBy: j.CreatedBy, LastUsedTime: ts(j.LastUsedTime),
	}
}

func joinTokenStatus(j *domain.JoinToken, now time.Time) v1.JoinTokenStatus {
	switch {
	case j.Revoked:
		return v1.JoinTokenStatus_JOIN_TOKEN_STATUS_REVOKED
	case !j.UsesLeft():
		return v1.JoinTokenStatus_JOIN_TOKEN_STATUS_USED
	case !j.ExpireTime.IsZero() && !now.Before(j.ExpireTime):
		// No expiry never expires, as in store.ConsumeJoinToken and the store's status filter.
		return v1.JoinTokenStatus_JOIN_TOKEN_STATUS_EXPIRED
	}
	return v1.JoinTokenStatus_JOIN_TOKEN_STATUS_ACTIVE
}

// credentialStatus maps an ApiKeyStatus or JoinTokenStatus filter to the store's ("" when
// unspecified); the enum value names are the store's statuses.
func credentialStatus(e protoreflect.Enum) store.CredentialStatus {
	return store.CredentialStatus(enumStr(e))
}

// --- resource types

func resourceTypePB(s string) v1.ResourceType {
	return v1.ResourceType(enumNum(v1.ResourceType(0).Descriptor(), s))
}
