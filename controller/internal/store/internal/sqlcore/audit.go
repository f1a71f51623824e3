package sqlcore

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func jsonUnmarshal(data []byte, v any) error {
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("decode: %w", err)
	}
	return nil
}

// AppendAudit implements store.Tx.
func (tx *Tx) AppendAudit(ctx context.Context, e *domain.AuditEntry) error {
	if err := tx.writable(); err != nil {
		return err
	}
	if e.Action == "" || e.ResourceType == "" || e.ActorType == "" {
		return fmt.Errorf("%w: audit entry needs an action, a resource type and an actor type", domain.ErrInvalid)
	}
	if e.ID == "" {
		e.ID = NewID()
	}
	if e.Time.IsZero() {
		e.Time = tx.Now()
	}
	e.Time = e.Time.UTC().Truncate(time.Microsecond)
	if !tx.scope.All {
		if e.TenantID == "" {
			e.TenantID = tx.scope.TenantID
		}
		if e.TenantID != tx.scope.TenantID {
			return fmt.Errorf("%w: audit entry for tenant %s in a transaction of tenant %s", domain.ErrInvalid, e.TenantID, tx.scope.TenantID)
		}
	}
	data, err := jsonString(e)
	if err != nil {
		return err
	}
	_, err = tx.exec(ctx, `INSERT INTO audit_log (id, tenant_id, time, actor_type, actor_id, action, resource_type, resource_id, data)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, nullable(e.TenantID), micros(e.Time), string(e.ActorType), e.ActorID, e.Action, e.ResourceType, e.ResourceID, data)
	if err != nil {
		return tx.classify(err, "append audit entry")
	}
	return nil
}

// ListAudit implements store.Tx.
func (tx *Tx) ListAudit(ctx context.Context, f store.AuditFilter, o store.ListOptions) (*store.Page[domain.AuditEntry], error) {
	tok, err := decodeToken(o.PageToken)
	if err != nil {
		return nil, err
	}
	var c []cond
	if !tx.scope.All {
		c = append(c, eq("tenant_id", tx.scope.TenantID))
	}
	if f.ID != "" {
		c = append(c, eq("id", f.ID))
	}
	if f.ActorType != "" {
		c = append(c, eq("actor_type", string(f.ActorType)))
	}
	if f.ActorID != "" {
		c = append(c, eq("actor_id", f.ActorID))
	}
	if f.ActionPrefix != "" {
		c = append(c, prefixCond("action", f.ActionPrefix))
	}
	if f.Action != "" {
		c = append(c, eq("action", f.Action))
	}
	if f.ResourceType != "" {
		c = append(c, eq("resource_type", f.ResourceType))
	}
	if f.ResourceID != "" {
		c = append(c, eq("resource_id", f.ResourceID))
	}
	if !f.Since.IsZero() {
		c = append(c, cond{"time >= ?", []any{micros(f.Since)}})
	}
	if !f.Until.IsZero() {
		c = append(c, cond{"time < ?", []any{micros(f.Until)}})
	}
	page := &store.Page[domain.AuditEntry]{}
	if o.WithTotal {
		w, args := where(c)
		total, _, err := tx.queryInt64(ctx, "SELECT count(*) FROM audit_log"+w, args...)
		if err != nil {
			return nil, fmt.Errorf("count audit log: %w", err)
		}
		page.TotalSize = int(total)
	}
	order := " ORDER BY id DESC"
	if tok != nil {
		if f.OldestFirst {
			c = append(c, cond{"id > ?", []any{tok.ID}})
		} else {
			c = append(c, cond{"id < ?", []any{tok.ID}})
		}
	}
	if f.OldestFirst {
		order = " ORDER BY id"
	}
	n := pageSize(o)
	w, args := where(c)
	rows, err := tx.query(ctx, "SELECT data FROM audit_log"+w+order+" LIMIT ?", append(args, n+1)...)
	if err != nil {
		return nil, fmt.Errorf("list audit log: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var data []byte
		if err := rows.Scan(&data); err != nil {
			return nil, fmt.Errorf("list audit log: %w", err)
		}
		e := &domain.AuditEntry{}
		if err := jsonUnmarshal(data, e); err != nil {
			return nil, err
		}
		page.Items = append(page.Items, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list audit log: %w", err)
	}
	if len(page.Items) > n {
		page.Items = page.Items[:n]
		page.NextPageToken = encodeToken(pageToken{ID: page.Items[n-1].ID})
	}
	return page, nil
}

// ChangesSince returns up to limit change events after afterID in id order. Stores call it in an
// all-tenants read transaction.
func (tx *Tx) ChangesSince(ctx context.Context, afterID int64, limit int) ([]domain.ChangeEvent, error) {
	if limit <= 0 || limit > 10000 {
		limit = 10000
	}
	rows, err := tx.query(ctx, `SELECT id, coalesce(tenant_id, ''), resource_type, resource_id, op, version, time
		FROM change_events WHERE id > ? ORDER BY id LIMIT ?`, afterID, limit)
	if err != nil {
		return nil, fmt.Errorf("read change feed: %w", err)
	}
	defer rows.Close()
	var out []domain.ChangeEvent
	for rows.Next() {
		var (
			c  domain.ChangeEvent
			op string
			t  int64
		)
		if err := rows.Scan(&c.ID, &c.TenantID, &c.ResourceType, &c.ResourceID, &op, &c.Version, &t); err != nil {
			return nil, fmt.Errorf("read change feed: %w", err)
		}
		c.Op, c.Time = domain.ChangeOp(op), fromMicros(t)
		out = append(out, c)
	}
	return out, rows.Err()
}

// LatestChangeID returns the id of the newest change event, 0 for an empty feed. Stores call it
// in an all-tenants read transaction.
func (tx *Tx) LatestChangeID(ctx context.Context) (int64, error) {
	id, _, err := tx.queryInt64(ctx, "SELECT max(id) FROM change_events")
	if err != nil {
		return 0, fmt.Errorf("read change feed head: %w", err)
	}
	return id, nil
}

// PruneChanges deletes change events older than before. Stores call it in an all-tenants
// transaction.
func (tx *Tx) PruneChanges(ctx context.Context, before time.Time) (int64, error) {
	if err := tx.writable(); err != nil {
		return 0, err
	}
	n, err := tx.exec(ctx, "DELETE FROM change_events WHERE time < ?", micros(before))
	if err != nil {
		return 0, fmt.Errorf("prune change feed: %w", err)
	}
	return n, nil
}

// StoreChangesSince implements store.Store.ChangesSince for a store built on this package: Tx's
// ChangesSince in an all-tenants read transaction of s.
func StoreChangesSince(ctx context.Context, s store.Store, afterID int64, limit int) ([]domain.ChangeEvent, error) {
	var out []domain.ChangeEvent
	err := s.ReadTx(ctx, store.AllTenants(), func(t store.Tx) (err error) {
		out, err = t.(*Tx).ChangesSince(ctx, afterID, limit)
		return err
	})
	return out, err
}

// StoreLatestChangeID implements store.Store.LatestChangeID likewise.
func StoreLatestChangeID(ctx context.Context, s store.Store) (int64, error) {
	var id int64
	err := s.ReadTx(ctx, store.AllTenants(), func(t store.Tx) (err error) {
		id, err = t.(*Tx).LatestChangeID(ctx)
		return err
	})
	return id, err
}

// StorePruneChanges implements store.Store.PruneChanges likewise, in a read-write transaction.
func StorePruneChanges(ctx context.Context, s store.Store, before time.Time) (int64, error) {
	var n int64
	err := s.Tx(ctx, store.AllTenants(), func(t store.Tx) (err error) {
		n, err = t.(*Tx).PruneChanges(ctx, before)
		return err
	})
	return n, err
}
