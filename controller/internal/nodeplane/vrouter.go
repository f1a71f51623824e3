package nodeplane

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"connectrpc.com/connect"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	vrouterv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

type vrouterService struct{ p *Plane }

func vrouterCaller(ctx context.Context) (*Caller, error) {
	c, ok := CallerFrom(ctx)
	if !ok {
		return nil, unauthenticated("not authenticated")
	}
	if c.ID.Kind != identity.KindVRouter {
		return nil, connect.NewError(connect.CodePermissionDenied, fmt.Errorf("%s is not a vrouter", c.ID))
	}
	return c, nil
}

// vrfTable derives a stable, nonzero VPP table id per tenant (table 0 is VPP's default VRF).
func vrfTable(tenantID string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(tenantID))
	return h.Sum32()%0x7ffffffe + 1
}

func (p *Plane) vrouterConfig(ctx context.Context, id string) (*vrouterv1.WatchVRouterConfigResponse, error) {
	v, err := p.vrouterOf(ctx, id)
	if err != nil {
		return nil, err
	}
	out := &vrouterv1.WatchVRouterConfigResponse{
		Version: uint64(v.Version),
		Vrf:     &vrouterv1.Vrf{TableId: vrfTable(v.TenantID), TenantId: v.TenantID},
	}
	for _, c := range v.Connections {
		ic := &vrouterv1.IpsecConnection{Name: c.Name, RemoteAddress: c.RemoteAddress, IkeVersion: vrouterv1.IkeVersion_IKE_VERSION_2, PreSharedKey: c.PreSharedKey}
		for _, s := range c.LocalSubnets {
			ic.LocalSubnets = append(ic.LocalSubnets, s.String())
		}
		for _, s := range c.RemoteSubnets {
			ic.RemoteSubnets = append(ic.RemoteSubnets, s.String())
		}
		out.Connections = append(out.Connections, ic)
	}
	return out, nil
}

// WatchVRouterConfig implements vrouterv1connect.VRouterControlServiceHandler.
func (s vrouterService) WatchVRouterConfig(ctx context.Context, req *connect.Request[vrouterv1.WatchVRouterConfigRequest], stream *connect.ServerStream[vrouterv1.WatchVRouterConfigResponse]) error {
	p := s.p
	c, err := vrouterCaller(ctx)
	if err != nil {
		return err
	}
	if err := p.validate.Validate(req.Msg); err != nil {
		return connect.NewError(connect.CodeInvalidArgument, err)
	}
	// known_version lets a vrouter that already applied this version skip the first message.
	known := func(cfg *vrouterv1.WatchVRouterConfigResponse) bool {
		return cfg.GetVersion() == req.Msg.GetKnownVersion()
	}
	return followConfig(ctx, p, "vrouter", c.ID.ResourceID, p.vrouterConfig, known, stream.Send)
}

var connStates = map[vrouterv1.ConnectionState]string{
	vrouterv1.ConnectionState_CONNECTION_STATE_CONNECTING: "connecting", vrouterv1.ConnectionState_CONNECTION_STATE_UP: "up",
	vrouterv1.ConnectionState_CONNECTION_STATE_DOWN: "down",
}

// applyConnectionStatus sets v's status from a report received at now and reports whether
// anything the API shows changed besides the last-seen and stats times.
func applyConnectionStatus(v *domain.VRouter, byName map[string]*vrouterv1.ConnectionStatus, now time.Time) bool {
	changed := false
	for i := range v.Connections {
		cs, ok := byName[v.Connections[i].Name]
		if !ok {
			continue
		}
		st := connStates[cs.GetState()]
		if st == "" {
			st = "unknown"
		}
		if v.Connections[i].Status != st {
			v.Connections[i].Status, v.Connections[i].LastChangeTime = st, now
			if t := cs.GetLastChangeTime(); t != nil {
				v.Connections[i].LastChangeTime = t.AsTime().UTC()
			}
			changed = true
		}
	}
	up := 0
	for _, c := range v.Connections {
		if c.Status == "up" {
			up++
		}
	}
	status := domain.VRouterOnline
	if up < len(v.Connections) {
		status = domain.VRouterDegraded
	}
	changed = changed || v.Status != status || v.Stats.ConnectionsTotal != int32(len(v.Connections)) || v.Stats.ConnectionsUp != int32(up)
	v.Status, v.LastSeenTime = status, now
	v.Stats.ConnectionsTotal, v.Stats.ConnectionsUp, v.Stats.UpdateTime = int32(len(v.Connections)), int32(up), now
	return changed
}

// ReportConnectionStatus implements vrouterv1connect.VRouterControlServiceHandler.
func (s vrouterService) ReportConnectionStatus(ctx context.Context, req *connect.Request[vrouterv1.ReportConnectionStatusRequest]) (*connect.Response[vrouterv1.ReportConnectionStatusResponse], error) {
	p := s.p
	c, err := vrouterCaller(ctx)
	if err != nil {
		return nil, err
	}
	if err := p.validate.Validate(req.Msg); err != nil {
		return nil, connect.NewError(connect.CodeInvalidArgument, err)
	}
	now := p.now().UTC()
	byName := map[string]*vrouterv1.ConnectionStatus{}
	for _, cs := range req.Msg.GetConnections() {
		byName[cs.GetName()] = cs
	}
	// A status write keeps the vrouter's version (API clients' etags stay valid) and wakes no
	// config stream; it notifies WatchEvents only when something besides the times changed. A
	// configuration change committed between the read and the write conflicts: read again.
	for attempt := 1; ; attempt++ {
		err = p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
			v, err := tx.GetVRouter(ctx, c.ID.ResourceID)
			if err != nil {
				return err
			}
			notify := applyConnectionStatus(v, byName, now)
			return tx.UpdateVRouterStatus(ctx, v, notify)
		})
		if !errors.Is(err, domain.ErrConflict) || attempt == 3 {
			break
		}
	}
	if err != nil {
		return nil, toConnect(fmt.Errorf("record vrouter status: %w", err))
	}
	return connect.NewResponse(&vrouterv1.ReportConnectionStatusResponse{}), nil
}
