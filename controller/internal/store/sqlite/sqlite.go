// Package sqlite is the embedded store: a SQLite database file (modernc.org/sqlite, pure Go) in
// the controller's data directory, in WAL mode with one writer connection and a small pool of
// read-only connections. Migrations are embedded and run by Open.
package sqlite

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"time"

	"github.com/pressly/goose/v3"
	"modernc.org/sqlite"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/internal/sqlcore"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Config configures Open.
type Config struct {
	// Path is the database file, created if missing (e.g. <data dir>/cloudvlan.db).
	Path string
	// Readers is the number of read-only connections (default 4).
	Readers int
	// BusyTimeout is how long a writer waits for another process's lock (default 10s).
	BusyTimeout time.Duration
	// Logger receives migration messages (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now); tests may fix it.
	Now func() time.Time
}

// Store is the SQLite implementation of store.Store.
type Store struct {
	w, r     *sql.DB
	now      func() time.Time
	notifier sqlcore.Notifier
}

var _ store.Store = (*Store)(nil)

// SQLite extended result codes of constraint violations.
const (
	codeConstraintForeignKey = 787
	codeConstraintPrimaryKey = 1555
	codeConstraintUnique     = 2067
)

func sqliteCode(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code()
	}
	return 0
}

var dialect = sqlcore.Dialect{
	Name: "sqlite",
	SetJSONText: func(data, key, val string) string {
		return "json_set(" + data + ", '$." + key + "', " + val + ")"
	},
	ArrayHas: func(data, key, val string) string {
		return "EXISTS (SELECT 1 FROM json_each(" + data + ", '$." + key + "') j WHERE j.value = " + val + ")"
	},
	ArrayHasField: func(data, key, field, val string) string {
		return "EXISTS (SELECT 1 FROM json_each(" + data + ", '$." + key + "') j WHERE json_extract(j.value, '$." + field + "') = " + val + ")"
	},
	JSONText: func(data, key string) string { return "json_extract(" + data + ", '$." + key + "')" },
	JSONInt:  func(data, key string) string { return "coalesce(json_extract(" + data + ", '$." + key + "'), 0)" },
	JSONBool: func(data, key string) string { return "coalesce(json_extract(" + data + ", '$." + key + "'), 0) = 1" },
	JSONMicros: func(data, key string) string {
		return "CAST(unixepoch(json_extract(" + data + ", '$." + key + "'), 'subsec') * 1000000 AS INTEGER)"
	},
	IsUnique: func(err error) bool {
		c := sqliteCode(err)
		return c == codeConstraintUnique || c == codeConstraintPrimaryKey
	},
	IsForeignKey: func(err error) bool { return sqliteCode(err) == codeConstraintForeignKey },
	LockCvlan: `SELECT c.id, c.version, c.data, c.ipv4_next, t.data FROM cvlans c
		JOIN tenants t ON t.id = c.tenant_id WHERE c.id = ? AND c.tenant_id = ?`,
}

func dsn(path string, busy time.Duration, readOnly bool) string {
	q := url.Values{}
	q.Add("_pragma", fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()))
	q.Add("_pragma", "foreign_keys(1)")
	q.Add("_pragma", "synchronous(NORMAL)")
	if readOnly {
		q.Add("_pragma", "query_only(1)")
	} else {
		q.Add("_pragma", "journal_mode(WAL)")
		// Take the write lock at BEGIN: a deferred transaction that upgrades later can fail
		// with SQLITE_BUSY without waiting when another process writes.
		q.Set("_txlock", "immediate")
	}
	return "file:" + path + "?" + q.Encode()
}

// Open opens (creating if needed) the database at cfg.Path and migrates it to the latest schema.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Path == "" {
		return nil, errors.New("sqlite: no database path")
	}
	if cfg.Readers <= 0 {
		cfg.Readers = 4
	}
	if cfg.BusyTimeout <= 0 {
		cfg.BusyTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	// The database holds credentials of vrouters and TURN servers: owner-only access. SQLite
	// gives its -wal and -shm files the database file's permissions.
	f, err := os.OpenFile(cfg.Path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("sqlite: create %s: %w", cfg.Path, err)
	}
	f.Close()
	w, err := sql.Open("sqlite", dsn(cfg.Path, cfg.BusyTimeout, false))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", cfg.Path, err)
	}
	// One writer: SQLite serialises writers anyway; queueing them in the pool avoids busy waits.
	w.SetMaxOpenConns(1)
	w.SetConnMaxIdleTime(0)
	if err := migrate(ctx, w, cfg.Logger); err != nil {
		w.Close()
		return nil, err
	}
	r, err := sql.Open("sqlite", dsn(cfg.Path, cfg.BusyTimeout, true))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s for reading: %w", cfg.Path, err)
	}
	r.SetMaxOpenConns(cfg.Readers)
	return &Store{w: w, r: r, now: cfg.Now}, nil
}

func migrate(ctx context.Context, db *sql.DB, log *slog.Logger) error {
	fsys, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return fmt.Errorf("sqlite: migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectSQLite3, db, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("sqlite: migrations: %w", err)
	}
	res, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	for _, r := range res {
		log.InfoContext(ctx, "applied migration", "store", "sqlite", "version", r.Source.Version, "duration", r.Duration)
	}
	return nil
}

// Close implements store.Store.
func (s *Store) Close() error {
	return errors.Join(s.r.Close(), s.w.Close())
}

// Tx implements store.Store.
func (s *Store) Tx(ctx context.Context, scope store.Scope, fn func(store.Tx) error) error {
	return s.run(ctx, s.w, scope, false, fn)
}

// ReadTx implements store.Store.
func (s *Store) ReadTx(ctx context.Context, scope store.Scope, fn func(store.Tx) error) error {
	return s.run(ctx, s.r, scope, true, fn)
}

func (s *Store) run(ctx context.Context, db *sql.DB, scope store.Scope, readOnly bool, fn func(store.Tx) error) error {
	if err := scope.Validate(); err != nil {
		return err
	}
	stx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sqlite: begin: %w", err)
	}
	committed := false
	defer func() {
		if !committed {
			_ = stx.Rollback()
		}
	}()
	tx := sqlcore.NewTx(querier{stx}, &dialect, scope, readOnly, s.now)
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.FlushChanges(ctx); err != nil {
		return fmt.Errorf("sqlite: %w", err)
	}
	if err := stx.Commit(); err != nil {
		return fmt.Errorf("sqlite: commit: %w", err)
	}
	committed = true
	if tx.HasChanges() {
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

// Watch implements store.Store. Only this process writes through this Store's notifier; another
// process writing the same file is not seen until the next local change (SQLite is the
// single-replica store).
func (s *Store) Watch(ctx context.Context) (<-chan struct{}, error) {
	return s.notifier.Subscribe(ctx), nil
}

// querier adapts *sql.Tx to sqlcore.Querier.
type querier struct{ tx *sql.Tx }

func (q querier) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := q.tx.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (q querier) Query(ctx context.Context, query string, args ...any) (sqlcore.Rows, error) {
	rows, err := q.tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }
