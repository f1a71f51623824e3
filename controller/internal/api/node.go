package api

import (
	"context"
	"errors"
	"net/netip"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func nodeMsg(n *domain.Node) proto.Message { return nodePB(n) }

func isULA(p netip.Prefix) bool {
	return netip.MustParsePrefix("fc00::/7").Contains(p.Addr()) && p.Bits() >= 7
}

func (s *server) GetNode(ctx context.Context, req *connect.Request[v1.GetNodeRequest]) (*connect.Response[v1.GetNodeResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var n *domain.Node
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { n, err = tx.GetNode(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetNodeResponse{Node: nodePB(n)}), nil
}

func (s *server) ListNodes(ctx context.Context, req *connect.Request[v1.ListNodesRequest]) (*connect.Response[v1.ListNodesResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	f := store.NodeFilter{
		CvlanID: m.GetCvlanId(), Tag: m.GetTag(), Status: domain.NodeStatus(enumStr(m.GetStatus())),
		SyncState: domain.SyncState(enumStr(m.GetSyncState())), NamePrefix: m.GetNamePrefix(),
		Kind: domain.NodeKind(enumStr(m.GetKind())), UserID: m.GetUserId(),
		PendingRouteApproval: m.GetPendingRouteApproval(),
	}
	out := &v1.ListNodesResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListNodes(ctx, f, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		out.Nodes = make([]*v1.Node, 0, len(p.Items))
		for _, n := range p.Items {
			out.Nodes = append(out.Nodes, nodePB(n))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) UpdateNode(ctx context.Context, req *connect.Request[v1.UpdateNodeRequest]) (*connect.Response[v1.UpdateNodeResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetNode()
	n, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "node.update", domain.ResourceNode,
		store.Tx.GetNode, store.Tx.UpdateNode, nodeMsg, func(_ store.Tx, n *domain.Node) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					n.Name = in.GetName()
				case "description":
					n.Description = in.GetDescription()
				case "tags":
					n.Tags = slices.Clone(in.GetTags())
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateNodeResponse{Node: nodePB(n)}), nil
}

func (s *server) DeleteNode(ctx context.Context, req *connect.Request[v1.DeleteNodeRequest]) (*connect.Response[v1.DeleteNodeResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "node.delete", domain.ResourceNode, store.Tx.GetNode,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteNode(ctx, id, v) }, nodeMsg); err != nil {
		return nil, err
	}
	s.revokeNode(ctx, scope.TenantID, m.GetId())
	return connect.NewResponse(&v1.DeleteNodeResponse{}), nil
}

func (s *server) QuarantineNode(ctx context.Context, req *connect.Request[v1.QuarantineNodeRequest]) (*connect.Response[v1.QuarantineNodeResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	n, err := doUpdate(ctx, s, scope, m.GetId(), m.GetEtag(), "node.quarantine", domain.ResourceNode,
		store.Tx.GetNode, store.Tx.UpdateNode, nodeMsg, func(tx store.Tx, n *domain.Node) error {
			if n.Status == domain.NodeQuarantined {
				return connect.NewError(connect.CodeFailedPrecondition, errors.New("node is already quarantined"))
			}
			n.Status, n.QuarantineReason, n.QuarantineTime = domain.NodeQuarantined, m.GetReason(), tx.Now()
			return nil
		})
	if err != nil {
		return nil, err
	}
	s.revokeNode(ctx, scope.TenantID, n.ID)
	return connect.NewResponse(&v1.QuarantineNodeResponse{Node: nodePB(n)}), nil
}

func (s *server) UnquarantineNode(ctx context.Context, req *connect.Request[v1.UnquarantineNodeRequest]) (*connect.Response[v1.UnquarantineNodeResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	n, err := doUpdate(ctx, s, scope, m.GetId(), m.GetEtag(), "node.unquarantine", domain.ResourceNode,
		store.Tx.GetNode, store.Tx.UpdateNode, nodeMsg, func(_ store.Tx, n *domain.Node) error {
			if n.Status != domain.NodeQuarantined {
				return connect.NewError(connect.CodeFailedPrecondition, errors.New("node is not quarantined"))
			}
			n.Status, n.QuarantineReason = domain.NodeOffline, ""
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UnquarantineNodeResponse{Node: nodePB(n)}), nil
}

func (s *server) ApproveNodeRoutes(ctx context.Context, req *connect.Request[v1.ApproveNodeRoutesRequest]) (*connect.Response[v1.ApproveNodeRoutesResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	parse := func(ss []string) ([]netip.Prefix, error) {
		out := make([]netip.Prefix, 0, len(ss))
		for _, c := range ss {
			p, err := parsePrefix(c)
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
		return out, nil
	}
	approve, err := parse(m.GetApproveCidrs())
	if err != nil {
		return nil, err
	}
	unapprove, err := parse(m.GetUnapproveCidrs())
	if err != nil {
		return nil, err
	}
	for _, p := range approve {
		if slices.Contains(unapprove, p) {
			return nil, invalid("%s is both approved and unapproved", p)
		}
	}
	n, err := doUpdate(ctx, s, scope, m.GetId(), m.GetEtag(), "node.approve_routes", domain.ResourceNode,
		store.Tx.GetNode, store.Tx.UpdateNode, nodeMsg, func(_ store.Tx, n *domain.Node) error {
			routes := slices.Clone(n.Routes)
			for _, p := range approve {
				i := slices.IndexFunc(routes, func(r domain.NodeRoute) bool { return r.CIDR == p })
				if i < 0 {
					routes = append(routes, domain.NodeRoute{CIDR: p, Approved: true})
				} else {
					routes[i].Approved = true
				}
			}
			for _, p := range unapprove {
				if i := slices.IndexFunc(routes, func(r domain.NodeRoute) bool { return r.CIDR == p }); i >= 0 {
					routes[i].Approved = false
				}
			}
			n.Routes = slices.DeleteFunc(routes, func(r domain.NodeRoute) bool { return !r.Advertised && !r.Approved })
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.ApproveNodeRoutesResponse{Node: nodePB(n)}), nil
}
