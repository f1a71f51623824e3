package api

import (
	"context"
	"errors"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// tenantScope is the scope for reading or changing tenant id: super_admin sees every tenant,
// others only their own (another id is NotFound).
func (s *server) tenantScope(ctx context.Context, id string) (store.Scope, error) {
	p, err := principal(ctx)
	if err != nil {
		return store.Scope{}, err
	}
	if p.IsSuperAdmin() {
		return store.AllTenants(), nil
	}
	if id != "" && id != p.TenantID {
		return store.Scope{}, connect.NewError(connect.CodeNotFound, errors.New("tenant not found"))
	}
	return store.TenantScope(p.TenantID), nil
}

func tenantPB0(t *domain.Tenant) proto.Message { return tenantPB(t, 0) }

func (s *server) GetTenant(ctx context.Context, req *connect.Request[v1.GetTenantRequest]) (*connect.Response[v1.GetTenantResponse], error) {
	scope, err := s.tenantScope(ctx, req.Msg.GetId())
	if err != nil {
		return nil, err
	}
	var t *domain.Tenant
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { t, err = tx.GetTenant(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	// Counted in a transaction of its own (tenant scope), never nested in another one.
	used, err := s.countNodes(ctx, t.ID, store.NodeFilter{})
	if err != nil {
		return nil, s.toConnect(ctx, err)
	}
	out := tenantPB(t, int32(used))
	return connect.NewResponse(&v1.GetTenantResponse{Tenant: out}), nil
}

// countNodes counts a tenant's nodes matching f in a transaction of its own (tenant scope).
func (s *server) countNodes(ctx context.Context, tenantID string, f store.NodeFilter) (int, error) {
	var n int
	err := s.st.ReadTx(ctx, store.TenantScope(tenantID), func(tx store.Tx) error {
		p, err := tx.ListNodes(ctx, f, store.ListOptions{PageSize: 1, WithTotal: true})
		if err != nil {
			return err
		}
		n = p.TotalSize
		return nil
	})
	return n, err
}

func (s *server) ListTenants(ctx context.Context, req *connect.Request[v1.ListTenantsRequest]) (*connect.Response[v1.ListTenantsResponse], error) {
	scope, err := s.tenantScope(ctx, "")
	if err != nil {
		return nil, err
	}
	m := req.Msg
	out := &v1.ListTenantsResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		page, err := tx.ListTenants(ctx, store.TenantFilter{
			Status: domain.TenantStatus(enumStr(m.GetStatus())), NamePrefix: m.GetNamePrefix(),
		}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, t := range page.Items {
			out.Tenants = append(out.Tenants, tenantPB(t, 0))
		}
		out.NextPageToken, out.TotalSize = page.NextPageToken, int32(page.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	// Counted per tenant in transactions of their own (tenant scope), as GetTenant does.
	for _, t := range out.Tenants {
		used, err := s.countNodes(ctx, t.GetId(), store.NodeFilter{})
		if err != nil {
			return nil, s.toConnect(ctx, err)
		}
		t.Capacity.Used = int32(used)
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateTenant(ctx context.Context, req *connect.Request[v1.CreateTenantRequest]) (*connect.Response[v1.CreateTenantResponse], error) {
	in := req.Msg.GetTenant()
	t := &domain.Tenant{
		Name: in.GetName(), Description: in.GetDescription(), DisplayName: in.GetDisplayName(),
		Status: domain.TenantStatus(enumStr(in.GetStatus())), MaxNodes: in.GetCapacity().GetLimit(),
		Settings: tenantSettingsDomain(in.GetSettings()),
	}
	if t.Status == "" {
		t.Status = domain.TenantActive
	}
	if err := doCreate(ctx, s, store.AllTenants(), "tenant.create", domain.ResourceTenant, t, store.Tx.CreateTenant, tenantPB0, nil); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateTenantResponse{Tenant: tenantPB(t, 0)}), nil
}

func (s *server) UpdateTenant(ctx context.Context, req *connect.Request[v1.UpdateTenantRequest]) (*connect.Response[v1.UpdateTenantResponse], error) {
	in := req.Msg.GetTenant()
	scope, err := s.tenantScope(ctx, in.GetId())
	if err != nil {
		return nil, err
	}
	p, _ := principal(ctx)
	paths := req.Msg.GetUpdateMask().GetPaths()
	t, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "tenant.update", domain.ResourceTenant,
		store.Tx.GetTenant, store.Tx.UpdateTenant, tenantPB0, func(_ store.Tx, t *domain.Tenant) error {
			for _, path := range paths {
				switch path {
				case "name":
					t.Name = in.GetName()
				case "description":
					t.Description = in.GetDescription()
				case "display_name":
					t.DisplayName = in.GetDisplayName()
				case "status", "capacity.limit":
					if !p.IsSuperAdmin() {
						return connect.NewError(connect.CodePermissionDenied, errors.New("only super_admin may change status or capacity"))
					}
					if path == "status" {
						if in.GetStatus() == v1.TenantStatus_TENANT_STATUS_UNSPECIFIED {
							return invalid("status cannot be cleared")
						}
						t.Status = domain.TenantStatus(enumStr(in.GetStatus()))
					} else {
						t.MaxNodes = in.GetCapacity().GetLimit()
					}
				case "settings":
					ns := tenantSettingsDomain(in.GetSettings())
					if ns.MaxCvlans != t.Settings.MaxCvlans && !p.IsSuperAdmin() {
						return connect.NewError(connect.CodePermissionDenied, errors.New("only super_admin may change settings.max_cvlans"))
					}
					t.Settings = ns
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateTenantResponse{Tenant: tenantPB(t, 0)}), nil
}

func (s *server) DeleteTenant(ctx context.Context, req *connect.Request[v1.DeleteTenantRequest]) (*connect.Response[v1.DeleteTenantResponse], error) {
	m := req.Msg
	sys, err := s.systemTenant(ctx)
	if err == nil && sys == m.GetId() {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the system tenant cannot be deleted"))
	}
	var nodeIDs []string
	if m.GetForce() {
		// The tenant's node identities are revoked once the delete commits; listed first in the
		// tenant's own scope (a node enrolled in between is deleted with the tenant anyway).
		if err := s.read(ctx, store.TenantScope(m.GetId()), func(tx store.Tx) error {
			return eachPage(func(tok string) (string, error) {
				p, err := tx.ListNodes(ctx, store.NodeFilter{}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
				if err != nil {
					return "", err
				}
				for _, n := range p.Items {
					nodeIDs = append(nodeIDs, n.ID)
				}
				return p.NextPageToken, nil
			})
		}); err != nil {
			return nil, err
		}
	}
	_, err = doDelete(ctx, s, store.AllTenants(), m.GetId(), m.GetEtag(), "tenant.delete", domain.ResourceTenant,
		store.Tx.GetTenant, func(tx store.Tx, id string, v int64) error { return tx.DeleteTenant(ctx, id, v, m.GetForce()) }, tenantPB0)
	if err != nil {
		return nil, err
	}
	for _, id := range nodeIDs {
		s.revokeNode(ctx, m.GetId(), id)
	}
	return connect.NewResponse(&v1.DeleteTenantResponse{}), nil
}

func (s *server) GetTenantStats(ctx context.Context, req *connect.Request[v1.GetTenantStatsRequest]) (*connect.Response[v1.GetTenantStatsResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	st := &v1.TenantStats{TenantId: scope.TenantID, ComputeTime: ts(s.now())}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		if _, err := tx.GetTenant(ctx, scope.TenantID); err != nil {
			return err
		}
		count := func(f store.NodeFilter) (int32, error) {
			p, err := tx.ListNodes(ctx, f, store.ListOptions{PageSize: 1, WithTotal: true})
			if err != nil {
				return 0, err
			}
			return int32(p.TotalSize), nil
		}
		for _, c := range []struct {
			dst *int32
			f   store.NodeFilter
		}{
			{&st.NodesTotal, store.NodeFilter{}},
			{&st.NodesOnline, store.NodeFilter{Status: domain.NodeOnline}},
			{&st.NodesOffline, store.NodeFilter{Status: domain.NodeOffline}},
			{&st.NodesQuarantined, store.NodeFilter{Status: domain.NodeQuarantined}},
			{&st.NodesInSync, store.NodeFilter{SyncState: domain.SyncInSync}},
			{&st.NodesSyncPending, store.NodeFilter{SyncState: domain.SyncPending}},
			{&st.NodesSyncFailed, store.NodeFilter{SyncState: domain.SyncFailed}},
		} {
			n, err := count(c.f)
			if err != nil {
				return err
			}
			*c.dst = n
		}
		cv, err := tx.ListCvlans(ctx, store.CvlanFilter{}, store.ListOptions{PageSize: 1, WithTotal: true})
		if err != nil {
			return err
		}
		st.Cvlans = int32(cv.TotalSize)
		us, err := tx.ListUsers(ctx, store.UserFilter{}, store.ListOptions{PageSize: 1, WithTotal: true})
		if err != nil {
			return err
		}
		st.Users = int32(us.TotalSize)
		if err := eachPage(func(tok string) (string, error) {
			p, err := tx.ListRelays(ctx, store.RelayFilter{}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
			if err != nil {
				return "", err
			}
			for _, r := range p.Items {
				st.RelaysTotal++
				if r.Status == domain.RelayOnline {
					st.RelaysOnline++
				}
			}
			return p.NextPageToken, nil
		}); err != nil {
			return err
		}
		return eachPage(func(tok string) (string, error) {
			p, err := tx.ListVRouters(ctx, store.VRouterFilter{}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
			if err != nil {
				return "", err
			}
			for _, r := range p.Items {
				st.VroutersTotal++
				if r.Status == domain.VRouterOnline {
					st.VroutersOnline++
				}
			}
			return p.NextPageToken, nil
		})
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetTenantStatsResponse{Stats: st}), nil
}

// eachPage calls page with "" and then each returned token until it returns "".
func eachPage(page func(tok string) (string, error)) error {
	tok := ""
	for {
		next, err := page(tok)
		if err != nil || next == "" {
			return err
		}
		tok = next
	}
}
