package nodeplane

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"

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
	counters := m.GetCounters()
	report := &domain.Relay{Status: domain.RelayOnline, LastSeenTime: now, SoftwareVersion: m.GetVersion(), Stats: domain.RelayStats{
		ConnectedClients: int32(min(counters.GetConnectedClients(), 1<<31-1)), MeshPeers: int32(min(counters.GetConnectedMeshPeers(), 1<<31-1)),
		BytesForwarded: counters.GetBytesForwarded(), PacketsForwarded: counters.GetPacketsForwarded(), Drops: counters.GetDrops(), UpdateTime: now,
	}}
	// Unchanged addresses make a status write: it keeps the relay's version (API clients' etags
	// stay valid), wakes no config stream and no map loader, and notifies WatchEvents only when
	// the status or reported software version changed. New addresses or a new STUN address are a
	// configuration change (agents' relay maps and other relays' mesh peers list them): a full
	// update with a new version and a relay event. A change committed between the read and the
	// write conflicts: read again.
	moved := false
	for attempt := 1; ; attempt++ {
		err = p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
			r, err := tx.GetRelay(ctx, c.ID.ResourceID)
			if err != nil {
				return err
			}
			notify := r.Status != report.Status || r.SoftwareVersion != report.SoftwareVersion
			r.SetStatusFrom(report)
			if moved = !slices.Equal(r.Addresses, addrs) || r.STUNAddress != m.GetStunAddress(); moved {
				r.Addresses, r.STUNAddress = addrs, m.GetStunAddress()
				return tx.UpdateRelay(ctx, r)
			}
			return tx.UpdateRelayStatus(ctx, r, notify)
		})
		if !errors.Is(err, domain.ErrConflict) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return nil, toConnect(fmt.Errorf("record relay status: %w", err))
	}
	if moved {
		p.relays.drop(c.ID.ResourceID)
	}
	return connect.NewResponse(&relayv1.ReportRelayStatusResponse{ReportInterval: durationpb.New(p.deps.ReportInterval)}), nil
}
