package api

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"time"

	"connectrpc.com/connect"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// hub follows the store's change feed once per process and fans events out to the WatchEvents
// streams, instead of every stream polling the database. It runs only while someone watches.
type hub struct {
	st        store.Store
	log       *slog.Logger
	buffer    int
	pollEvery time.Duration

	mu      sync.Mutex
	subs    map[*subscriber]struct{}
	cursor  int64
	running bool
	stop    context.CancelFunc
	done    chan struct{}
	closed  bool
}

type subscriber struct {
	ch chan domain.ChangeEvent
	// overflow is closed when the subscriber fell behind and was dropped.
	overflow chan struct{}
}

func newHub(st store.Store, log *slog.Logger, buffer int, pollEvery time.Duration) *hub {
	return &hub{st: st, log: log, buffer: buffer, pollEvery: pollEvery, subs: map[*subscriber]struct{}{}}
}

// head advances h.cursor past every committed change without delivering them: watchers get
// changes from "now" on.
func (h *hub) head(ctx context.Context) error {
	id, err := h.st.LatestChangeID(ctx)
	if err != nil {
		return err
	}
	h.cursor = max(h.cursor, id)
	return nil
}

// subscribe registers a watcher; the follower starts with the first one.
func (h *hub) subscribe(ctx context.Context) (*subscriber, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errors.New("event hub closed")
	}
	if !h.running {
		if err := h.head(ctx); err != nil {
			return nil, err
		}
		fctx, cancel := context.WithCancel(context.Background())
		wake, err := h.st.Watch(fctx)
		if err != nil {
			cancel()
			return nil, err
		}
		h.running, h.stop, h.done = true, cancel, make(chan struct{})
		go h.follow(fctx, wake, h.done)
	}
	s := &subscriber{ch: make(chan domain.ChangeEvent, h.buffer), overflow: make(chan struct{})}
	h.subs[s] = struct{}{}
	return s, nil
}

// unsubscribe removes a watcher; the follower stops with the last one.
func (h *hub) unsubscribe(s *subscriber) {
	h.mu.Lock()
	delete(h.subs, s)
	var stop context.CancelFunc
	var done chan struct{}
	if len(h.subs) == 0 && h.running {
		stop, done, h.running = h.stop, h.done, false
	}
	h.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

func (h *hub) close() {
	h.mu.Lock()
	h.closed = true
	stop, done, running := h.stop, h.done, h.running
	h.running = false
	h.mu.Unlock()
	if running {
		stop()
		<-done
	}
}

func (h *hub) follow(ctx context.Context, wake <-chan struct{}, done chan struct{}) {
	defer close(done)
	// Polling as well as waking covers a missed notification (e.g. a PostgreSQL reconnect).
	t := time.NewTicker(h.pollEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-wake:
			if !ok {
				return
			}
		case <-t.C:
		}
		if err := h.deliver(ctx); err != nil && ctx.Err() == nil {
			h.log.WarnContext(ctx, "event feed", "err", err)
		}
	}
}

func (h *hub) deliver(ctx context.Context) error {
	for {
		h.mu.Lock()
		after := h.cursor
		h.mu.Unlock()
		evs, err := h.st.ChangesSince(ctx, after, 1000)
		if err != nil || len(evs) == 0 {
			return err
		}
		h.mu.Lock()
		for _, e := range evs {
			// A stopping follower and its successor may briefly both deliver: never twice.
			if e.ID <= h.cursor {
				continue
			}
			h.cursor = e.ID
			for s := range h.subs {
				select {
				case s.ch <- e:
				default:
					// Too slow: end its stream with Aborted rather than block everyone.
					close(s.overflow)
					delete(h.subs, s)
				}
			}
		}
		h.mu.Unlock()
	}
}

var opEvent = map[domain.ChangeOp]v1.EventType{
	domain.OpCreate: v1.EventType_EVENT_TYPE_CREATED,
	domain.OpUpdate: v1.EventType_EVENT_TYPE_UPDATED,
	domain.OpDelete: v1.EventType_EVENT_TYPE_DELETED,
}

