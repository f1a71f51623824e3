// Package pgtest starts a throw-away PostgreSQL cluster for tests: initdb and pg_ctl on a
// temporary directory, listening on a free loopback port (and a unix socket in that directory),
// with a non-superuser owner role for migrations and a non-superuser application role, so that
// row-level security applies to the application as it does in production.
//
// One cluster per test package (see Main); a fresh database per test (Cluster.NewDatabase).
// Without PostgreSQL binaries tests skip, unless CI=true, where they fail: CI must not silently
// skip PostgreSQL.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// Role names created in every cluster.
const (
	// OwnerRole owns the test databases and runs migrations (not a superuser).
	OwnerRole = "cvlan_owner"
	// AppRole is what the application connects as: no superuser, no BYPASSRLS.
	AppRole = "cvlan_app"
	// superRole is the bootstrap superuser initdb creates.
	superRole = "postgres"
)

// ErrNoPostgres reports that the PostgreSQL server binaries were not found.
var ErrNoPostgres = errors.New("pgtest: PostgreSQL server binaries (initdb, pg_ctl) not found in PATH or /usr/lib/postgresql/*/bin")

// Cluster is a running throw-away PostgreSQL cluster.
type Cluster struct {
	startErr error
	binDir   string
	dir      string
	dataDir  string
	port     int
	cred     *syscall.Credential
	seq      atomic.Int64
}

// DSNs are connection strings for one test database.
type DSNs struct {
	// Owner connects as OwnerRole (migrations).
	Owner string
	// App connects as AppRole (the application; row-level security applies).
	App string
	// Super connects as the cluster's superuser (test setup only: it bypasses RLS).
	Super string
	// Database is the database name.
	Database string
}

// Main starts a cluster, runs the package's tests and stops it; use it from TestMain:
//
//	var cluster *pgtest.Cluster
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &cluster)) }
//
// When the cluster cannot start, *c records why and NewDatabase skips (or fails under CI=true).
func Main(m *testing.M, c **Cluster) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cl, err := Start(ctx)
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		*c = &Cluster{startErr: err}
		return m.Run()
	}
	*c = cl
	code := m.Run()
	if err := cl.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: stop: %v\n", err)
	}
	return code
}

// FindBinDir returns the directory holding initdb and pg_ctl: from PATH, else the newest
// /usr/lib/postgresql/<version>/bin (Debian keeps them off PATH).
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("initdb"); err == nil {
		if _, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
	}
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	sort.Slice(matches, func(i, j int) bool { return version(matches[i]) > version(matches[j]) })
	for _, m := range matches {
		dir := filepath.Dir(m)
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	return "", ErrNoPostgres
}

func version(initdb string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return v
}

// Start creates and starts a cluster. Call Stop when done.
func Start(ctx context.Context) (*Cluster, error) {
	bin, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{binDir: bin, dir: dir, dataDir: filepath.Join(dir, "data")}
	ok := false
	defer func() {
		if !ok {
			_ = c.Stop()
		}
	}()
	// initdb refuses to run as root: run the server as an unprivileged OS user then.
	if os.Geteuid() == 0 {
		cred, err := unprivileged()
		if err != nil {
			return nil, err
		}
		c.cred = cred
		if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("pgtest: chown %s: %w", dir, err)
		}
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if out, err := c.run(ctx, "initdb", "-D", c.dataDir, "-U", superRole, "--auth=trust", "-E", "UTF8",
		"--no-locale", "--no-sync"); err != nil {
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	if c.port, err = freePort(); err != nil {
		return nil, err
	}
	opts := strings.Join([]string{
		"-p", strconv.Itoa(c.port), "-k", dir, "-c", "listen_addresses=127.0.0.1",
		// Durability is irrelevant for a throw-away cluster; speed is not.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=128MB",
	}, " ")
	if out, err := c.run(ctx, "pg_ctl", "-D", c.dataDir, "-l", filepath.Join(dir, "server.log"), "-w",
		"-t", "60", "-o", opts, "start"); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "server.log"))
		return nil, fmt.Errorf("pgtest: pg_ctl start: %w\n%s\n%s", err, out, log)
	}
	conn, err := pgx.Connect(ctx, c.dsn(superRole, "postgres"))
	if err != nil {
		return nil, fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	for _, q := range []string{
		"CREATE ROLE " + OwnerRole + " LOGIN NOSUPERUSER NOBYPASSRLS",
		"CREATE ROLE " + AppRole + " LOGIN NOSUPERUSER NOBYPASSRLS",
	} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("pgtest: %s: %w", q, err)
		}
	}
	ok = true
	return c, nil
}

// unprivileged returns the credentials of the postgres OS user, or nobody.
func unprivileged() (*syscall.Credential, error) {
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, nil
	}
	return nil, errors.New("pgtest: running as root and neither a postgres nor a nobody user exists")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) run(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(c.binDir, name), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd.CombinedOutput()
}

func (c *Cluster) dsn(role, db string) string {
	return fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", role, c.port, db)
}

// Stop stops the server and removes its directory.
func (c *Cluster) Stop() error {
	if c == nil || c.dir == "" {
		return nil
	}
	var err error
	if _, statErr := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); statErr == nil {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, stopErr := c.run(ctx, "pg_ctl", "-D", c.dataDir, "-m", "immediate", "-w", "stop")
		cancel()
		if stopErr != nil {
			err = fmt.Errorf("pg_ctl stop: %w: %s", stopErr, out)
		}
	}
	return errors.Join(err, os.RemoveAll(c.dir))
}

// Port returns the TCP port the cluster listens on (127.0.0.1).
func (c *Cluster) Port() int { return c.port }

// NewDatabase creates an empty database owned by OwnerRole and drops it when t ends. Without a
// running cluster it skips t (fails it when CI=true).
func (c *Cluster) NewDatabase(t testing.TB) DSNs {
	t.Helper()
	if c == nil || c.startErr != nil {
		reason := "pgtest: no cluster (TestMain must call pgtest.Main)"
		if c != nil {
			reason = c.startErr.Error()
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("PostgreSQL is required in CI: %s", reason)
		}
		t.Skipf("PostgreSQL unavailable: %s", reason)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), c.seq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, c.dsn(superRole, "postgres"))
	if err != nil {
		t.Fatalf("pgtest: connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name+" OWNER "+OwnerRole); err != nil {
		t.Fatalf("pgtest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.dsn(superRole, "postgres"))
		if err != nil {
			t.Errorf("pgtest: connect: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("pgtest: drop database: %v", err)
		}
	})
	return DSNs{
		Owner:    c.dsn(OwnerRole, name),
		App:      c.dsn(AppRole, name),
		Super:    c.dsn(superRole, name),
		Database: name,
	}
}
