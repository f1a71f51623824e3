package sqlcore

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/ipam"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// GetCvlan implements store.Tx.
func (tx *Tx) GetCvlan(ctx context.Context, id string) (*domain.Cvlan, error) {
	return cvlans.get(ctx, tx, id)
}

// ListCvlans implements store.Tx.
func (tx *Tx) ListCvlans(ctx context.Context, f store.CvlanFilter, o store.ListOptions) (*store.Page[domain.Cvlan], error) {
	var c []cond
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	return cvlans.list(ctx, tx, c, o)
}

// CreateCvlan implements store.Tx.
func (tx *Tx) CreateCvlan(ctx context.Context, v *domain.Cvlan) error {
	if err := tx.writable(); err != nil {
		return err
	}
	if v.Name == "" {
		return fmt.Errorf("%w: cvlan name is required", domain.ErrInvalid)
	}
	v4s := ""
	if v.IPv4CIDR.IsValid() {
		v4s = v.IPv4CIDR.String()
	}
	v4, err := ipam.ParseIPv4(v4s)
	if err != nil {
		return fmt.Errorf("%w: %v", domain.ErrInvalid, err)
	}
	v6 := v.IPv6CIDR
	if !v6.IsValid() {
		if v6, err = ipam.GenerateULA(rand.Reader); err != nil {
			return err
		}
	} else if v6, err = ipam.ParseIPv6(v6.String(), v4); err != nil {
		return fmt.Errorf("%w: %v", domain.ErrInvalid, err)
	}
	v.IPv4CIDR, v.IPv6CIDR = v4, v6
	tid, err := cvlans.bindTenant(tx, v)
	if err != nil {
		return err
	}
	t, err := tenants.getBy(ctx, tx, tid, false, eq("id", tid))
	if err != nil {
		return err
	}
	if t.Settings.MaxCvlans > 0 {
		// Lock the tenant so that concurrent creators count one after another.
		if _, err := tenants.getBy(ctx, tx, tid, true, eq("id", tid)); err != nil {
			return err
		}
		n, _, err := tx.queryInt64(ctx, "SELECT count(*) FROM cvlans WHERE tenant_id = ?", tid)
		if err != nil {
			return fmt.Errorf("count cvlans: %w", err)
		}
		if n >= int64(t.Settings.MaxCvlans) {
			return fmt.Errorf("tenant %s has %d of %d cvlans: %w", tid, n, t.Settings.MaxCvlans, domain.ErrExhausted)
		}
	}
	return cvlans.insert(ctx, tx, v)
}

// UpdateCvlan implements store.Tx.
func (tx *Tx) UpdateCvlan(ctx context.Context, v *domain.Cvlan) error {
	return cvlans.update(ctx, tx, v)
}

// DeleteCvlan implements store.Tx.
func (tx *Tx) DeleteCvlan(ctx context.Context, id string, version int64, force bool) error {
	if err := tx.writable(); err != nil {
		return err
	}
	cv, err := cvlans.get(ctx, tx, id)
	if err != nil {
		return err
	}
	if version != 0 && version != cv.Version {
		return fmt.Errorf("delete cvlan %s: have version %d, stored %d: %w", id, version, cv.Version, domain.ErrConflict)
	}
	ids, err := tx.nodeIDs(ctx, id)
	if err != nil {
		return err
	}
	if len(ids) > 0 && !force {
		return fmt.Errorf("delete cvlan %s: it still has %d nodes: %w", id, len(ids), domain.ErrFailedPrecondition)
	}
	for _, nid := range ids {
		if err := nodes.remove(ctx, tx, nid, 0); err != nil {
			return err
		}
	}
	return cvlans.remove(ctx, tx, id, cv.Version)
}

