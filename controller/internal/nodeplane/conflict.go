package nodeplane

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane/fanout"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// detectConflict raises a session-conflict incident when one node identity streams from two agent
// processes at once (a cloned or stolen identity): an audit row always, and quarantine (which closes
// every stream of the node) when the tenant's quarantine_on_conflict says so. A reconnect of the
// same agent process (same session id) is not a conflict.
//
// It sees the other streams of this replica (others); a stream that opens without a local conflict
// is handed to the stream registry, which raises the same incident when another replica holds a
// stream of the node under another session (ADR 009). Each opening stream is judged once, by the
// replica it opens on: one incident per conflict.
func (p *Plane) detectConflict(ctx context.Context, c *Caller, sub *fanout.Sub, others []*fanout.Sub) error {
	var addrs []string
	for _, o := range others {
		if o.SessionID != sub.SessionID {
			addrs = append(addrs, o.Addr)
		}
	}
	if len(addrs) == 0 {
		p.streamReg.opened(c, sub)
		return nil
	}
	if err := p.raiseConflict(ctx, c, sub.Addr, addrs, false); err != nil {
		return err
	}
	// Registered, but not judged again against other replicas: the incident is raised.
	p.streamReg.openedJudged(c, sub)
	return nil
}

// raiseConflict records a session conflict of c's node between the stream from addr and the streams
// from others (remote: they are on other replicas), and quarantines the node when the tenant says so
// (the error is then the stream's end).
func (p *Plane) raiseConflict(ctx context.Context, c *Caller, addr string, others []string, remote bool) error {
	addrs := append(append([]string(nil), others...), addr)
	quarantine := p.loader.TenantSettings(c.ID.TenantID).QuarantineOnConflict
	p.log.WarnContext(ctx, "session conflict: one node identity streams from two places", "tenant", c.ID.TenantID, "node", c.NodeID, "addresses", addrs, "quarantine", quarantine, "other_replica", remote)
	inc := map[string]any{"addresses": addrs, "active": true, "quarantined": quarantine}
	if remote {
		inc["other_replica"] = true
	}
	incident, _ := json.Marshal(inc)
	reason := "session conflict: streams from " + strings.Join(addrs, ", ")
	// Before the write: a status flush that reads the node after it must not end the conflict
	// (the stream registry raises it after the stream's own open was queued).
	p.status.conflictStarted(c.NodeID)
	// The status writers of every replica holding a stream of the node write it too: retry on a
	// version conflict.
	var err error
	for range 5 {
		if err = p.recordConflict(ctx, c, addr, addrs, incident, reason, quarantine); !errors.Is(err, domain.ErrConflict) {
			break
		}
	}
	if err != nil {
		return toConnect(fmt.Errorf("record session conflict: %w", err))
	}
	if quarantine {
		p.revoke(c.ID.TenantID, c.NodeID, "quarantined: "+reason)
		return unauthenticated("node %s quarantined: %s", c.NodeID, reason)
	}
	return nil
}

// recordConflict writes the incident's audit row and the node's conflict (and quarantine).
func (p *Plane) recordConflict(ctx context.Context, c *Caller, addr string, addrs []string, incident []byte, reason string, quarantine bool) error {
	return p.deps.Store.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		if err := tx.AppendAudit(ctx, &domain.AuditEntry{
			TenantID: c.ID.TenantID, ActorType: domain.ActorSystem, ActorName: "conflict-detector", Action: "NodeSessionConflict",
			ResourceType: domain.ResourceNode, ResourceID: c.NodeID, After: incident, PeerAddress: addr,
		}); err != nil {
			return err
		}
		n, err := tx.GetNode(ctx, c.NodeID)
		if err != nil {
			return err
		}
		// The API shows the latest conflict on the node; the status writer clears Active when
		// the streams are down to one.
		n.Conflict = &domain.NodeConflict{DetectTime: tx.Now(), Addresses: addrs, Active: true, Quarantined: quarantine}
		if !quarantine {
			return tx.UpdateNodeStatus(ctx, n, true)
		}
		before, _ := json.Marshal(n)
		n.Status, n.QuarantineReason, n.QuarantineTime = domain.NodeQuarantined, reason, tx.Now()
		if err := tx.UpdateNode(ctx, n); err != nil {
			return err
		}
		after, _ := json.Marshal(n)
		return tx.AppendAudit(ctx, &domain.AuditEntry{
			TenantID: c.ID.TenantID, ActorType: domain.ActorSystem, ActorName: "conflict-detector", Action: "QuarantineNode",
			ResourceType: domain.ResourceNode, ResourceID: c.NodeID, Before: before, After: after,
		})
	})
}

func listAll[T any](list func(store.ListOptions) (*store.Page[T], error)) ([]*T, error) {
	var out []*T
	o := store.ListOptions{PageSize: store.MaxPageSize}
	for {
		pg, err := list(o)
		if err != nil {
			return nil, err
		}
		out = append(out, pg.Items...)
		if pg.NextPageToken == "" {
			return out, nil
		}
		o.PageToken = pg.NextPageToken
	}
}
