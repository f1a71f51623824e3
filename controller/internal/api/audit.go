package api

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/api/interceptor"
	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// auditJSON is the proto3 JSON snapshot of a resource for the audit log (messages of this API
// never carry secrets: secrets are only in Create*Response.secret).
func auditJSON(m proto.Message) (json.RawMessage, error) {
	if m == nil {
		return nil, nil
	}
	return protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
}

// audit writes the audit row of a mutation inside its transaction tx: action is
// "<resource>.<verb>", before is nil for creations, after nil for deletions.
func (s *server) audit(ctx context.Context, tx store.Tx, action, rtype, id string, before, after proto.Message) error {
	b, err := auditJSON(before)
	if err != nil {
		return err
	}
	a, err := auditJSON(after)
	if err != nil {
		return err
	}
	ri := interceptor.RequestInfoFrom(ctx)
	e := &domain.AuditEntry{
		ActorType: domain.ActorSystem, ActorName: "system", Action: action, ResourceType: rtype,
		ResourceID: id, Before: b, After: a, RequestID: ri.ID, PeerAddress: ri.Peer,
	}
	if tx.Scope().All {
		// Deployment-wide changes: a tenant's own lifecycle is recorded in that tenant (its
		// admins see who changed it); regions and shared relays in the system tenant, where
		// super_admin reads them.
		if rtype == domain.ResourceTenant {
			e.TenantID = id
		} else if sys, err := systemTenantIn(ctx, tx); err == nil {
			e.TenantID = sys
		}
	}
	if p := auth.PrincipalFrom(ctx); p != nil {
		e.ActorType, e.ActorID, e.ActorName = p.ActorType(), p.ID, p.Name
		if p.Email != "" {
			e.ActorName = p.Email
		}
	}
	return tx.AppendAudit(ctx, e)
}

func auditPB(e *domain.AuditEntry) *v1.AuditLog {
	out := &v1.AuditLog{
		Id: e.ID, TenantId: e.TenantID, EventTime: ts(e.Time), ActorId: e.ActorID, ActorName: e.ActorName,
		ActorType: v1.ActorType(enumNum(v1.ActorType(0).Descriptor(), string(e.ActorType))),
		Action:    e.Action, ResourceType: resourceTypePB(e.ResourceType), ResourceId: e.ResourceID,
		RequestId: e.RequestID, PeerAddress: e.PeerAddress,
	}
	out.Before = jsonStruct(e.Before)
	out.After = jsonStruct(e.After)
	return out
}

func jsonStruct(raw json.RawMessage) *structpb.Struct {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	st := &structpb.Struct{}
	if err := protojson.Unmarshal(raw, st); err != nil {
		return nil
	}
	return st
}

func auditFilter(actorID string, at v1.ActorType, rt v1.ResourceType, rid, action string, start, end time.Time) store.AuditFilter {
	return store.AuditFilter{
		ActorType: domain.ActorType(enumStr(at)), ActorID: actorID, Action: action,
		ResourceType: enumStr(rt), ResourceID: rid, Since: start, Until: end,
	}
}

// actionPrefix turns "node.*" into the store's action prefix "node.".
func actionPrefix(f *store.AuditFilter) {
	if p, ok := strings.CutSuffix(f.Action, ".*"); ok {
		f.Action, f.ActionPrefix = "", p+"."
	}
}