func (tx *Tx) nodeIDs(ctx context.Context, cvlanID string) ([]string, error) {
	rows, err := tx.query(ctx, "SELECT id FROM nodes WHERE cvlan_id = ?", cvlanID)
	if err != nil {
		return nil, fmt.Errorf("list nodes of cvlan: %w", err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// CvlanUsage implements store.Tx.
func (tx *Tx) CvlanUsage(ctx context.Context, id string) (store.CvlanUsage, error) {
	cv, err := cvlans.get(ctx, tx, id)
	if err != nil {
		return store.CvlanUsage{}, err
	}
	var u store.CvlanUsage
	if u.Nodes, _, err = tx.queryInt64(ctx, "SELECT count(*) FROM nodes WHERE cvlan_id = ?", id); err != nil {
		return u, fmt.Errorf("count nodes: %w", err)
	}
	if u.Online, _, err = tx.queryInt64(ctx, "SELECT count(*) FROM nodes WHERE cvlan_id = ? AND status = ?", id, string(domain.NodeOnline)); err != nil {
		return u, fmt.Errorf("count nodes: %w", err)
	}
	u.IPv4Available = ipam.Usable(cv.IPv4CIDR) - u.Nodes
	return u, nil
}

// GetNode implements store.Tx.
func (tx *Tx) GetNode(ctx context.Context, id string) (*domain.Node, error) {
	return nodes.get(ctx, tx, id)
}

// ListNodes implements store.Tx.
func (tx *Tx) ListNodes(ctx context.Context, f store.NodeFilter, o store.ListOptions) (*store.Page[domain.Node], error) {
	var c []cond
	if f.CvlanID != "" {
		c = append(c, eq("cvlan_id", f.CvlanID))
	}
	if f.Tag != "" {
		c = append(c, cond{tx.d.ArrayHas("data", "tags", "?"), []any{f.Tag}})
	}
	if f.Status != "" {
		c = append(c, eq("status", string(f.Status)))
	}
	if f.SyncState != "" {
		c = append(c, eq("sync_state", string(f.SyncState)))
	}
	if f.NamePrefix != "" {
		c = append(c, prefixCond("name", f.NamePrefix))
	}
	if f.Kind != "" {
		c = append(c, eq("kind", string(f.Kind)))
	}
	if f.UserID != "" {
		c = append(c, eq("user_id", f.UserID))
	}
	if f.PendingRouteApproval {
		c = append(c, eq("pending_routes", true))
	}
	if f.WireGuardPublicKey != "" {
		c = append(c, eq("wg_key", f.WireGuardPublicKey))
	}
	if f.Ephemeral != nil {
		c = append(c, eq("ephemeral", *f.Ephemeral))
	}
	if !f.LastSeenBefore.IsZero() {
		c = append(c, cond{"last_seen < ?", []any{micros(f.LastSeenBefore)}})
	}
	return nodes.list(ctx, tx, c, o)
}

// allocBatch is how many taken addresses one allocator query reads.
const allocBatch = 256

// CreateNode implements store.Tx.
func (tx *Tx) CreateNode(ctx context.Context, v *domain.Node) error {
	return tx.CreateNodes(ctx, []*domain.Node{v})
}

// CreateNodes implements store.Tx.
func (tx *Tx) CreateNodes(ctx context.Context, vs []*domain.Node) error {
	if err := tx.writable(); err != nil {
		return err
	}
	if len(vs) == 0 {
		return nil
	}
	var tid string
	for i, v := range vs {
		if v.Name == "" {
			return fmt.Errorf("%w: node name is required", domain.ErrInvalid)
		}
		if v.Kind == "" {
			v.Kind = domain.NodeKindNode
		}
		if v.Status == "" {
			v.Status = domain.NodePending
		}
		t, err := nodes.bindTenant(tx, v)
		if err != nil {
			return err
		}
		if i == 0 {
			tid = t
		}
		if t != tid || v.CvlanID != vs[0].CvlanID {
			return fmt.Errorf("%w: CreateNodes takes nodes of one tenant and cvlan", domain.ErrInvalid)
		}
	}
	cvlanID := vs[0].CvlanID
	if tid == "" {
		// The node of a shared relay: no tenant, no cvlan, no overlay address.
		for _, v := range vs {
			if v.Kind != domain.NodeKindRelay || v.CvlanID != "" {
				return fmt.Errorf("%w: only the node of a shared relay may have no tenant", domain.ErrInvalid)
			}
			v.IPv4Address, v.IPv6Address = netip.Addr{}, netip.Addr{}
		}
		return nodes.insertMany(ctx, tx, vs)
	}
	if cvlanID == "" {
		for _, v := range vs {
			if v.Kind != domain.NodeKindRelay {
				return fmt.Errorf("%w: a %s node needs a cvlan", domain.ErrInvalid, v.Kind)
			}
			v.IPv4Address, v.IPv6Address = netip.Addr{}, netip.Addr{}
		}
		t, err := tenants.getBy(ctx, tx, tid, false, eq("id", tid))
		if err != nil {
			return err
		}
		if err := tx.checkMaxNodes(ctx, t, len(vs)); err != nil {
			return err
		}
		return nodes.insertMany(ctx, tx, vs)
	}
	// Lock order: the cvlan row, then (only with a node limit) the tenant row.
	cv, hint, t, err := tx.lockCvlan(ctx, tid, cvlanID)
	if err != nil {
		return err
	}
	if err := tx.checkMaxNodes(ctx, t, len(vs)); err != nil {
		return err
	}
	first, last := ipam.UsableRange(cv.IPv4CIDR)
	idxs := make([]int64, len(vs))
	var auto []int // nodes that need an address
	for i, v := range vs {
		if !v.IPv4Address.IsValid() {
			auto = append(auto, i)
			continue
		}
		idx, err := ipam.Index(cv.IPv4CIDR, v.IPv4Address)
		if err != nil || idx < first || idx > last || !v.IPv4Address.Is4() {
			return fmt.Errorf("%w: %s is not a usable address of %s", domain.ErrInvalid, v.IPv4Address, cv.IPv4CIDR)
		}
		idxs[i] = idx
	}
	if len(auto) > 0 {
		// Explicit addresses of this batch are not in the table yet: ask for enough candidates
		// to skip them.
		reserved := map[int64]bool{}
		for i, v := range vs {
			if v.IPv4Address.IsValid() {
				reserved[idxs[i]] = true
			}
		}
		free, err := tx.allocate(ctx, cv, first, last, hint, len(auto)+len(reserved))
		if err != nil {
			return err
		}
		k := 0
		for _, i := range auto {
			for reserved[free[k]] {
				k++
			}
			idxs[i] = free[k]
			k++
		}
		if _, err := tx.exec(ctx, "UPDATE cvlans SET ipv4_next = ? WHERE id = ?", idxs[auto[len(auto)-1]]+1, cv.ID); err != nil {
			return fmt.Errorf("advance allocator: %w", err)
		}
	}
	for i, v := range vs {
		if v.IPv4Address, err = ipam.Nth(cv.IPv4CIDR, idxs[i]); err != nil {
			return err
		}
		if v.IPv6Address, err = ipam.Nth(cv.IPv6CIDR, idxs[i]); err != nil {
			return err
		}
	}
	return nodes.insertMany(ctx, tx, vs)
}

// checkMaxNodes fails with ErrExhausted when adding n nodes would exceed the tenant's limit. It
// locks the tenant row first, so that concurrent creators in different cvlans count one after
// another.
func (tx *Tx) checkMaxNodes(ctx context.Context, t *domain.Tenant, n int) error {
	if t.MaxNodes <= 0 {
		return nil
	}
	if _, err := tenants.getBy(ctx, tx, t.ID, true, eq("id", t.ID)); err != nil {
		return err
	}
	have, _, err := tx.queryInt64(ctx, "SELECT count(*) FROM nodes WHERE tenant_id = ?", t.ID)
	if err != nil {
		return fmt.Errorf("count nodes: %w", err)
	}
	if have+int64(n) > int64(t.MaxNodes) {
		return fmt.Errorf("tenant %s has %d of %d nodes: %w", t.ID, have, t.MaxNodes, domain.ErrExhausted)
	}
	return nil
}

// lockCvlan reads the cvlan, its allocator hint and its tenant in one query, locking the cvlan
// row (PostgreSQL; SQLite has one writer) so that allocation in one cvlan is serialised across
// transactions and processes.
func (tx *Tx) lockCvlan(ctx context.Context, tenantID, id string) (*domain.Cvlan, int64, *domain.Tenant, error) {
	rows, err := tx.query(ctx, tx.d.LockCvlan, id, tenantID)
	if err != nil {
		return nil, 0, nil, fmt.Errorf("lock cvlan: %w", err)
	}
	defer rows.Close()
	if !rows.Next() {
		if err := rows.Err(); err != nil {
			return nil, 0, nil, fmt.Errorf("lock cvlan: %w", err)
		}
		return nil, 0, nil, fmt.Errorf("cvlan %s: %w", id, domain.ErrNotFound)
	}
	var (
		cid        string
		version    int64
		data, tdat []byte
		hint       int64
	)
	if err := rows.Scan(&cid, &version, &data, &hint, &tdat); err != nil {
		return nil, 0, nil, fmt.Errorf("lock cvlan: %w", err)
	}
	cv, t := &domain.Cvlan{}, &domain.Tenant{}
	if err := jsonUnmarshal(data, cv); err != nil {
		return nil, 0, nil, err
	}
	if err := jsonUnmarshal(tdat, t); err != nil {
		return nil, 0, nil, err
	}
	cv.ID, cv.Version, t.ID = cid, version, tenantID
	return cv, hint, t, rows.Err()
}

// allocate finds n free usable indices, the first at or after hint, wrapping around once, so
// that addresses of deleted nodes are reused only after the rest of the pool (fewer stale
// references to a recycled address). It reads taken addresses in batches along the
// (cvlan_id, ipv4) index.
func (tx *Tx) allocate(ctx context.Context, cv *domain.Cvlan, first, last, hint int64, n int) ([]int64, error) {
	base := addrValue(cv.IPv4CIDR.Addr()).(int64)
	start := hint
	if start < first || start > last {
		start = first
	}
	out := make([]int64, 0, n)
	// scan appends free indices of [from, to] until out holds n.
	scan := func(from, to int64) error {
		cur := from
		for cur <= to && len(out) < n {
			taken, err := tx.takenAddrs(ctx, cv.ID, base+cur, base+to)
			if err != nil {
				return err
			}
			for _, a := range taken {
				for ; cur < a-base && len(out) < n; cur++ {
					out = append(out, cur)
				}
				if len(out) == n {
					return nil
				}
				cur = a - base + 1
			}
			if len(taken) < allocBatch {
				for ; cur <= to && len(out) < n; cur++ {
					out = append(out, cur)
				}
			}
		}
		return nil
	}
	if err := scan(start, last); err != nil {
		return nil, err
	}
	if len(out) < n {
		if err := scan(first, start-1); err != nil {
			return nil, err
		}
	}
	if len(out) < n {
		return nil, fmt.Errorf("cvlan %s: not enough free addresses in %s (%d usable): %w", cv.ID, cv.IPv4CIDR, ipam.Usable(cv.IPv4CIDR), domain.ErrExhausted)
	}
	return out, nil
}

func (tx *Tx) takenAddrs(ctx context.Context, cvlanID string, from, to int64) ([]int64, error) {
	rows, err := tx.query(ctx, "SELECT ipv4 FROM nodes WHERE cvlan_id = ? AND ipv4 >= ? AND ipv4 <= ? ORDER BY ipv4 LIMIT ?",
		cvlanID, from, to, allocBatch)
	if err != nil {
		return nil, fmt.Errorf("read taken addresses: %w", err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var a int64
		if err := rows.Scan(&a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, rows.Err()
}

// UpdateNode implements store.Tx.
func (tx *Tx) UpdateNode(ctx context.Context, v *domain.Node) error { return nodes.update(ctx, tx, v) }

// UpdateNodeStatus implements store.Tx.
func (tx *Tx) UpdateNodeStatus(ctx context.Context, v *domain.Node, notify bool) error {
	kind := ""
	if notify {
		kind = domain.ResourceNodeStatus
	}
	return nodes.updateAs(ctx, tx, v, kind)
}

// TouchNodes implements store.Tx: one UPDATE per chunk of ids, touching the last_seen column and
// the JSON copy in place (no read, no decode).
func (tx *Tx) TouchNodes(ctx context.Context, ids []string, at time.Time) error {
	if err := tx.writable(); err != nil {
		return err
	}
	at = at.UTC().Truncate(time.Microsecond)
	stamp, err := jsonString(at)
	if err != nil {
		return err
	}
	stamp = strings.Trim(stamp, `"`)
	for len(ids) > 0 {
		chunk := ids[:min(len(ids), insertRows)]
		ids = ids[len(chunk):]
		idArgs := make([]any, len(chunk))
		for i, id := range chunk {
			idArgs[i] = id
		}
		in := cond{"id IN (" + strings.TrimSuffix(strings.Repeat("?, ", len(chunk)), ", ") + ")", idArgs}
		w, wargs := where(append(nodes.writeConds(tx), in, cond{"last_seen < ?", []any{micros(at)}}))
		q := "UPDATE nodes SET last_seen = ?, data = " + tx.d.SetJSONText("data", "last_seen_time", "?") + w
		if _, err := tx.exec(ctx, q, append([]any{micros(at), stamp}, wargs...)...); err != nil {
			return fmt.Errorf("touch nodes: %w", err)
		}
	}
	return nil
}

// TouchNode implements store.Tx.
func (tx *Tx) TouchNode(ctx context.Context, id string, at time.Time) error {
	if err := tx.writable(); err != nil {
		return err
	}
	n, err := nodes.getBy(ctx, tx, id, true, eq("id", id))
	if err != nil {
		return err
	}
	n.LastSeenTime = at.UTC().Truncate(time.Microsecond)
	data, err := jsonString(n)
	if err != nil {
		return err
	}
	if _, err := tx.exec(ctx, "UPDATE nodes SET data = ?, last_seen = ? WHERE id = ?", data, micros(n.LastSeenTime), id); err != nil {
		return fmt.Errorf("touch node %s: %w", id, err)
	}
	return nil
}

// DeleteNode implements store.Tx.
func (tx *Tx) DeleteNode(ctx context.Context, id string, version int64) error {
	return nodes.remove(ctx, tx, id, version)
}
