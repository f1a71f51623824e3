// Package sqlcore is the SQL implementation of store.Tx shared by the SQLite and PostgreSQL
// stores. Each resource is a table with its id, tenant, version and times as columns, the columns
// its filters and unique keys need, and the whole entity as JSON in `data`; the dialects differ
// only in placeholders, JSON predicates, error codes, row locks and change-feed notification.
package sqlcore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// Querier is the part of a database transaction the core needs; the stores adapt *sql.Tx and
// pgx.Tx to it. Queries use '?' placeholders; the dialect rewrites them.
type Querier interface {
	Exec(ctx context.Context, query string, args ...any) (int64, error)
	Query(ctx context.Context, query string, args ...any) (Rows, error)
}

// Rows iterates over a query result.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// Dialect holds what differs between the databases.
type Dialect struct {
	// Name is "sqlite" or "postgres".
	Name string
	// Rebind rewrites '?' placeholders (nil: unchanged).
	Rebind func(string) string
	// ForUpdate is appended to SELECTs that must lock the row (" FOR UPDATE" or "").
	ForUpdate string
	// ArrayHas returns a predicate true when the JSON array at key of the JSON column data
	// contains the string expression val (a '?' placeholder or a column).
	ArrayHas func(data, key, val string) string
	// ArrayHasField returns a predicate true when an object of the JSON array at key of data has
	// field equal to the string expression val.
	ArrayHasField func(data, key, field, val string) string
	// JSONText returns the string field key of the JSON column data (NULL when absent).
	JSONText func(data, key string) string
	// JSONInt returns the integer field key of data (0 when absent).
	JSONInt func(data, key string) string
	// JSONBool returns a predicate true when the boolean field key of data is true.
	JSONBool func(data, key string) string
	// JSONMicros returns the RFC 3339 time field key of data as Unix microseconds (NULL when
	// absent; SQLite resolves milliseconds).
	JSONMicros func(data, key string) string
	// SetJSONText returns an expression that is the JSON column data with the string at the
	// top-level key replaced by the string expression val.
	SetJSONText func(data, key, val string) string
	// IsUnique and IsForeignKey classify constraint violations.
	IsUnique     func(error) bool
	IsForeignKey func(error) bool
	// BeforeChanges runs before change events are inserted, just before commit (PostgreSQL: a
	// transaction-level advisory lock, so that change ids become visible in id order).
	BeforeChanges string
	// AfterChanges runs after change events are inserted (PostgreSQL: pg_notify).
	AfterChanges string
	// InsertChanges, when set, returns one statement that does BeforeChanges, the insert of n
	// change rows (6 placeholders each) and AfterChanges in one round trip.
	InsertChanges func(n int) string
	// LockStreams serialises stream-registry writes of all processes until commit (PostgreSQL: a
	// transaction-level advisory lock; SQLite has one writer anyway).
	LockStreams string
	// Wake wakes other processes' Watch at commit (PostgreSQL: pg_notify on the feed's channel).
	Wake string
	// LockCvlan returns the query the allocator uses to read and lock a cvlan row together
	// with its tenant's data (locking only the cvlan).
	LockCvlan string
}

// NewID returns a new resource id: a UUIDv7 (time-ordered, so id order is creation order and
// keyset pagination by id lists oldest first), random bits from crypto/rand.
func NewID() string {
	id, err := uuid.NewV7FromReader(rand.Reader)
	if err != nil {
		// crypto/rand does not fail on supported platforms; a panic beats duplicate ids.
		panic(fmt.Sprintf("sqlcore: uuid: %v", err))
	}
	return id.String()
}

// Tx implements store.Tx over a Querier.
type Tx struct {
	q        Querier
	d        *Dialect
	scope    store.Scope
	readOnly bool
	now      func() time.Time
	changes  []domain.ChangeEvent
	wake     bool // notify watchers after commit though no change event was recorded
}

var _ store.Tx = (*Tx)(nil)

// NewTx wraps q. now is the clock (nil means time.Now).
func NewTx(q Querier, d *Dialect, scope store.Scope, readOnly bool, now func() time.Time) *Tx {
	if now == nil {
		now = time.Now
	}
	return &Tx{q: q, d: d, scope: scope, readOnly: readOnly, now: now}
}

// Scope implements store.Tx.
func (tx *Tx) Scope() store.Scope { return tx.scope }

// Now implements store.Tx: the clock truncated to microseconds, the precision stored.
func (tx *Tx) Now() time.Time { return tx.now().UTC().Truncate(time.Microsecond) }

// HasChanges reports whether the transaction recorded change events (the store then notifies
// watchers after commit).
func (tx *Tx) HasChanges() bool { return len(tx.changes) > 0 || tx.wake }