func (s *server) GetAuditLog(ctx context.Context, req *connect.Request[v1.GetAuditLogRequest]) (*connect.Response[v1.GetAuditLogResponse], error) {
	scope, err := s.tenantOf(ctx, req.Msg.GetTenantId())
	if err != nil {
		return nil, err
	}
	var out *v1.AuditLog
	err = s.read(ctx, scope, func(tx store.Tx) error {
		p, err := tx.ListAudit(ctx, store.AuditFilter{ID: req.Msg.GetId()}, store.ListOptions{PageSize: 1})
		if err != nil {
			return err
		}
		if len(p.Items) == 0 {
			return fmt.Errorf("audit log %s: %w", req.Msg.GetId(), domain.ErrNotFound)
		}
		out = auditPB(p.Items[0])
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(&v1.GetAuditLogResponse{AuditLog: out}), nil
}

func (s *server) ListAuditLogs(ctx context.Context, req *connect.Request[v1.ListAuditLogsRequest]) (*connect.Response[v1.ListAuditLogsResponse], error) {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return nil, err
	}
	f := auditFilter(m.GetActorId(), m.GetActorType(), m.GetResourceType(), m.GetResourceId(), m.GetAction(), fromTS(m.GetStartTime()), fromTS(m.GetEndTime()))
	actionPrefix(&f)
	out := &v1.ListAuditLogsResponse{}
	err = s.read(ctx, scope, func(tx store.Tx) error {
		page, err := tx.ListAudit(ctx, f, listOpts(m.GetPageSize(), m.GetPageToken()))
		if err != nil {
			return err
		}
		for _, e := range page.Items {
			out.AuditLogs = append(out.AuditLogs, auditPB(e))
		}
		out.NextPageToken, out.TotalSize = page.NextPageToken, int32(page.TotalSize)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return connect.NewResponse(out), nil
}

// exportChunk is the largest chunk ExportAuditLogs sends.
const exportChunk = 64 << 10

func (s *server) ExportAuditLogs(ctx context.Context, req *connect.Request[v1.ExportAuditLogsRequest], stream *connect.ServerStream[v1.ExportAuditLogsResponse]) error {
	m := req.Msg
	scope, err := s.tenantOf(ctx, m.GetTenantId())
	if err != nil {
		return err
	}
	f := auditFilter(m.GetActorId(), m.GetActorType(), m.GetResourceType(), m.GetResourceId(), m.GetAction(), fromTS(m.GetStartTime()), fromTS(m.GetEndTime()))
	f.OldestFirst = true
	actionPrefix(&f)
	var buf bytes.Buffer
	cw := csv.NewWriter(&buf)
	csvMode := m.GetFormat() == v1.ExportFormat_EXPORT_FORMAT_CSV
	if csvMode {
		_ = cw.Write([]string{"id", "event_time", "actor_type", "actor_id", "actor_name", "action", "resource_type", "resource_id", "request_id", "peer_address", "before", "after"})
		cw.Flush()
	}
	flush := func(force bool) error {
		if buf.Len() == 0 || (!force && buf.Len() < exportChunk) {
			return nil
		}
		data := append([]byte(nil), buf.Bytes()...)
		buf.Reset()
		return stream.Send(&v1.ExportAuditLogsResponse{Data: data})
	}
	jm := protojson.MarshalOptions{UseProtoNames: true}
	tok := ""
	for {
		// One read transaction per page: an export of millions of rows must not hold one
		// transaction open for its whole duration.
		var page *store.Page[domain.AuditEntry]
		if err := s.read(ctx, scope, func(tx store.Tx) error {
			var err error
			page, err = tx.ListAudit(ctx, f, store.ListOptions{PageSize: 500, PageToken: tok})
			return err
		}); err != nil {
			return err
		}
		for _, e := range page.Items {
			pb := auditPB(e)
			if csvMode {
				_ = cw.Write([]string{
					e.ID, e.Time.UTC().Format(time.RFC3339Nano), string(e.ActorType), e.ActorID, e.ActorName,
					e.Action, e.ResourceType, e.ResourceID, e.RequestID, e.PeerAddress, string(e.Before), string(e.After),
				})
				cw.Flush()
			} else {
				line, err := jm.Marshal(pb)
				if err != nil {
					return s.toConnect(ctx, err)
				}
				// protojson output is not stable in whitespace; compact it to one line.
				var c bytes.Buffer
				if err := json.Compact(&c, line); err != nil {
					return s.toConnect(ctx, err)
				}
				buf.Write(c.Bytes())
				buf.WriteByte('\n')
			}
			if err := flush(false); err != nil {
				return err
			}
		}
		if page.NextPageToken == "" {
			break
		}
		tok = page.NextPageToken
	}
	return flush(true)
}

// systemTenantIn finds the system tenant with the caller's all-tenants transaction (a second
// transaction inside it could deadlock SQLite's single writer).
func systemTenantIn(ctx context.Context, tx store.Tx) (string, error) {
	p, err := tx.ListTenants(ctx, store.TenantFilter{NamePrefix: auth.SystemTenantName}, store.ListOptions{PageSize: 10})
	if err != nil {
		return "", err
	}
	for _, t := range p.Items {
		if t.Name == auth.SystemTenantName {
			return t.ID, nil
		}
	}
	return "", domain.ErrNotFound
}
