package postgres

import (
	"context"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/internal/sqlcore"
)

// SyncMapStreams implements store.Store.
func (s *Store) SyncMapStreams(ctx context.Context, sync store.StreamSync) (*store.StreamSyncResult, error) {
	var out *store.StreamSyncResult
	err := s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		out, err = t.(*sqlcore.Tx).SyncMapStreams(ctx, sync)
		return err
	})
	return out, err
}

// MapStreams implements store.Store.
func (s *Store) MapStreams(ctx context.Context, nodeID string, liveAfter time.Time) ([]store.MapStream, error) {
	var out []store.MapStream
	err := s.ReadTx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		out, err = t.(*sqlcore.Tx).MapStreams(ctx, nodeID, liveAfter)
		return err
	})
	return out, err
}

// DropReplica implements store.Store.
func (s *Store) DropReplica(ctx context.Context, replicaID string) error {
	return s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		return t.(*sqlcore.Tx).DropReplica(ctx, replicaID)
	})
}

// PostHolePunches implements store.Store.
func (s *Store) PostHolePunches(ctx context.Context, hps []store.HolePunchPost) error {
	return s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		return t.(*sqlcore.Tx).PostHolePunches(ctx, hps)
	})
}

// TakeHolePunches implements store.Store.
func (s *Store) TakeHolePunches(ctx context.Context, replicaID string) ([]store.HolePunchPost, error) {
	// Called on every wake-up of the feed: the usual empty queue is a read only.
	var queued bool
	err := s.ReadTx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		queued, err = t.(*sqlcore.Tx).HasHolePunches(ctx, replicaID)
		return err
	})
	if err != nil || !queued {
		return nil, err
	}
	var out []store.HolePunchPost
	err = s.Tx(ctx, store.AllTenants(), func(t store.Tx) error {
		var err error
		out, err = t.(*sqlcore.Tx).TakeHolePunches(ctx, replicaID)
		return err
	})
	return out, err
}
