package api

import (
	"context"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func cvlanMsg(c *domain.Cvlan) proto.Message { return cvlanPB(c) }

func (s *server) GetCvlan(ctx context.Context, req *connect.Request[v1.GetCvlanRequest]) (*connect.Response[v1.GetCvlanResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var c *domain.Cvlan
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { c, err = tx.GetCvlan(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetCvlanResponse{Cvlan: cvlanPB(c)}), nil
}

func (s *server) ListCvlans(ctx context.Context, req *connect.Request[v1.ListCvlansRequest]) (*connect.Response[v1.ListCvlansResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListCvlansResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListCvlans(ctx, store.CvlanFilter{NamePrefix: m.GetNamePrefix()}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, c := range p.Items {
			out.Cvlans = append(out.Cvlans, cvlanPB(c))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateCvlan(ctx context.Context, req *connect.Request[v1.CreateCvlanRequest]) (*connect.Response[v1.CreateCvlanResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	c, err := cvlanDomain(req.Msg.GetCvlan())
	if err != nil {
		return nil, err
	}
	if c.IPv6CIDR.IsValid() && !isULA(c.IPv6CIDR) {
		return nil, invalid("ipv6_cidr %s is not inside fc00::/7", c.IPv6CIDR)
	}
	c.TenantID = scope.TenantID
	if err := doCreate(ctx, s, scope, "cvlan.create", domain.ResourceCvlan, c, store.Tx.CreateCvlan, cvlanMsg, nil); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateCvlanResponse{Cvlan: cvlanPB(c)}), nil
}

func (s *server) UpdateCvlan(ctx context.Context, req *connect.Request[v1.UpdateCvlanRequest]) (*connect.Response[v1.UpdateCvlanResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetCvlan()
	nv, err := cvlanDomain(in)
	if err != nil {
		return nil, err
	}
	c, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "cvlan.update", domain.ResourceCvlan,
		store.Tx.GetCvlan, store.Tx.UpdateCvlan, cvlanMsg, func(_ store.Tx, c *domain.Cvlan) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					c.Name = nv.Name
				case "description":
					c.Description = nv.Description
				case "dns_domain":
					c.DNSDomain = nv.DNSDomain
				case "dns_nameservers":
					c.DNSNameservers = nv.DNSNameservers
				case "split_dns":
					c.SplitDNS = nv.SplitDNS
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateCvlanResponse{Cvlan: cvlanPB(c)}), nil
}

func (s *server) DeleteCvlan(ctx context.Context, req *connect.Request[v1.DeleteCvlanRequest]) (*connect.Response[v1.DeleteCvlanResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	var nodeIDs []string
	_, err = doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "cvlan.delete", domain.ResourceCvlan, store.Tx.GetCvlan,
		func(tx store.Tx, id string, v int64) error {
			if m.GetForce() {
				// Remember the nodes whose identities must be revoked once the delete commits.
				if err := eachPage(func(tok string) (string, error) {
					p, err := tx.ListNodes(ctx, store.NodeFilter{CvlanID: id}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
					if err != nil {
						return "", err
					}
					for _, n := range p.Items {
						nodeIDs = append(nodeIDs, n.ID)
					}
					return p.NextPageToken, nil
				}); err != nil {
					return err
				}
			}
			return tx.DeleteCvlan(ctx, id, v, m.GetForce())
		}, cvlanMsg)
	if err != nil {
		return nil, err
	}
	for _, id := range nodeIDs {
		s.revokeNode(ctx, scope.TenantID, id)
	}
	return connect.NewResponse(&v1.DeleteCvlanResponse{}), nil
}

func (s *server) GetCvlanStats(ctx context.Context, req *connect.Request[v1.GetCvlanStatsRequest]) (*connect.Response[v1.GetCvlanStatsResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var u store.CvlanUsage
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { u, err = tx.CvlanUsage(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetCvlanStatsResponse{Stats: &v1.CvlanStats{
		CvlanId: req.Msg.GetId(), NodesTotal: int32(u.Nodes), NodesOnline: int32(u.Online),
		Ipv4AddressesUsed: u.Nodes, Ipv4AddressesAvailable: u.IPv4Available, Ipv6AddressesUsed: u.Nodes,
		ComputeTime: ts(s.now()),
	}}), nil
}
