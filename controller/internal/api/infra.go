package api

import (
	"context"
	"errors"
	"slices"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// Regions are global (every scope reads them, the all-tenants scope changes them); relays
// without a tenant are shared (readable by every tenant, changed by super_admin only).

func regionMsg(r *domain.Region) proto.Message { return regionPB(r, nil) }

func (s *server) GetRegion(ctx context.Context, req *connect.Request[v1.GetRegionRequest]) (*connect.Response[v1.GetRegionResponse], error) {
	scope, err := s.tenantOf(ctx, "")
	if err != nil {
		return nil, err
	}
	var out *v1.Region
	err = s.read(ctx, scope, func(tx store.Tx) error {
		r, err := tx.GetRegion(ctx, req.Msg.GetId())
		if err != nil {
			return err
		}
		ids, err := regionRelayIDs(ctx, tx, r.ID)
		if err != nil {
			return err
		}
		out = regionPB(r, ids)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetRegionResponse{Region: out}), nil
}

// regionRelayIDs lists the ids of the relays in a region that the transaction's scope can see.
func regionRelayIDs(ctx context.Context, tx store.Tx, regionID string) ([]string, error) {
	var ids []string
	err := eachPage(func(tok string) (string, error) {
		p, err := tx.ListRelays(ctx, store.RelayFilter{RegionID: regionID}, store.ListOptions{PageSize: store.MaxPageSize, PageToken: tok})
		if err != nil {
			return "", err
		}
		for _, x := range p.Items {
			ids = append(ids, x.ID)
		}
		return p.NextPageToken, nil
	})
	return ids, err
}

func (s *server) ListRegions(ctx context.Context, req *connect.Request[v1.ListRegionsRequest]) (*connect.Response[v1.ListRegionsResponse], error) {
	scope, err := s.tenantOf(ctx, "")
	if err != nil {
		return nil, err
	}
	m := req.Msg
	out := &v1.ListRegionsResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListRegions(ctx, store.RegionFilter{Code: m.GetCode()}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, r := range p.Items {
			ids, err := regionRelayIDs(ctx, tx, r.ID)
			if err != nil {
				return err
			}
			out.Regions = append(out.Regions, regionPB(r, ids))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateRegion(ctx context.Context, req *connect.Request[v1.CreateRegionRequest]) (*connect.Response[v1.CreateRegionResponse], error) {
	in := req.Msg.GetRegion()
	r := &domain.Region{Name: in.GetName(), Code: in.GetCode(), Description: in.GetDescription()}
	if err := doCreate(ctx, s, store.AllTenants(), "region.create", domain.ResourceRegion, r, store.Tx.CreateRegion, regionMsg, nil); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateRegionResponse{Region: regionPB(r, nil)}), nil
}

func (s *server) UpdateRegion(ctx context.Context, req *connect.Request[v1.UpdateRegionRequest]) (*connect.Response[v1.UpdateRegionResponse], error) {
	in := req.Msg.GetRegion()
	r, err := doUpdate(ctx, s, store.AllTenants(), in.GetId(), in.GetEtag(), "region.update", domain.ResourceRegion,
		store.Tx.GetRegion, store.Tx.UpdateRegion, regionMsg, func(_ store.Tx, r *domain.Region) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					r.Name = in.GetName()
				case "description":
					r.Description = in.GetDescription()
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateRegionResponse{Region: regionPB(r, nil)}), nil
}

func (s *server) DeleteRegion(ctx context.Context, req *connect.Request[v1.DeleteRegionRequest]) (*connect.Response[v1.DeleteRegionResponse], error) {
	m := req.Msg
	if _, err := doDelete(ctx, s, store.AllTenants(), m.GetId(), m.GetEtag(), "region.delete", domain.ResourceRegion, store.Tx.GetRegion,
		func(tx store.Tx, id string, v int64) error {
			p, err := tx.ListRelays(ctx, store.RelayFilter{RegionID: id}, store.ListOptions{PageSize: 1})
			if err != nil {
				return err
			}
			if len(p.Items) > 0 {
				return connect.NewError(connect.CodeFailedPrecondition, errors.New("region still has relays"))
			}
			return tx.DeleteRegion(ctx, id, v)
		}, regionMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteRegionResponse{}), nil
}

// --- relays

func relayMsg(r *domain.Relay) proto.Message { return relayPB(r) }

// relayWriteScope is the scope that may change relay r: its tenant, or for a shared relay the
// all-tenants scope, which only super_admin gets.
func (s *server) relayWriteScope(ctx context.Context, tenantID, id string) (store.Scope, error) {
	scope, err := s.tenantOf(ctx, tenantID)
	if err != nil {
		return scope, err
	}
	var r *domain.Relay
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { r, err = tx.GetRelay(ctx, id); return }); err != nil {
		return scope, err
	}
	if r.TenantID != "" {
		return scope, nil
	}
	if p, _ := principal(ctx); p == nil || !p.IsSuperAdmin() {
		return scope, connect.NewError(connect.CodePermissionDenied, errors.New("only super_admin manages shared relays"))
	}
	return store.AllTenants(), nil
}

func (s *server) GetRelay(ctx context.Context, req *connect.Request[v1.GetRelayRequest]) (*connect.Response[v1.GetRelayResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var r *domain.Relay
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { r, err = tx.GetRelay(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetRelayResponse{Relay: relayPB(r)}), nil
}

func (s *server) ListRelays(ctx context.Context, req *connect.Request[v1.ListRelaysRequest]) (*connect.Response[v1.ListRelaysResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListRelaysResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListRelays(ctx, store.RelayFilter{
			RegionID: m.GetRegionId(), NamePrefix: m.GetNamePrefix(), SharedOnly: m.GetShared(),
			OwnOnly: m.Shared != nil && !m.GetShared(), Status: domain.RelayStatus(enumStr(m.GetStatus())),
		}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, r := range p.Items {
			out.Relays = append(out.Relays, relayPB(r))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateRelay(ctx context.Context, req *connect.Request[v1.CreateRelayRequest]) (*connect.Response[v1.CreateRelayResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := m.GetRelay()
	r := &domain.Relay{
		TenantID: scope.TenantID, RegionID: in.GetRegionId(), Name: in.GetName(), Description: in.GetDescription(),
		Hostname: in.GetHostname(), Addresses: slices.Clone(in.GetAddresses()), STUNAddress: in.GetStunAddress(),
		Status: domain.RelayPending,
	}
	if m.GetShared() {
		if p, _ := principal(ctx); !p.IsSuperAdmin() {
			return nil, connect.NewError(connect.CodePermissionDenied, errors.New("only super_admin creates shared relays"))
		}
		scope, r.TenantID = store.AllTenants(), ""
	}
	if err := doCreate(ctx, s, scope, "relay.create", domain.ResourceRelay, r, store.Tx.CreateRelay, relayMsg,
		func(tx store.Tx) error { _, err := tx.GetRegion(ctx, r.RegionID); return err }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateRelayResponse{Relay: relayPB(r)}), nil
}

func (s *server) UpdateRelay(ctx context.Context, req *connect.Request[v1.UpdateRelayRequest]) (*connect.Response[v1.UpdateRelayResponse], error) {
	in := req.Msg.GetRelay()
	scope, err := s.relayWriteScope(ctx, req.Msg.GetTenantId(), in.GetId())
	if err != nil {
		return nil, err
	}
	r, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "relay.update", domain.ResourceRelay,
		store.Tx.GetRelay, store.Tx.UpdateRelay, relayMsg, func(tx store.Tx, r *domain.Relay) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					r.Name = in.GetName()
				case "description":
					r.Description = in.GetDescription()
				case "region_id":
					if _, err := tx.GetRegion(ctx, in.GetRegionId()); err != nil {
						return err
					}
					r.RegionID = in.GetRegionId()
				case "hostname":
					r.Hostname = in.GetHostname()
				case "addresses":
					r.Addresses = slices.Clone(in.GetAddresses())
				case "stun_address":
					r.STUNAddress = in.GetStunAddress()
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateRelayResponse{Relay: relayPB(r)}), nil
}

func (s *server) DeleteRelay(ctx context.Context, req *connect.Request[v1.DeleteRelayRequest]) (*connect.Response[v1.DeleteRelayResponse], error) {
	m := req.Msg
	scope, err := s.relayWriteScope(ctx, m.GetTenantId(), m.GetId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "relay.delete", domain.ResourceRelay, store.Tx.GetRelay,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteRelay(ctx, id, v) }, relayMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteRelayResponse{}), nil
}

// --- vrouters

func vrouterMsg(v *domain.VRouter) proto.Message { return vrouterPB(v) }

func (s *server) GetVRouter(ctx context.Context, req *connect.Request[v1.GetVRouterRequest]) (*connect.Response[v1.GetVRouterResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var v *domain.VRouter
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { v, err = tx.GetVRouter(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetVRouterResponse{Vrouter: vrouterPB(v)}), nil
}

func (s *server) ListVRouters(ctx context.Context, req *connect.Request[v1.ListVRoutersRequest]) (*connect.Response[v1.ListVRoutersResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListVRoutersResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListVRouters(ctx, store.VRouterFilter{
			CvlanID: m.GetCvlanId(), NamePrefix: m.GetNamePrefix(), Status: domain.VRouterStatus(enumStr(m.GetStatus())),
		}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, v := range p.Items {
			out.Vrouters = append(out.Vrouters, vrouterPB(v))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateVRouter(ctx context.Context, req *connect.Request[v1.CreateVRouterRequest]) (*connect.Response[v1.CreateVRouterResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetVrouter()
	conns, err := vrouterConnsDomain(in.GetConnections(), nil)
	if err != nil {
		return nil, err
	}
	v := &domain.VRouter{
		TenantID: scope.TenantID, RegionID: in.GetRegionId(), CvlanID: in.GetCvlanId(), Name: in.GetName(),
		Description: in.GetDescription(), Status: domain.VRouterPending, Connections: conns,
	}
	if err := doCreate(ctx, s, scope, "vrouter.create", domain.ResourceVRouter, v, store.Tx.CreateVRouter, vrouterMsg,
		func(tx store.Tx) error {
			if _, err := tx.GetRegion(ctx, v.RegionID); err != nil {
				return err
			}
			_, err := tx.GetCvlan(ctx, v.CvlanID)
			return err
		}); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateVRouterResponse{Vrouter: vrouterPB(v)}), nil
}

func (s *server) UpdateVRouter(ctx context.Context, req *connect.Request[v1.UpdateVRouterRequest]) (*connect.Response[v1.UpdateVRouterResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetVrouter()
	v, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "vrouter.update", domain.ResourceVRouter,
		store.Tx.GetVRouter, store.Tx.UpdateVRouter, vrouterMsg, func(tx store.Tx, v *domain.VRouter) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					v.Name = in.GetName()
				case "description":
					v.Description = in.GetDescription()
				case "region_id":
					if _, err := tx.GetRegion(ctx, in.GetRegionId()); err != nil {
						return err
					}
					v.RegionID = in.GetRegionId()
				case "connections":
					cs, err := vrouterConnsDomain(in.GetConnections(), v.Connections)
					if err != nil {
						return err
					}
					v.Connections = cs
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateVRouterResponse{Vrouter: vrouterPB(v)}), nil
}

func (s *server) DeleteVRouter(ctx context.Context, req *connect.Request[v1.DeleteVRouterRequest]) (*connect.Response[v1.DeleteVRouterResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "vrouter.delete", domain.ResourceVRouter, store.Tx.GetVRouter,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteVRouter(ctx, id, v) }, vrouterMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteVRouterResponse{}), nil
}

// --- discovery servers

func discoveryMsg(d *domain.DiscoveryServer) proto.Message { return discoveryPB(d) }

func (s *server) GetDiscoveryServer(ctx context.Context, req *connect.Request[v1.GetDiscoveryServerRequest]) (*connect.Response[v1.GetDiscoveryServerResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var d *domain.DiscoveryServer
	if err := s.read(ctx, scope, func(tx store.Tx) (err error) { d, err = tx.GetDiscoveryServer(ctx, req.Msg.GetId()); return }); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetDiscoveryServerResponse{DiscoveryServer: discoveryPB(d)}), nil
}

func (s *server) ListDiscoveryServers(ctx context.Context, req *connect.Request[v1.ListDiscoveryServersRequest]) (*connect.Response[v1.ListDiscoveryServersResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	out := &v1.ListDiscoveryServersResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListDiscoveryServers(ctx, store.DiscoveryServerFilter{RegionID: m.GetRegionId(), Type: enumStr(m.GetType())}, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, d := range p.Items {
			out.DiscoveryServers = append(out.DiscoveryServers, discoveryPB(d))
		}
		out.NextPageToken, out.TotalSize = p.NextPageToken, int32(p.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

func (s *server) CreateDiscoveryServer(ctx context.Context, req *connect.Request[v1.CreateDiscoveryServerRequest]) (*connect.Response[v1.CreateDiscoveryServerResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetDiscoveryServer()
	d := &domain.DiscoveryServer{
		TenantID: scope.TenantID, Name: in.GetName(), Description: in.GetDescription(), Type: enumStr(in.GetType()),
		Address: in.GetAddress(), RegionID: in.GetRegionId(), Enabled: in.GetEnabled(), Username: in.GetUsername(),
		Credential: in.GetCredential(),
	}
	if err := doCreate(ctx, s, scope, "discovery_server.create", domain.ResourceDiscoveryServer, d, store.Tx.CreateDiscoveryServer, discoveryMsg, nil); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.CreateDiscoveryServerResponse{DiscoveryServer: discoveryPB(d)}), nil
}

func (s *server) UpdateDiscoveryServer(ctx context.Context, req *connect.Request[v1.UpdateDiscoveryServerRequest]) (*connect.Response[v1.UpdateDiscoveryServerResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	in := req.Msg.GetDiscoveryServer()
	d, err := doUpdate(ctx, s, scope, in.GetId(), in.GetEtag(), "discovery_server.update", domain.ResourceDiscoveryServer,
		store.Tx.GetDiscoveryServer, store.Tx.UpdateDiscoveryServer, discoveryMsg, func(_ store.Tx, d *domain.DiscoveryServer) error {
			for _, path := range req.Msg.GetUpdateMask().GetPaths() {
				switch path {
				case "name":
					d.Name = in.GetName()
				case "description":
					d.Description = in.GetDescription()
				case "address":
					d.Address = in.GetAddress()
				case "region_id":
					d.RegionID = in.GetRegionId()
				case "enabled":
					d.Enabled = in.GetEnabled()
				case "username":
					d.Username = in.GetUsername()
				case "credential":
					d.Credential = in.GetCredential()
				default:
					return invalid("update_mask path %q is not allowed", path)
				}
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.UpdateDiscoveryServerResponse{DiscoveryServer: discoveryPB(d)}), nil
}

func (s *server) DeleteDiscoveryServer(ctx context.Context, req *connect.Request[v1.DeleteDiscoveryServerRequest]) (*connect.Response[v1.DeleteDiscoveryServerResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	if _, err := doDelete(ctx, s, scope, m.GetId(), m.GetEtag(), "discovery_server.delete", domain.ResourceDiscoveryServer, store.Tx.GetDiscoveryServer,
		func(tx store.Tx, id string, v int64) error { return tx.DeleteDiscoveryServer(ctx, id, v) }, discoveryMsg); err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.DeleteDiscoveryServerResponse{}), nil
}
