// Package postgres is the production store: PostgreSQL through a pgx/v5 pool. Tenant isolation
// is enforced by the database with row-level security: every transaction sets its tenant (or the
// all-tenants flag) with set_config(..., true), and the application connects as a role that is
// neither superuser nor BYPASSRLS, so a query that forgets its tenant filter still sees only its
// tenant's rows. Several controller processes may share one database: IPAM locks the cvlan row,
// join-token consumption locks the token row, and the change feed wakes every process through
// LISTEN/NOTIFY.
package postgres

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/internal/sqlcore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Channel is the LISTEN/NOTIFY channel of the change feed.
const Channel = "cloudvlan_changes"

// feedLockKey is the advisory lock that orders change-feed inserts (an arbitrary constant).
const feedLockKey = 0x63766c616e // "cvlan"

// streamsLockKey is the advisory lock that serialises stream-registry writes (ADR 009).
const streamsLockKey = 0x63766c616e73 // "cvlans"

// Config configures Open.
type Config struct {
	// DSN is the application's connection string. Its role must not be a superuser or have
	// BYPASSRLS, or row-level security does not apply (Open logs a warning).
	DSN string
	// MigrationDSN connects as the schema owner to run migrations; empty means DSN. When its
	// role differs from DSN's, Open grants DSN's role the table privileges it needs.
	MigrationDSN string
	// MaxConns caps the pool (default: pgxpool's default, max(4, CPUs)).
	MaxConns int32
	// Logger receives migration and listener messages (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Store is the PostgreSQL implementation of store.Store.
type Store struct {
	pool     *pgxpool.Pool
	connCfg  *pgx.ConnConfig
	log      *slog.Logger
	now      func() time.Time
	notifier sqlcore.Notifier

	mu       sync.Mutex
	listener *listener
	closed   bool
}

var _ store.Store = (*Store)(nil)

func pgCode(err error) string {
	var e *pgconn.PgError
	if errors.As(err, &e) {
		return e.Code
	}
	return ""
}

// rebind turns '?' placeholders into $1, $2... (the core's SQL has no '?' elsewhere).
func rebind(q string) string {
	var b strings.Builder
	n := 0
	for i := 0; i < len(q); i++ {
		if q[i] == '?' {
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(q[i])
	}
	return b.String()
}

var dialect = sqlcore.Dialect{
	Name:      "postgres",
	Rebind:    rebind,
	ForUpdate: " FOR UPDATE",
	SetJSONText: func(data, key, val string) string {
		return "jsonb_set(" + data + ", '{" + key + "}', to_jsonb(" + val + "::text))"
	},
	ArrayHas: func(data, key, val string) string {
		return "coalesce(" + data + "->'" + key + "', '[]'::jsonb) @> jsonb_build_array(" + val + "::text)"
	},
	ArrayHasField: func(data, key, field, val string) string {
		return "coalesce(" + data + "->'" + key + "', '[]'::jsonb) @> jsonb_build_array(jsonb_build_object('" + field + "', " + val + "::text))"
	},
	JSONText: func(data, key string) string { return "(" + data + "->>'" + key + "')" },
	JSONInt:  func(data, key string) string { return "coalesce((" + data + "->>'" + key + "')::bigint, 0)" },
	JSONBool: func(data, key string) string { return "coalesce((" + data + "->>'" + key + "')::boolean, false)" },
	JSONMicros: func(data, key string) string {
		return "(extract(epoch FROM (" + data + "->>'" + key + "')::timestamptz) * 1000000)::bigint"
	},
	IsUnique:      func(err error) bool { return pgCode(err) == "23505" },
	IsForeignKey:  func(err error) bool { return pgCode(err) == "23503" },
	InsertChanges: insertChanges,
	LockStreams:   "SELECT pg_advisory_xact_lock(" + strconv.Itoa(streamsLockKey) + ")",
	Wake:          "SELECT pg_notify('" + Channel + "', '')",
	// Lock the cvlan only: locking the tenant too would serialise every cvlan of a tenant.
	LockCvlan: `SELECT c.id, c.version, c.data, c.ipv4_next, t.data FROM cvlans c
		JOIN tenants t ON t.id = c.tenant_id WHERE c.id = ? AND c.tenant_id = ? FOR UPDATE OF c`,
}

// insertChanges is one statement (one round trip, right before commit) that takes the feed's
// advisory transaction lock, inserts n change rows and queues the NOTIFY (delivered at commit).
// The lock is held until commit, so change ids become visible in id order: a reader never
// sees id N+1 while N is still uncommitted. The join with the lock's CTE makes PostgreSQL take
// the lock before the first row (and its identity value) is produced.
func insertChanges(n int) string {
	return "WITH feed_lock AS MATERIALIZED (SELECT pg_advisory_xact_lock(" + strconv.Itoa(feedLockKey) + ")), " +
		"ins AS (INSERT INTO change_events (tenant_id, resource_type, resource_id, op, version, time) " +
		"SELECT v.* FROM feed_lock, (VALUES " +
		strings.TrimSuffix(strings.Repeat("(?::text, ?::text, ?::text, ?::text, ?::bigint, ?::bigint), ", n), ", ") +
		") AS v (tenant_id, resource_type, resource_id, op, version, time)) " +
		"SELECT pg_notify('" + Channel + "', '')"
}

// Open migrates the database and connects the pool.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.DSN == "" {
		return nil, errors.New("postgres: no DSN")
	}
	if cfg.MigrationDSN == "" {
		cfg.MigrationDSN = cfg.DSN
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	poolCfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("postgres: parse DSN: %w", err)
	}
	if cfg.MaxConns > 0 {
		poolCfg.MaxConns = cfg.MaxConns
	}
	if err := migrate(ctx, cfg.MigrationDSN, poolCfg.ConnConfig.User, cfg.Logger); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	var bypass bool
	if err := pool.QueryRow(ctx, "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user").Scan(&bypass); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: check role: %w", err)
	}
	if bypass {
		cfg.Logger.WarnContext(ctx, "the database role bypasses row-level security; connect as a role without SUPERUSER and BYPASSRLS",
			"store", "postgres", "role", poolCfg.ConnConfig.User)
	}
	return &Store{pool: pool, connCfg: poolCfg.ConnConfig, log: cfg.Logger, now: cfg.Now}, nil
}

