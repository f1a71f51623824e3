package api

import (
	"context"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func groupMsg(g *domain.Group) proto.Message { return groupPB(g) }

// checkMembers makes sure every member exists in the transaction's tenant (NotFound otherwise),
// so that a group can never reference another tenant's user or node.
func checkMembers(ctx context.Context, tx store.Tx, ms []domain.GroupMember) error {
	for _, m := range ms {
		var err error
		if m.NodeID != "" {
			_, err = tx.GetNode(ctx, m.NodeID)
		} else {
			_, err = tx.GetUser(ctx, m.UserID)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (s *server) GetGroup(ctx context.Context, req *connect.Request[v1.GetGroupRequest]) (*connect.Response[v1.GetGroupResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var g *domain.Group
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { g, err = tx.GetGroup(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetGroupResponse{Group: groupPB(g)}), nil
}

func (s *server) ListGroups(ctx context.Context, req *connect.Request[v1.ListGroupsRequest]) (*connect.Response[v1.ListGroupsResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListGroupsResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListGroups(ctx, store.GroupFilter{NamePrefix: m.GetNamePrefix(), UserID: m.GetUserId(), NodeID: m.GetNodeId()},
			listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, g := range p.Items {
			out.Groups = append(out.Groups, groupPB(g))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateGroup(ctx context.Context, req *connect.Request[v1.CreateGroupRequest]) (*connect.Response[v1.CreateGroupResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetGroup()
	g := &domain.Group{
		TenantID: scope.TenantID, Name: in.GetName(), Description: in.GetDescription(),
		Members: membersDomain(in.GetMembers()), IdPGroupNames: slices.Clone(in.GetIdpGroupNames()),
	}
	if err := doCreate(ctx, s, scope, "group.create", domain.ResourceGroup, g, store.Tx.CreateGroup, groupMsg,
		func(tx store.Tx) error { return checkMembers(ctx, tx, g.Members) }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateGroupResponse{Group: groupPB(g)}), nil
}

func (s *server) UpdateGroup(ctx context.Context, req *connect.Request[v1.UpdateGroupRequest]) (*connect.Response[v1.UpdateGroupResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetGroup()
	g, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "group.update", domain.ResourceGroup,
		store.Tx.GetGroup, store.Tx.UpdateGroup, groupMsg, func(_ store.Tx, g *domain.Group) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					g.Name = in.GetName()
				case "description":
					g.Description = in.GetDescription()
				case "idp_group_names":
					g.IdPGroupNames = slices.Clone(in.GetIdpGroupNames())
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateGroupResponse{Group: groupPB(g)}), nil
}

func (s *server) DeleteGroup(ctx context.Context, req *connect.Request[v1.DeleteGroupRequest]) (*connect.Response[v1.DeleteGroupResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "group.delete", domain.ResourceGroup, store.Tx.GetGroup,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteGroup(ctx, id, v) }, groupMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteGroupResponse{}), nil
}

func (s *server) AddGroupMembers(ctx context.Context, req *connect.Request[v1.AddGroupMembersRequest]) (*connect.Response[v1.AddGroupMembersResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	add := membersDomain(req.Msg.GetMembers())
	g, err := doUpdate(ctx, s, scope, req.Msg.GetId(), "", "group.add_members", domain.ResourceGroup,
		store.Tx.GetGroup, store.Tx.UpdateGroup, groupMsg, func(tx store.Tx, g *domain.Group) error {
			if err := checkMembers(ctx, tx, add); err != nil {
				return err
			}
			ms := slices.Clone(g.Members)
			for _, m := range add {
				if !slices.Contains(ms, m) {
					ms = append(ms, m)
				}
			}
			g.Members = ms
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.AddGroupMembersResponse{Group: groupPB(g)}), nil
}

func (s *server) RemoveGroupMembers(ctx context.Context, req *connect.Request[v1.RemoveGroupMembersRequest]) (*connect.Response[v1.RemoveGroupMembersResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	rm := membersDomain(req.Msg.GetMembers())
	g, err := doUpdate(ctx, s, scope, req.Msg.GetId(), "", "group.remove_members", domain.ResourceGroup,
		store.Tx.GetGroup, store.Tx.UpdateGroup, groupMsg, func(_ store.Tx, g *domain.Group) error {
			g.Members = slices.DeleteFunc(slices.Clone(g.Members), func(m domain.GroupMember) bool { return slices.Contains(rm, m) })
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.RemoveGroupMembersResponse{Group: groupPB(g)}), nil
}
