package api

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// res is a pointer to a domain resource (all embed domain.Meta).
type res[T any] interface {
	*T
	GetMeta() *domain.Meta
}

// The helpers below take store.Tx method expressions (store.Tx.GetNode, ...) so that every
// resource shares one implementation of etag checks, before/after snapshots and audit rows.

// doCreate stores v and writes its audit row in one transaction.
func doCreate[T any, P res[T]](ctx context.Context, s *server, scope store.Scope, action, rtype string, v P,
	put func(store.Tx, context.Context, P) error, pb func(P) proto.Message,
	prepare func(tx store.Tx) error) error {
	return s.write(ctx, scope, func(tx store.Tx) error {
		if prepare != nil {
			if err := prepare(tx); err != nil {
				return err
			}
		}
		if err := put(tx, ctx, v); err != nil {
			return err
		}
		return s.audit(ctx, tx, action, rtype, v.GetMeta().ID, nil, pb(v))
	})
}

// doUpdate reads the resource, checks the etag (stale: Aborted), applies the change, stores it
// conditionally on the version read (so a concurrent writer between read and write also gives
// Aborted: no lost updates) and writes the audit row with before and after.
func doUpdate[T any, P res[T]](ctx context.Context, s *server, scope store.Scope, id, et, action, rtype string,
	get func(store.Tx, context.Context, string) (P, error), put func(store.Tx, context.Context, P) error,
	pb func(P) proto.Message, apply func(tx store.Tx, v P) error) (P, error) {
	var out P
	err := s.write(ctx, scope, func(tx store.Tx) error {
		cur, err := get(tx, ctx, id)
		if err != nil {
			return err
		}
		if _, err := checkEtag(et, *cur.GetMeta()); err != nil {
			return err
		}
		read := cur.GetMeta().Version
		before := proto.Clone(pb(cur))
		if err := apply(tx, cur); err != nil {
			return err
		}
		cur.GetMeta().Version = read
		if err := put(tx, ctx, cur); err != nil {
			return err
		}
		out = cur
		return s.audit(ctx, tx, action, rtype, id, before, pb(cur))
	})
	return out, err
}

// doDelete reads the resource (NotFound, etag check), deletes it and writes the audit row.
func doDelete[T any, P res[T]](ctx context.Context, s *server, scope store.Scope, id, et, action, rtype string,
	get func(store.Tx, context.Context, string) (P, error), del func(tx store.Tx, id string, version int64) error,
	pb func(P) proto.Message) (P, error) {
	var out P
	err := s.write(ctx, scope, func(tx store.Tx) error {
		cur, err := get(tx, ctx, id)
		if err != nil {
			return err
		}
		want, err := checkEtag(et, *cur.GetMeta())
		if err != nil {
			return err
		}
		if want == 0 {
			want = cur.GetMeta().Version
		}
		if err := del(tx, id, want); err != nil {
			return err
		}
		out = cur
		return s.audit(ctx, tx, action, rtype, id, pb(cur), nil)
	})
	return out, err
}