func migrate(ctx context.Context, dsn, appRole string, log *slog.Logger) error {
	connCfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return fmt.Errorf("postgres: parse migration DSN: %w", err)
	}
	db := stdlib.OpenDB(*connCfg)
	defer db.Close()
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("postgres: migrations: %w", err)
	}
	// A session advisory lock: two controllers starting at once migrate one after the other.
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return fmt.Errorf("postgres: migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithDisableGlobalRegistry(true), goose.WithSessionLocker(locker))
	if err != nil {
		return fmt.Errorf("postgres: migrations: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	for _, r := range res {
		log.InfoContext(ctx, "applied migration", "store", "postgres", "version", r.Source.Version, "duration", r.Duration)
	}
	if appRole != "" && appRole != connCfg.User {
		role := pgx.Identifier{appRole}.Sanitize()
		for _, q := range []string{
			"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO " + role,
			"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO " + role,
		} {
			if _, err := db.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("postgres: grant to %s: %w", appRole, err)
			}
		}
	}
	return nil
}

// safeID reports whether id has only the characters of a UUID (or is empty).
func safeID(id string) bool {
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && c != '-' {
			return false
		}
	}
	return len(id) <= 64
}

// Close implements store.Store.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	l := s.listener
	s.listener = nil
	s.mu.Unlock()
	if l != nil {
		l.stop()
	}
	s.pool.Close()
	return nil
}

// Tx implements store.Store.
func (s *Store) Tx(ctx context.Context, scope store.Scope, fn func(store.Tx) error) error {
	return s.run(ctx, scope, false, fn)
}

// ReadTx implements store.Store.
func (s *Store) ReadTx(ctx context.Context, scope store.Scope, fn func(store.Tx) error) error {
	return s.run(ctx, scope, true, fn)
}

func (s *Store) run(ctx context.Context, scope store.Scope, readOnly bool, fn func(store.Tx) error) error {
	if err := scope.Validate(); err != nil {
		return err
	}
	if !safeID(scope.TenantID) {
		return fmt.Errorf("%w: malformed tenant id %q", domain.ErrInvalid, scope.TenantID)
	}
	// BEGIN and the scope settings travel in one round trip (simple protocol, so the tenant id
	// is inlined: safeID admits only UUID characters).
	all := "off"
	if scope.All {
		all = "on"
	}
	mode := "READ WRITE"
	if readOnly {
		mode = "READ ONLY"
	}
	ptx, err := s.pool.BeginTx(ctx, pgx.TxOptions{BeginQuery: "BEGIN ISOLATION LEVEL READ COMMITTED " + mode +
		"; SELECT set_config('cloudvlan.tenant_id', '" + scope.TenantID + "', true), set_config('cloudvlan.all_tenants', '" + all + "', true)"})
	if err != nil {
		return fmt.Errorf("postgres: begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			// A fresh context: the caller's may be canceled, and the connection must go back
			// to the pool clean.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_ = ptx.Rollback(rctx)
			cancel()
		}
	}()
	tx := sqlcore.NewTx(querier{ptx}, &dialect, scope, readOnly, s.now)
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.FlushChanges(ctx); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	if err := ptx.Commit(ctx); err != nil {
		return fmt.Errorf("postgres: commit: %w", err)
	}
	committed = true
	if tx.HasChanges() {
		// Local watchers need not wait for the NOTIFY round trip.
		s.notifier.Notify()
	}
	return nil
}

// PruneChanges implements store.Store.
func (s *Store) PruneChanges(ctx context.Context, before time.Time) (int64, error) {
	return sqlcore.StorePruneChanges(ctx, s, before)
}

// LatestChangeID implements store.Store.
func (s *Store) LatestChangeID(ctx context.Context) (int64, error) {
	return sqlcore.StoreLatestChangeID(ctx, s)
}

// ChangesSince implements store.Store.
func (s *Store) ChangesSince(ctx context.Context, afterID int64, limit int) ([]domain.ChangeEvent, error) {
	return sqlcore.StoreChangesSince(ctx, s, afterID, limit)
}

// Watch implements store.Store: it wakes on commits of any process sharing the database
// (LISTEN on a dedicated connection, started by the first Watch and kept until Close). It
// returns once the listener is listening, so a commit after Watch returns is never missed.
func (s *Store) Watch(ctx context.Context) (<-chan struct{}, error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil, errors.New("postgres: store closed")
	}
	if s.listener == nil {
		s.listener = startListener(s.connCfg, &s.notifier, s.log)
	}
	l := s.listener
	s.mu.Unlock()
	ch := s.notifier.Subscribe(ctx)
	select {
	case <-l.ready:
		return ch, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// querier adapts pgx.Tx to sqlcore.Querier.
type querier struct{ tx pgx.Tx }

func (q querier) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	tag, err := q.tx.Exec(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func (q querier) Query(ctx context.Context, query string, args ...any) (sqlcore.Rows, error) {
	return q.tx.Query(ctx, query, args...)
}
