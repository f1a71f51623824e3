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
	server   *exec.Cmd
	exited   chan struct{}
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
	if err := c.startServer(ctx); err != nil {
		return nil, err
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

// startServer runs postgres as a child process (not daemonised by pg_ctl) that receives SIGQUIT
// (immediate shutdown) when the test process dies, so a killed test run leaves no server behind.
func (c *Cluster) startServer(ctx context.Context) error {
	logf, err := os.Create(filepath.Join(c.dir, "server.log"))
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(filepath.Join(c.binDir, "postgres"), "-D", c.dataDir,
		"-p", strconv.Itoa(c.port), "-k", c.dir, "-c", "listen_addresses=127.0.0.1",
		// Durability is irrelevant for a throw-away cluster; speed is not.
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=300", "-c", "shared_buffers=128MB")
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGQUIT, Credential: c.cred}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: start postgres: %w", err)
	}
	c.server, c.exited = cmd, make(chan struct{})
	go func() { _ = cmd.Wait(); close(c.exited) }()
	// Wait until it accepts connections.
	deadline := time.Now().Add(60 * time.Second)
	for {
		conn, err := pgx.Connect(ctx, c.dsn(superRole, "postgres"))
		if err == nil {
			conn.Close(ctx)
			return nil
		}
		select {
		case <-c.exited:
			log, _ := os.ReadFile(filepath.Join(c.dir, "server.log"))
			return fmt.Errorf("pgtest: postgres exited during start-up:\n%s", log)
		case <-ctx.Done():
			return fmt.Errorf("pgtest: waiting for postgres: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: postgres not ready after 60s: %w", err)
		}
	}
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
	if c.server != nil {
		// SIGQUIT: immediate shutdown; the data is thrown away anyway.
		_ = c.server.Process.Signal(syscall.SIGQUIT)
		select {
		case <-c.exited:
		case <-time.After(time.Minute):
			_ = c.server.Process.Kill()
			<-c.exited
			err = errors.New("postgres did not stop within a minute; killed")
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
