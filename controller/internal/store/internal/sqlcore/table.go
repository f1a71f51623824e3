package sqlcore

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// entity is a pointer to a resource type embedding domain.Meta.
type entity[T any] interface {
	*T
	GetMeta() *domain.Meta
}

// tenancy says how a table's rows relate to tenants.
type tenancy int

const (
	// ownTenant: every row belongs to one tenant.
	ownTenant tenancy = iota
	// optionalTenant: rows without a tenant exist (created in the all-tenants scope) and are
	// visible only there (join tokens and nodes of shared relays).
	optionalTenant
	// sharedTenant: rows without a tenant are shared: every tenant reads them, only the
	// all-tenants scope changes them (shared relays).
	sharedTenant
	// isTenant: the tenants table; a tenant scope sees its own row.
	isTenant
	// global: no tenant column; every scope reads, only the all-tenants scope writes (regions).
	global
)

// table describes how one resource type maps to its table.
type table[T any, P entity[T]] struct {
	name string // table name
	kind string // resource type (domain.Resource*)
	mode tenancy
	// tenant returns the entity's tenant id field; nil for isTenant and global tables.
	tenant func(P) *string
	// byName lists by (name, id); otherwise by id (creation order).
	byName bool
	// feed records change events (ids only) for the change feed: network maps and WatchEvents.
	feed bool
	// cols are the extra columns, in the order vals returns their values ("name" first when
	// byName).
	cols []string
	vals func(P) []any
	// keep copies immutable fields from the stored entity onto an update.
	keep func(old, upd P)
}

const metaCols = "id, version, create_time, update_time, data"

// scopeConds limits a read to what the transaction's scope may see.
func (t *table[T, P]) scopeConds(tx *Tx) []cond {
	if tx.scope.All {
		return nil
	}
	switch t.mode {
	case isTenant:
		return []cond{{"id = ?", []any{tx.scope.TenantID}}}
	case global:
		return nil
	case sharedTenant:
		return []cond{{"tenant_id = ? OR tenant_id IS NULL", []any{tx.scope.TenantID}}}
	}
	return []cond{{"tenant_id = ?", []any{tx.scope.TenantID}}}
}

// writeConds limits a write to what the transaction's scope may change.
func (t *table[T, P]) writeConds(tx *Tx) []cond {
	if t.mode == sharedTenant && !tx.scope.All {
		return []cond{{"tenant_id = ?", []any{tx.scope.TenantID}}}
	}
	return t.scopeConds(tx)
}

// tenantOf returns the tenant a row belongs to ("" for global and shared rows).
func (t *table[T, P]) tenantOf(p P) string {
	switch {
	case t.mode == isTenant:
		return p.GetMeta().ID
	case t.tenant == nil:
		return ""
	}
	return *t.tenant(p)
}

// writable reports whether the scope may change the stored row p.
func (t *table[T, P]) mayWrite(tx *Tx, p P) error {
	if tx.scope.All {
		return nil
	}
	if t.mode == global || (t.mode == sharedTenant && *t.tenant(p) == "") {
		return fmt.Errorf("%s %s is shared: only the all-tenants scope changes it: %w", t.kind, p.GetMeta().ID, domain.ErrPermissionDenied)
	}
	return nil
}

func (t *table[T, P]) scan(rows Rows) (P, error) {
	var (
		id              string
		version, ct, ut int64
		data            []byte
	)
	if err := rows.Scan(&id, &version, &ct, &ut, &data); err != nil {
		return nil, fmt.Errorf("scan %s: %w", t.name, err)
	}
	p := P(new(T))
	if err := json.Unmarshal(data, p); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", t.kind, id, err)
	}
	m := p.GetMeta()
	m.ID, m.Version, m.CreateTime, m.UpdateTime = id, version, fromMicros(ct), fromMicros(ut)
	return p, nil
}

// selectAll runs a SELECT of entities with the given conditions and suffix (ORDER BY...).
func (t *table[T, P]) selectAll(ctx context.Context, tx *Tx, conds []cond, suffix string, extra ...any) ([]P, error) {
	w, args := where(append(t.scopeConds(tx), conds...))
	rows, err := tx.query(ctx, "SELECT "+metaCols+" FROM "+t.name+w+suffix, append(args, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("query %s: %w", t.name, err)
	}
	defer rows.Close()
	var out []P
	for rows.Next() {
		p, err := t.scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("query %s: %w", t.name, err)
	}
	return out, nil
}

// getBy returns the one entity matching conds, or ErrNotFound.
func (t *table[T, P]) getBy(ctx context.Context, tx *Tx, what string, lock bool, conds ...cond) (P, error) {
	suffix := ""
	if lock && !tx.readOnly {
		suffix = tx.d.ForUpdate
	}
	out, err := t.selectAll(ctx, tx, conds, suffix)
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s %s: %w", t.kind, what, domain.ErrNotFound)
	}
	return out[0], nil
}

