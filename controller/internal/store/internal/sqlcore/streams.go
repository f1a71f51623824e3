package sqlcore

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// The stream registry (ADR 009). Stores call these in an all-tenants read-write transaction
// (MapStreams in a read-only one).

// SyncMapStreams implements store.Store.SyncMapStreams within the transaction.
func (tx *Tx) SyncMapStreams(ctx context.Context, s store.StreamSync) (*store.StreamSyncResult, error) {
	if err := tx.writable(); err != nil {
		return nil, err
	}
	if tx.d.LockStreams != "" {
		if _, err := tx.exec(ctx, tx.d.LockStreams); err != nil {
			return nil, fmt.Errorf("lock stream registry: %w", err)
		}
	}
	now, stale := micros(s.Now), micros(s.StaleBefore)
	n, err := tx.exec(ctx, "UPDATE controller_replicas SET seen_time = ? WHERE id = ?", now, s.ReplicaID)
	if err != nil {
		return nil, fmt.Errorf("mark replica alive: %w", err)
	}
	res := &store.StreamSyncResult{Joined: n == 0}
	if n == 0 {
		if _, err := tx.exec(ctx, "INSERT INTO controller_replicas (id, seen_time) VALUES (?, ?)", s.ReplicaID, now); err != nil {
			return nil, fmt.Errorf("register replica: %w", err)
		}
	}
	// A replica never expires itself (its clock may be behind the others').
	for _, q := range []string{
		"DELETE FROM map_streams WHERE replica_id IN (SELECT id FROM controller_replicas WHERE seen_time < ? AND id <> ?)",
		"DELETE FROM hole_punches WHERE replica_id IN (SELECT id FROM controller_replicas WHERE seen_time < ? AND id <> ?)",
		"DELETE FROM controller_replicas WHERE seen_time < ? AND id <> ?",
		"DELETE FROM hole_punches WHERE create_time < ? AND replica_id <> ?",
	} {
		if _, err := tx.exec(ctx, q, stale, s.ReplicaID); err != nil {
			return nil, fmt.Errorf("expire stale replicas: %w", err)
		}
	}
	for rest := s.Closed; len(rest) > 0; {
		chunk := rest[:min(len(rest), insertRows)]
		rest = rest[len(chunk):]
		args := []any{s.ReplicaID}
		for _, id := range chunk {
			args = append(args, id)
		}
		if _, err := tx.exec(ctx, "DELETE FROM map_streams WHERE replica_id = ? AND id IN ("+placeholders(len(chunk))+")", args...); err != nil {
			return nil, fmt.Errorf("unregister streams: %w", err)
		}
	}
	for rest := s.Opened; len(rest) > 0; {
		chunk := rest[:min(len(rest), insertRows)]
		rest = rest[len(chunk):]
		args := make([]any, 0, 6*len(chunk))
		for _, m := range chunk {
			args = append(args, m.ID, s.ReplicaID, m.NodeID, m.SessionID, m.Addr, micros(m.OpenTime))
		}
		q := "INSERT INTO map_streams (id, replica_id, node_id, session_id, addr, open_time) VALUES " +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?), ", len(chunk)), ", ")
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return nil, tx.classify(err, "register streams")
		}
	}
	if len(s.Opened) == 0 {
		return res, nil
	}
	// Other live replicas' streams of the opened nodes.
	byNode := map[string][]store.MapStream{}
	nodes := make([]string, 0, len(s.Opened))
	for _, m := range s.Opened {
		if _, ok := byNode[m.NodeID]; !ok {
			byNode[m.NodeID] = nil
			nodes = append(nodes, m.NodeID)
		}
	}
	for rest := nodes; len(rest) > 0; {
		chunk := rest[:min(len(rest), insertRows)]
		rest = rest[len(chunk):]
		args := []any{s.ReplicaID, stale}
		for _, id := range chunk {
			args = append(args, id)
		}
		got, err := tx.scanStreams(ctx, `SELECT m.id, m.replica_id, m.node_id, m.session_id, m.addr, m.open_time FROM map_streams m
			JOIN controller_replicas r ON r.id = m.replica_id
			WHERE m.replica_id <> ? AND r.seen_time >= ? AND m.node_id IN (`+placeholders(len(chunk))+`) ORDER BY m.open_time, m.id`, args...)
		if err != nil {
			return nil, err
		}
		for _, m := range got {
			byNode[m.NodeID] = append(byNode[m.NodeID], m)
		}
	}
	res.Conflicts = map[string][]store.MapStream{}
	for _, m := range s.Opened {
		for _, o := range byNode[m.NodeID] {
			if o.SessionID != m.SessionID {
				res.Conflicts[m.ID] = append(res.Conflicts[m.ID], o)
			}
		}
	}
	return res, nil
}

// MapStreams implements store.Store.MapStreams within the transaction.
func (tx *Tx) MapStreams(ctx context.Context, nodeID string, liveAfter time.Time) ([]store.MapStream, error) {
	return tx.scanStreams(ctx, `SELECT m.id, m.replica_id, m.node_id, m.session_id, m.addr, m.open_time FROM map_streams m
		JOIN controller_replicas r ON r.id = m.replica_id
		WHERE m.node_id = ? AND r.seen_time >= ? ORDER BY m.open_time, m.id`, nodeID, micros(liveAfter))
}

// DropReplica implements store.Store.DropReplica within the transaction.
func (tx *Tx) DropReplica(ctx context.Context, replicaID string) error {
	if err := tx.writable(); err != nil {
		return err
	}
	for _, q := range []string{
		"DELETE FROM map_streams WHERE replica_id = ?",
		"DELETE FROM hole_punches WHERE replica_id = ?",
		"DELETE FROM controller_replicas WHERE id = ?",
	} {
		if _, err := tx.exec(ctx, q, replicaID); err != nil {
			return fmt.Errorf("drop replica: %w", err)
		}
	}
	return nil
}

