package api

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func userMsg(u *domain.User) proto.Message { return userPB(u, nil) }

// checkGrant refuses to hand out a role above the caller's own.
func checkGrant(ctx context.Context, r domain.Role) error {
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	if !auth.AtLeast(p.Role, r) {
		return connect.NewError(connect.CodePermissionDenied, errors.New("cannot grant a role above your own"))
	}
	return nil
}

func (s *server) GetUser(ctx context.Context, req *connect.Request[v1.GetUserRequest]) (*connect.Response[v1.GetUserResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var out *v1.User
	err = s.read(ctx, scope, func(tx store.Tx) error {
		u, err := tx.GetUser(ctx, req.Msg.GetId())
		if err != nil {
			return err
		}
		var gids []string
		if err := eachPage(func(tok string) (string, error) {
			p, err := tx.ListGroups(ctx, store.GroupFilter{UserID: u.ID}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
			if err != nil {
				return "", err
			}
			for _, g := range p.Items {
				gids = append(gids, g.ID)
			}
			return p.NextPageToken, nil
		}); err != nil {
			return err
		}
		out = userPB(u, gids)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetUserResponse{User: out}), nil
}

func (s *server) ListUsers(ctx context.Context, req *connect.Request[v1.ListUsersRequest]) (*connect.Response[v1.ListUsersResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListUsersResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListUsers(ctx, store.UserFilter{
			Role: domain.Role(enumStr(m.GetRole())), Status: domain.UserStatus(enumStr(m.GetStatus())),
			EmailPrefix: m.GetEmailPrefix(), GroupID: m.GetGroupId(),
		}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, u := range p.Items {
			out.Users = append(out.Users, userPB(u, nil))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateUser(ctx context.Context, req *connect.Request[v1.CreateUserRequest]) (*connect.Response[v1.CreateUserResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetUser()
	u := &domain.User{
		TenantID: scope.TenantID, Name: in.GetName(), Description: in.GetDescription(), Email: in.GetEmail(),
		DisplayName: in.GetDisplayName(), Role: domain.Role(enumStr(in.GetRole())),
		Status: domain.UserStatus(enumStr(in.GetStatus())),
	}
	if u.Status == "" {
		u.Status = domain.UserActive
	}
	if err := checkGrant(ctx, u.Role); err != nil {
		return nil, err
	}
	if err := doCreate(ctx, s, scope, "user.create", domain.ResourceUser, u, store.Tx.CreateUser, userMsg, nil); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateUserResponse{User: userPB(u, nil)}), nil
}

func (s *server) UpdateUser(ctx context.Context, req *connect.Request[v1.UpdateUserRequest]) (*connect.Response[v1.UpdateUserResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetUser()
	u, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "user.update", domain.ResourceUser,
		store.Tx.GetUser, store.Tx.UpdateUser, userMsg, func(_ store.Tx, u *domain.User) error {
			if err := checkGrant(ctx, u.Role); err != nil { // may not edit someone above oneself
				return err
			}
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					u.Name = in.GetName()
				case "description":
					u.Description = in.GetDescription()
				case "display_name":
					u.DisplayName = in.GetDisplayName()
				case "role":
					u.Role = domain.Role(enumStr(in.GetRole()))
					if err := checkGrant(ctx, u.Role); err != nil {
						return err
					}
				case "status":
					if in.GetStatus() == v1.UserStatus_USER_STATUS_UNSPECIFIED {
						return invalid("status cannot be cleared")
					}
					u.Status = domain.UserStatus(enumStr(in.GetStatus()))
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateUserResponse{User: userPB(u, nil)}), nil
}

func (s *server) DeleteUser(ctx context.Context, req *connect.Request[v1.DeleteUserRequest]) (*connect.Response[v1.DeleteUserResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "user.delete", domain.ResourceUser, store.Tx.GetUser,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteUser(ctx, id, v) }, userMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteUserResponse{}), nil
}