func (t *table[T, P]) get(ctx context.Context, tx *Tx, id string) (P, error) {
	return t.getBy(ctx, tx, id, false, cond{"id = ?", []any{id}})
}

func (t *table[T, P]) list(ctx context.Context, tx *Tx, conds []cond, o store.ListOptions) (*store.Page[T], error) {
	tok, err := decodeToken(o.PageToken)
	if err != nil {
		return nil, err
	}
	n := pageSize(o)
	page := &store.Page[T]{}
	if o.WithTotal {
		w, args := where(append(t.scopeConds(tx), conds...))
		total, _, err := tx.queryInt64(ctx, "SELECT count(*) FROM "+t.name+w, args...)
		if err != nil {
			return nil, fmt.Errorf("count %s: %w", t.name, err)
		}
		page.TotalSize = int(total)
	}
	order := " ORDER BY id"
	if t.byName {
		order = " ORDER BY name, id"
	}
	if tok != nil {
		if t.byName {
			// "name >= ?" first gives both databases an index range start on (.., name, id);
			// the OR alone makes SQLite scan from the beginning.
			conds = append(conds, cond{"name >= ? AND (name > ? OR id > ?)", []any{tok.Name, tok.Name, tok.ID}})
		} else {
			conds = append(conds, cond{"id > ?", []any{tok.ID}})
		}
	}
	items, err := t.selectAll(ctx, tx, conds, order+" LIMIT ?", n+1)
	if err != nil {
		return nil, err
	}
	if len(items) > n {
		items = items[:n]
		last := items[n-1]
		next := pageToken{ID: last.GetMeta().ID}
		if t.byName {
			next.Name = fmt.Sprint(t.vals(last)[0])
		}
		page.NextPageToken = encodeToken(next)
	}
	page.Items = make([]*T, len(items))
	for i, p := range items {
		page.Items[i] = (*T)(p)
	}
	return page, nil
}

// bindTenant applies the transaction's scope to a new entity's tenant.
func (t *table[T, P]) bindTenant(tx *Tx, p P) (string, error) {
	if t.tenant == nil {
		if !tx.scope.All {
			return "", fmt.Errorf("creating a %s needs the all-tenants scope: %w", t.kind, domain.ErrPermissionDenied)
		}
		return t.tenantOf(p), nil
	}
	tid := t.tenant(p)
	switch {
	case tx.scope.All && *tid == "" && t.mode == ownTenant:
		return "", fmt.Errorf("%w: %s without tenant", domain.ErrInvalid, t.kind)
	case !tx.scope.All && *tid == "":
		*tid = tx.scope.TenantID
	case !tx.scope.All && *tid != tx.scope.TenantID:
		return "", fmt.Errorf("tenant %s: %w", *tid, domain.ErrNotFound)
	}
	return *tid, nil
}

// stored reads the row a write of op changes (locked when lock), and checks that the scope may
// write it and that version, when nonzero, is the stored one (ErrConflict otherwise).
func (t *table[T, P]) stored(ctx context.Context, tx *Tx, op, id string, version int64, lock bool) (P, error) {
	old, err := t.getBy(ctx, tx, id, lock, cond{"id = ?", []any{id}})
	if err != nil {
		return nil, err
	}
	if err := t.mayWrite(tx, old); err != nil {
		return nil, err
	}
	if om := old.GetMeta(); version != 0 && version != om.Version {
		return nil, fmt.Errorf("%s %s %s: have version %d, stored %d: %w", op, t.kind, id, version, om.Version, domain.ErrConflict)
	}
	return old, nil
}

func (t *table[T, P]) insert(ctx context.Context, tx *Tx, p P) error {
	return t.insertMany(ctx, tx, []P{p})
}

// insertRows is how many rows one multi-row INSERT carries (well under both databases'
// parameter limits).
const insertRows = 500

// insertMany inserts ps with multi-row INSERT statements.
func (t *table[T, P]) insertMany(ctx context.Context, tx *Tx, ps []P) error {
	if err := tx.writable(); err != nil {
		return err
	}
	cols := []string{"id", "version", "create_time", "update_time", "data"}
	if t.tenant != nil {
		cols = append(cols, "tenant_id")
	}
	cols = append(cols, t.cols...)
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", len(cols)), ", ") + ")"
	for len(ps) > 0 {
		chunk := ps[:min(len(ps), insertRows)]
		ps = ps[len(chunk):]
		args := make([]any, 0, len(chunk)*len(cols))
		tids := make([]string, len(chunk))
		for i, p := range chunk {
			m := p.GetMeta()
			now := tx.Now()
			m.ID, m.CreateTime, m.UpdateTime, m.Version = NewID(), now, now, 1
			tid, err := t.bindTenant(tx, p)
			if err != nil {
				return err
			}
			tids[i] = tid
			data, err := json.Marshal(p)
			if err != nil {
				return fmt.Errorf("encode %s: %w", t.kind, err)
			}
			args = append(args, m.ID, m.Version, micros(m.CreateTime), micros(m.UpdateTime), string(data))
			if t.tenant != nil {
				args = append(args, nullable(tid))
			}
			args = append(args, t.vals(p)...)
		}
		q := "INSERT INTO " + t.name + " (" + strings.Join(cols, ", ") + ") VALUES " +
			strings.TrimSuffix(strings.Repeat(row+", ", len(chunk)), ", ")
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return tx.classify(err, "create "+t.kind)
		}
		if t.feed {
			for i, p := range chunk {
				tx.record(tids[i], t.kind, p.GetMeta().ID, domain.OpCreate, 1)
			}
		}
	}
	return nil
}