// PostHolePunches implements store.Store.PostHolePunches within the transaction.
func (tx *Tx) PostHolePunches(ctx context.Context, hps []store.HolePunchPost) error {
	if err := tx.writable(); err != nil {
		return err
	}
	if len(hps) == 0 {
		return nil
	}
	for rest := hps; len(rest) > 0; {
		chunk := rest[:min(len(rest), insertRows)]
		rest = rest[len(chunk):]
		args := make([]any, 0, 5*len(chunk))
		for _, h := range chunk {
			at := h.CreateTime
			if at.IsZero() {
				at = tx.Now()
			}
			args = append(args, h.ReplicaID, h.NodeID, h.FromNodeID, append([]byte{}, h.WGKey...), micros(at))
		}
		q := "INSERT INTO hole_punches (replica_id, node_id, from_node_id, wg_key, create_time) VALUES " +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?), ", len(chunk)), ", ")
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return fmt.Errorf("post hole punches: %w", err)
		}
	}
	if tx.d.Wake != "" {
		if _, err := tx.exec(ctx, tx.d.Wake); err != nil {
			return fmt.Errorf("wake replicas: %w", err)
		}
	}
	tx.wake = true
	return nil
}

// HasHolePunches reports whether hole punches are queued for the replica (a read, so that the
// common empty case costs no write transaction).
func (tx *Tx) HasHolePunches(ctx context.Context, replicaID string) (bool, error) {
	_, ok, err := tx.queryInt64(ctx, "SELECT 1 FROM hole_punches WHERE replica_id = ? LIMIT 1", replicaID)
	if err != nil {
		return false, fmt.Errorf("look for hole punches: %w", err)
	}
	return ok, nil
}

// TakeHolePunches implements store.Store.TakeHolePunches within the transaction.
func (tx *Tx) TakeHolePunches(ctx context.Context, replicaID string) ([]store.HolePunchPost, error) {
	if err := tx.writable(); err != nil {
		return nil, err
	}
	rows, err := tx.query(ctx, "DELETE FROM hole_punches WHERE replica_id = ? RETURNING id, replica_id, node_id, from_node_id, wg_key, create_time", replicaID)
	if err != nil {
		return nil, fmt.Errorf("take hole punches: %w", err)
	}
	defer rows.Close()
	type row struct {
		id int64
		h  store.HolePunchPost
	}
	var got []row
	for rows.Next() {
		var (
			r  row
			at int64
		)
		if err := rows.Scan(&r.id, &r.h.ReplicaID, &r.h.NodeID, &r.h.FromNodeID, &r.h.WGKey, &at); err != nil {
			return nil, fmt.Errorf("take hole punches: %w", err)
		}
		r.h.CreateTime = fromMicros(at)
		got = append(got, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("take hole punches: %w", err)
	}
	// RETURNING has no guaranteed order.
	slices.SortFunc(got, func(a, b row) int { return cmp.Compare(a.id, b.id) })
	out := make([]store.HolePunchPost, len(got))
	for i, r := range got {
		out[i] = r.h
	}
	return out, nil
}

func (tx *Tx) scanStreams(ctx context.Context, q string, args ...any) ([]store.MapStream, error) {
	rows, err := tx.query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("read stream registry: %w", err)
	}
	defer rows.Close()
	var out []store.MapStream
	for rows.Next() {
		var (
			m  store.MapStream
			at int64
		)
		if err := rows.Scan(&m.ID, &m.ReplicaID, &m.NodeID, &m.SessionID, &m.Addr, &at); err != nil {
			return nil, fmt.Errorf("read stream registry: %w", err)
		}
		m.OpenTime = fromMicros(at)
		out = append(out, m)
	}
	return out, rows.Err()
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// StoreSyncMapStreams implements store.Store.SyncMapStreams for a store built on this package.
func StoreSyncMapStreams(ctx context.Context, s store.Store, sync store.StreamSync) (*store.StreamSyncResult, error) {
	var out *store.StreamSyncResult
	err := s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		out, err = t.(*Tx).SyncMapStreams(ctx, sync)
		return err
	})
	return out, err
}

// StoreMapStreams implements store.Store.MapStreams for a store built on this package.
func StoreMapStreams(ctx context.Context, s store.Store, nodeID string, liveAfter time.Time) ([]store.MapStream, error) {
	var out []store.MapStream
	err := s.ReadTx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		out, err = t.(*Tx).MapStreams(ctx, nodeID, liveAfter)
		return err
	})
	return out, err
}

// StoreDropReplica implements store.Store.DropReplica for a store built on this package.
func StoreDropReplica(ctx context.Context, s store.Store, replicaID string) error {
	return s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		return t.(*Tx).DropReplica(ctx, replicaID)
	})
}

// StorePostHolePunches implements store.Store.PostHolePunches for a store built on this package.
func StorePostHolePunches(ctx context.Context, s store.Store, hps []store.HolePunchPost) error {
	return s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		return t.(*Tx).PostHolePunches(ctx, hps)
	})
}

// StoreTakeHolePunches implements store.Store.TakeHolePunches for a store built on this package.
func StoreTakeHolePunches(ctx context.Context, s store.Store, replicaID string) ([]store.HolePunchPost, error) {
	// Called on every wake-up of the feed: the usual empty queue is a read only.
	var queued bool
	err := s.ReadTx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		queued, err = t.(*Tx).HasHolePunches(ctx, replicaID)
		return err
	})
	if err != nil || !queued {
		return nil, err
	}
	var out []store.HolePunchPost
	err = s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		out, err = t.(*Tx).TakeHolePunches(ctx, replicaID)
		return err
	})
	return out, err
}