func (s *server) WatchEvents(ctx context.Context, req *connect.Request[v1.WatchEventsRequest], stream *connect.ServerStream[v1.WatchEventsResponse]) error {
	m := req.Msg
	p, err := principal(ctx)
	if err != nil {
		return err
	}
	tenant := p.TenantID
	switch {
	case m.GetAllTenants() && !p.IsSuperAdmin():
		return connect.NewError(connect.CodePermissionDenied, errors.New("all_tenants needs super_admin"))
	case m.GetAllTenants():
		tenant = ""
	case m.GetTenantId() != "" && m.GetTenantId() != p.TenantID:
		if !p.IsSuperAdmin() {
			return connect.NewError(connect.CodePermissionDenied, errors.New("another tenant's events need super_admin"))
		}
		tenant = m.GetTenantId()
	}
	kinds := m.GetResourceTypes()
	sub, err := s.hub.subscribe(ctx)
	if err != nil {
		return s.toConnect(ctx, err)
	}
	defer s.hub.unsubscribe(sub)
	// Send the headers now so that clients know the stream is established.
	if err := stream.Send(&v1.WatchEventsResponse{Event: &v1.Event{EventType: v1.EventType_EVENT_TYPE_HEARTBEAT, EventTime: ts(s.now())}}); err != nil {
		return err
	}
	hb := time.NewTicker(s.heartbeat)
	defer hb.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-sub.overflow:
			return connect.NewError(connect.CodeAborted, errors.New("client too slow: list again and re-watch"))
		case <-hb.C:
			if err := stream.Send(&v1.WatchEventsResponse{Event: &v1.Event{EventType: v1.EventType_EVENT_TYPE_HEARTBEAT, EventTime: ts(s.now())}}); err != nil {
				return err
			}
		case e := <-sub.ch:
			switch e.ResourceType {
			case domain.ResourceNodeStatus:
				// A status-only write (online, sync state, reports): an update of the node to clients.
				e.ResourceType = domain.ResourceNode
			case domain.ResourceVRouterStatus:
				// Connection states reported by the vrouter (same version): an update of the vrouter.
				e.ResourceType = domain.ResourceVRouter
			case domain.ResourceRelayStatus:
				// A relay's online/offline status or reported version (same version): an update
				// of the relay.
				e.ResourceType = domain.ResourceRelay
			}
			if !mayWatch(p, tenant, e) {
				continue
			}
			rt := resourceTypePB(e.ResourceType)
			if rt == v1.ResourceType_RESOURCE_TYPE_UNSPECIFIED || (len(kinds) > 0 && !slices.Contains(kinds, rt)) {
				continue
			}
			ev := &v1.Event{
				EventType: opEvent[e.Op], ResourceType: rt, ResourceId: e.ResourceID, TenantId: e.TenantID,
				EventTime: ts(e.Time),
			}
			if e.Op != domain.OpDelete {
				ev.Etag = etag(domain.Meta{Version: e.Version})
				s.eventPayload(ctx, e, ev)
			}
			if err := stream.Send(&v1.WatchEventsResponse{Event: ev}); err != nil {
				return err
			}
		}
	}
}

// globalKinds are the resource kinds whose rows without a tenant every tenant reads (regions,
// shared relays). Other tenantless rows (shared-relay join tokens and nodes) are visible only in
// the all-tenants scope.
var globalKinds = map[string]bool{domain.ResourceRegion: true, domain.ResourceRelay: true}

// kindService names the service whose read rule guards a resource kind's events: a caller sees
// an event only when it could read the resource (API keys need tenant_admin).
var kindService = map[string]string{
	domain.ResourceTenant: "TenantService", domain.ResourceCvlan: "CvlanService", domain.ResourceNode: "NodeService",
	domain.ResourceUser: "UserService", domain.ResourceGroup: "GroupService", domain.ResourceTag: "TagService",
	domain.ResourcePolicy: "PolicyService", domain.ResourceRegion: "RegionService", domain.ResourceRelay: "RelayService",
	domain.ResourceVRouter: "VRouterService", domain.ResourceDiscoveryServer: "DiscoveryServerService",
	domain.ResourceAPIKey: "ApiKeyService", domain.ResourceJoinToken: "JoinTokenService",
}

// mayWatch reports whether p, watching tenant ("" for all tenants), may see event e: it is of that
// tenant (or a global resource every tenant reads) and p's role may read its kind. Kinds without
// a service (sessions) are never delivered.
func mayWatch(p *auth.Principal, tenant string, e domain.ChangeEvent) bool {
	switch {
	case tenant == "":
	case e.TenantID == "" && !globalKinds[e.ResourceType]:
		return false
	case e.TenantID != "" && e.TenantID != tenant:
		return false
	}
	svc, ok := kindService[e.ResourceType]
	if !ok {
		return false
	}
	need := domain.RoleViewer
	if r := serviceRules[svc].readRole; r != "" {
		need = r
	}
	return auth.AtLeast(p.Role, need) && p.HasScope(auth.ScopeRead)
}

// eventPayload attaches the current node, relay or vrouter so that the UI need not re-read it.
// A failed read (e.g. deleted since) leaves the payload empty.
func (s *server) eventPayload(ctx context.Context, e domain.ChangeEvent, ev *v1.Event) {
	scope := store.TenantScope(e.TenantID)
	if e.TenantID == "" {
		scope = store.AllTenants()
	}
	_ = s.st.ReadTx(ctx, scope, func(tx store.Tx) error {
		switch e.ResourceType {
		case domain.ResourceNode:
			n, err := tx.GetNode(ctx, e.ResourceID)
			if err == nil {
				ev.Payload = &v1.Event_Node{Node: nodePB(n)}
			}
		case domain.ResourceRelay:
			r, err := tx.GetRelay(ctx, e.ResourceID)
			if err == nil {
				ev.Payload = &v1.Event_Relay{Relay: relayPB(r)}
			}
		case domain.ResourceVRouter:
			v, err := tx.GetVRouter(ctx, e.ResourceID)
			if err == nil {
				ev.Payload = &v1.Event_Vrouter{Vrouter: vrouterPB(v)}
			}
		}
		return nil
	})
}