func (t *table[T, P]) update(ctx context.Context, tx *Tx, p P) error {
	feedKind := ""
	if t.feed {
		feedKind = t.kind
	}
	return t.updateAs(ctx, tx, p, feedKind)
}

// updateAs is update recording a change event of resource type feedKind (none when empty).
func (t *table[T, P]) updateAs(ctx context.Context, tx *Tx, p P, feedKind string) error {
	if err := tx.writable(); err != nil {
		return err
	}
	m := p.GetMeta()
	old, err := t.stored(ctx, tx, "update", m.ID, m.Version, false)
	if err != nil {
		return err
	}
	om := old.GetMeta()
	if t.tenant != nil {
		*t.tenant(p) = *t.tenant(old)
	}
	if t.keep != nil {
		t.keep(old, p)
	}
	m.CreateTime, m.UpdateTime, m.Version = om.CreateTime, tx.Now(), om.Version+1
	data, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t.kind, err)
	}
	sets := []string{"version = ?", "update_time = ?", "data = ?"}
	args := []any{m.Version, micros(m.UpdateTime), string(data)}
	for _, c := range t.cols {
		sets = append(sets, c+" = ?")
	}
	args = append(args, t.vals(p)...)
	w, wargs := where(append(t.writeConds(tx), cond{"id = ? AND version = ?", []any{m.ID, om.Version}}))
	n, err := tx.exec(ctx, "UPDATE "+t.name+" SET "+strings.Join(sets, ", ")+w, append(args, wargs...)...)
	if err != nil {
		return tx.classify(err, "update "+t.kind)
	}
	if n == 0 {
		// Changed (or deleted) by a concurrent transaction since we read it.
		return fmt.Errorf("update %s %s: changed concurrently: %w", t.kind, m.ID, domain.ErrConflict)
	}
	if feedKind != "" {
		tx.record(t.tenantOf(p), feedKind, m.ID, domain.OpUpdate, m.Version)
	}
	return nil
}

// updateStatus rewrites the stored row as merge leaves it and keeps its version and update
// time (a status write: etags stay valid), recording a change event of type feedKind (none when
// empty). The row is read locked, so merge starts from the committed configuration; version,
// when nonzero, must be the stored one.
func (t *table[T, P]) updateStatus(ctx context.Context, tx *Tx, id string, version int64, merge func(stored P), feedKind string) error {
	if err := tx.writable(); err != nil {
		return err
	}
	old, err := t.stored(ctx, tx, "update status of", id, version, true)
	if err != nil {
		return err
	}
	om := old.GetMeta()
	merge(old)
	data, err := json.Marshal(old)
	if err != nil {
		return fmt.Errorf("encode %s: %w", t.kind, err)
	}
	w, wargs := where(append(t.writeConds(tx), cond{"id = ? AND version = ?", []any{id, om.Version}}))
	n, err := tx.exec(ctx, "UPDATE "+t.name+" SET data = ?"+w, append([]any{string(data)}, wargs...)...)
	if err != nil {
		return tx.classify(err, "update status of "+t.kind)
	}
	if n == 0 {
		return fmt.Errorf("update status of %s %s: changed concurrently: %w", t.kind, id, domain.ErrConflict)
	}
	if feedKind != "" {
		tx.record(t.tenantOf(old), feedKind, id, domain.OpUpdate, om.Version)
	}
	return nil
}

func (t *table[T, P]) remove(ctx context.Context, tx *Tx, id string, version int64) error {
	if err := tx.writable(); err != nil {
		return err
	}
	old, err := t.stored(ctx, tx, "delete", id, version, false)
	if err != nil {
		return err
	}
	om := old.GetMeta()
	w, args := where(append(t.writeConds(tx), cond{"id = ? AND version = ?", []any{id, om.Version}}))
	n, err := tx.exec(ctx, "DELETE FROM "+t.name+w, args...)
	if err != nil {
		return tx.classify(err, "delete "+t.kind)
	}
	if n == 0 {
		return fmt.Errorf("delete %s %s: changed concurrently: %w", t.kind, id, domain.ErrConflict)
	}
	if t.feed {
		tx.record(t.tenantOf(old), t.kind, id, domain.OpDelete, 0)
	}
	return nil
}