// FlushChanges writes the recorded change events. Stores call it right before commit, so that
// on PostgreSQL the feed lock is held only for the commit itself.
func (tx *Tx) FlushChanges(ctx context.Context) error {
	if len(tx.changes) == 0 {
		return nil
	}
	for rest := tx.changes; len(rest) > 0; {
		chunk := rest[:min(len(rest), insertRows)]
		rest = rest[len(chunk):]
		args := make([]any, 0, 6*len(chunk))
		for _, c := range chunk {
			args = append(args, nullable(c.TenantID), c.ResourceType, c.ResourceID, string(c.Op), c.Version, micros(c.Time))
		}
		if tx.d.InsertChanges != nil {
			if _, err := tx.exec(ctx, tx.d.InsertChanges(len(chunk)), args...); err != nil {
				return fmt.Errorf("append change events: %w", err)
			}
			continue
		}
		if tx.d.BeforeChanges != "" {
			if _, err := tx.exec(ctx, tx.d.BeforeChanges); err != nil {
				return fmt.Errorf("lock change feed: %w", err)
			}
		}
		q := "INSERT INTO change_events (tenant_id, resource_type, resource_id, op, version, time) VALUES " +
			strings.TrimSuffix(strings.Repeat("(?, ?, ?, ?, ?, ?), ", len(chunk)), ", ")
		if _, err := tx.exec(ctx, q, args...); err != nil {
			return fmt.Errorf("append change events: %w", err)
		}
		if tx.d.AfterChanges != "" {
			if _, err := tx.exec(ctx, tx.d.AfterChanges); err != nil {
				return fmt.Errorf("notify change feed: %w", err)
			}
		}
	}
	return nil
}

func (tx *Tx) record(tenantID, kind, id string, op domain.ChangeOp, version int64) {
	tx.changes = append(tx.changes, domain.ChangeEvent{
		Time: tx.Now(), TenantID: tenantID, ResourceType: kind, ResourceID: id, Op: op, Version: version,
	})
}

func (tx *Tx) rebind(q string) string {
	if tx.d.Rebind == nil {
		return q
	}
	return tx.d.Rebind(q)
}

func (tx *Tx) exec(ctx context.Context, q string, args ...any) (int64, error) {
	return tx.q.Exec(ctx, tx.rebind(q), args...)
}

func (tx *Tx) query(ctx context.Context, q string, args ...any) (Rows, error) {
	return tx.q.Query(ctx, tx.rebind(q), args...)
}

// queryInt64 runs a query returning one integer (count, id); no row gives ok == false.
func (tx *Tx) queryInt64(ctx context.Context, q string, args ...any) (v int64, ok bool, err error) {
	rows, err := tx.query(ctx, q, args...)
	if err != nil {
		return 0, false, err
	}
	defer rows.Close()
	if rows.Next() {
		var n *int64
		if err := rows.Scan(&n); err != nil {
			return 0, false, err
		}
		if n != nil {
			v = *n
		}
		ok = true
	}
	return v, ok, rows.Err()
}

func (tx *Tx) writable() error {
	if tx.readOnly {
		return fmt.Errorf("%w: write in a read-only transaction", domain.ErrInvalid)
	}
	return nil
}

// classify maps constraint violations to domain errors: a foreign-key violation means a missing
// parent on inserts (ErrNotFound) and remaining children on deletes (ErrFailedPrecondition).
func (tx *Tx) classify(err error, what string) error {
	switch {
	case err == nil:
		return nil
	case tx.d.IsUnique(err):
		return fmt.Errorf("%s: %w", what, domain.ErrAlreadyExists)
	case tx.d.IsForeignKey(err) && strings.HasPrefix(what, "delete"):
		return fmt.Errorf("%s: still referenced: %w", what, domain.ErrFailedPrecondition)
	case tx.d.IsForeignKey(err):
		return fmt.Errorf("%s: a referenced resource does not exist: %w", what, domain.ErrNotFound)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func micros(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixMicro()
}

func fromMicros(v int64) time.Time {
	if v == 0 {
		return time.Time{}
	}
	return time.UnixMicro(v).UTC()
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// cond is a predicate with its arguments.
type cond struct {
	sql  string
	args []any
}

func where(conds []cond) (string, []any) {
	if len(conds) == 0 {
		return "", nil
	}
	parts := make([]string, 0, len(conds))
	var args []any
	for _, c := range conds {
		parts = append(parts, "("+c.sql+")")
		args = append(args, c.args...)
	}
	return " WHERE " + strings.Join(parts, " AND "), args
}

// prefixCond matches col starting with prefix. It uses a range rather than LIKE so that both
// databases use the (col) index and no escaping of % or _ is needed.
func prefixCond(col, prefix string) cond {
	return cond{col + " >= ? AND " + col + " < ?", []any{prefix, prefix + "\U0010FFFF"}}
}

// pageToken is the keyset position after the last item of a page.
type pageToken struct {
	Name string `json:"n,omitempty"`
	ID   string `json:"i"`
}

func encodeToken(t pageToken) string {
	b, _ := json.Marshal(t)
	return base64.RawURLEncoding.EncodeToString(b)
}

func decodeToken(s string) (*pageToken, error) {
	if s == "" {
		return nil, nil
	}
	b, err := base64.RawURLEncoding.DecodeString(s)
	var t pageToken
	if err == nil {
		err = json.Unmarshal(b, &t)
	}
	if err != nil || t.ID == "" {
		return nil, fmt.Errorf("%w: malformed page token", domain.ErrInvalid)
	}
	return &t, nil
}

func pageSize(o store.ListOptions) int {
	switch {
	case o.PageSize <= 0:
		return store.DefaultPageSize
	case o.PageSize > store.MaxPageSize:
		return store.MaxPageSize
	}
	return o.PageSize
}

func jsonString(v any) (string, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return "", fmt.Errorf("encode: %w", err)
	}
	return string(b), nil
}

// Raw returns the underlying querier, bypassing every tenant filter of the core. It exists for
// the tests that prove row-level security catches queries without a tenant filter; production
// code has no use for it.
func (tx *Tx) Raw() Querier { return tx.q }
