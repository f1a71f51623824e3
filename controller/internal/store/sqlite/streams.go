package sqlite

import (
	"context"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/internal/sqlcore"
)

// SyncMapStreams implements store.Store.
func (s *Store) SyncMapStreams(ctx context.Context, sync store.StreamSync) (*store.StreamSyncResult, error) {
	return sqlcore.StoreSyncMapStreams(ctx, s, sync)
}

// MapStreams implements store.Store.
func (s *Store) MapStreams(ctx context.Context, nodeID string, liveAfter time.Time) ([]store.MapStream, error) {
	return sqlcore.StoreMapStreams(ctx, s, nodeID, liveAfter)
}

// DropReplica implements store.Store.
func (s *Store) DropReplica(ctx context.Context, replicaID string) error {
	return sqlcore.StoreDropReplica(ctx, s, replicaID)
}

// PostHolePunches implements store.Store.
func (s *Store) PostHolePunches(ctx context.Context, hps []store.HolePunchPost) error {
	return sqlcore.StorePostHolePunches(ctx, s, hps)
}

// TakeHolePunches implements store.Store.
func (s *Store) TakeHolePunches(ctx context.Context, replicaID string) ([]store.HolePunchPost, error) {
	return sqlcore.StoreTakeHolePunches(ctx, s, replicaID)
}
