package nodeplane

import (
	"context"
	"fmt"
	"net/url"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
)

type relayService struct{ p *Plane }

func relayCaller(ctx context.Context) (*Caller, error) {
	c, ok := CallerFrom(ctx)
	if !ok {
		return nil, unauthenticated("not authenticated")
	}
	if c.ID.Kind != identity.KindRelay {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s is not a relay", c.ID))
	}
	return c, nil
}

// relayConfig is a relay's configuration from the store: its region and the region's other relays.
func (p *Plane) relayConfig(ctx context.Context, id string) (*relayv1.WatchRelayConfigResponse, error) {
	r, err := p.relayOf(ctx, id)
	if err != nil {
		return nil, err
	}
	out := &relayv1.WatchRelayConfigResponse{RegionId: r.RegionID, ReportInterval: durationpb.New(p.deps.ReportInterval)}
	for _, o := range p.loader.RegionPeers(r.RegionID, r.ID) {
		if len(o.Addresses) == 0 || (o.TenantID != r.TenantID && o.TenantID != "" && r.TenantID != "") {
			continue
		}
		out.MeshPeers = append(out.MeshPeers, &relayv1.MeshPeer{RelayId: o.ID, Url: "https://" + o.Addresses[0] + "/relay"})
	}
	return out, nil
}

// WatchRelayConfig implements relayv1connect.RelayControlServiceHandler.
func (s relayService) WatchRelayConfig(ctx context.Context, req *connect.Request[relayv1.WatchRelayConfigRequest], stream *connect.ServerStream[relayv1.WatchRelayConfigResponse]) error {
	p := s.p
	c, err := relayCaller(ctx)
	if err != nil {
		return err
	}
	if err := p.validate.Validate(req.Msg); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	return followConfig(ctx, p, "relay", c.ID.ResourceID, p.relayConfig, nil, stream.Send)
}

// ReportRelayStatus implements relayv1connect.RelayControlServiceHandler.
func (s relayService) ReportRelayStatus(ctx context.Context, req *connect.Request[relayv1.ReportRelayStatusRequest]) (*connect.Response[relayv1.ReportRelayStatusResponse], error) {
	p := s.p
	c, err := relayCaller(ctx)
	if err != nil {
		return nil, err
	}
	m := req.Msg
	if err := p.validate.Validate(m); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	var addrs []string
	for _, raw := range m.GetUrls() {
		u, err := url.Parse(raw)
		if err != nil || u.Host == "" {
			return nil, connect.NewError(connect.CodeInvalidArgument, fmt.Errorf("relay url %q is not an absolute URL", raw))
		}
		addrs = append(addrs, u.Host)
	}
	now := p.now().UTC()
	err = p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		r, err := tx.GetRelay(ctx, c.ID.ResourceID)
		if err != nil {
			return err
		}
		r.Addresses, r.STUNAddress = addrs, m.GetStunAddress()
		r.Status, r.LastSeenTime, r.SoftwareVersion = domain.RelayOnline, now, m.GetVersion()
		c := m.GetCounters()
		r.Stats = domain.RelayStats{
			ConnectedClients: int32(min(c.GetConnectedClients(), 1<<31-1)), MeshPeers: int32(min(c.GetConnectedMeshPeers(), 1<<31-1)),
			BytesForwarded: c.GetBytesForwarded(), PacketsForwarded: c.GetPacketsForwarded(), Drops: c.GetDrops(), UpdateTime: now,
		}
		return tx.UpdateRelay(ctx, r)
	})
	if err != nil {
		return nil, toConnect(fmt.Errorf("record relay status: %w", err))
	}
	p.relays.drop(c.ID.ResourceID)
	return connect.NewResponse(&relayv1.ReportRelayStatusResponse{ReportInterval: durationpb.New(p.deps.ReportInterval)}), nil
}
