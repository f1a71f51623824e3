package api

import (
	"context"
	"fmt"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func tagMsg(t *domain.Tag) proto.Message { return tagPB(t, 0) }

func checkGroups(ctx context.Context, tx store.Tx, ids []string) error {
	for _, id := range ids {
		if _, err := tx.GetGroup(ctx, id); err != nil {
			return err
		}
	}
	return nil
}

func (s *server) GetTag(ctx context.Context, req *connect.Request[v1.GetTagRequest]) (*connect.Response[v1.GetTagResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var out *v1.Tag
	err = s.read(ctx, scope, func(tx store.Tx) error {
		t, err := tx.GetTag(ctx, req.Msg.GetId())
		if err != nil {
			return err
		}
		p, err := tx.ListNodes(ctx, store.NodeFilter{Tag: t.Name}, store.ListOptions{PageSize: 1, WithTotal: true})
		if err != nil {
			return err
		}
		out = tagPB(t, int32(p.TotalSize))
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetTagResponse{Tag: out}), nil
}

func (s *server) ListTags(ctx context.Context, req *connect.Request[v1.ListTagsRequest]) (*connect.Response[v1.ListTagsResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListTagsResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListTags(ctx, store.TagFilter{NamePrefix: m.GetNamePrefix(), OwnerGroupID: m.GetOwnerGroupId()}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, t := range p.Items {
			out.Tags = append(out.Tags, tagPB(t, 0))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateTag(ctx context.Context, req *connect.Request[v1.CreateTagRequest]) (*connect.Response[v1.CreateTagResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetTag()
	t := &domain.Tag{TenantID: scope.TenantID, Name: in.GetName(), Description: in.GetDescription(), OwnerGroupIDs: slices.Clone(in.GetOwnerGroupIds())}
	if err := doCreate(ctx, s, scope, "tag.create", domain.ResourceTag, t, store.Tx.CreateTag, tagMsg,
		func(tx store.Tx) error { return checkGroups(ctx, tx, t.OwnerGroupIDs) }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateTagResponse{Tag: tagPB(t, 0)}), nil
}

func (s *server) UpdateTag(ctx context.Context, req *connect.Request[v1.UpdateTagRequest]) (*connect.Response[v1.UpdateTagResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetTag()
	t, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "tag.update", domain.ResourceTag,
		store.Tx.GetTag, store.Tx.UpdateTag, tagMsg, func(tx store.Tx, t *domain.Tag) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "description":
					t.Description = in.GetDescription()
				case "owner_group_ids":
					if err := checkGroups(ctx, tx, in.GetOwnerGroupIds()); err != nil {
						return err
					}
					t.OwnerGroupIDs = slices.Clone(in.GetOwnerGroupIds())
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateTagResponse{Tag: tagPB(t, 0)}), nil
}

func (s *server) DeleteTag(ctx context.Context, req *connect.Request[v1.DeleteTagRequest]) (*connect.Response[v1.DeleteTagResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "tag.delete", domain.ResourceTag, store.Tx.GetTag,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteTag(ctx, id, v) }, tagMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteTagResponse{}), nil
}

// checkTags makes sure every tag name exists in the transaction's tenant (NotFound otherwise).
func checkTags(ctx context.Context, tx store.Tx, names []string) error {
	for _, n := range names {
		p, err := tx.ListTags(ctx, store.TagFilter{NamePrefix: n}, store.ListOptions{PageSize: store.MaxPageSize})
		if err != nil {
			return err
		}
		if !slices.ContainsFunc(p.Items, func(t *domain.Tag) bool { return t.Name == n }) {
			return connect.NewError(connect.CodeNotFound, fmt.Errorf("tag %q not found", n))
		}
	}
	return nil
}
