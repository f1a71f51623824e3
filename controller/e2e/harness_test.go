// Package e2e drives the built cvlan-controller binary with real clients (grpcurl, gRPC, Connect).
package e2e

import (
	"bufio"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
)

// repoRoot is the repository root, two levels above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// binary returns the path of a built binary: bin/<name> (make build) or bin/tools/<name> (make tools).
func binary(t *testing.T, name string) string {
	t.Helper()
	for _, p := range []string{
		filepath.Join(os.Getenv("CLOUDVLAN_BIN"), name),
		filepath.Join(repoRoot(t), "bin", name),
		filepath.Join(repoRoot(t), "bin", "tools", name),
	} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	t.Fatalf("%s not built: run `make build tools` first (make test does)", name)
	return ""
}

// controllerProc is a running cvlan-controller.
type controllerProc struct {
	cmd   *exec.Cmd
	mu    sync.Mutex        // guards addrs
	addrs map[string]string // port name -> bound address
	log   *proctest.Buffer
	done  chan error
}

var listeningRE = regexp.MustCompile(`msg=listening port=(\w+) addr=(\S+)`)

// startController starts the built controller on free loopback ports with a fresh data dir and waits
// until every port listens.
func startController(t *testing.T, extraArgs ...string) *controllerProc {
	t.Helper()
	args := append([]string{
		"--data-dir", t.TempDir(),
		"--api-addr", "127.0.0.1:0",
		"--node-addr", "127.0.0.1:0",
		"--metrics-addr", "127.0.0.1:0",
	}, extraArgs...)
	cmd := exec.Command(binary(t, "cvlan-controller"), args...)
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.Stdout = pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start controller: %v", err)
	}
	p := &controllerProc{cmd: cmd, addrs: map[string]string{}, log: &proctest.Buffer{}, done: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		closed := false
		for sc.Scan() {
			line := sc.Text()
			p.log.Write([]byte(line + "\n"))
			if m := listeningRE.FindStringSubmatch(line); m != nil && !closed {
				p.mu.Lock()
				p.addrs[m[1]] = m[2]
				n := len(p.addrs)
				p.mu.Unlock()
				if n == 3 {
					close(ready)
					closed = true
				}
			}
		}
	}()
	go func() { p.done <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("controller log:\n%s", p.log.String())
		}
	})
	select {
	case <-ready:
	case err := <-p.done:
		t.Fatalf("controller exited before listening: %v\n%s", err, p.log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("controller did not listen within 60s\n%s", p.log.String())
	}
	return p
}

// addr returns the bound address of a port.
func (p *controllerProc) addr(name string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.addrs[name]
}

// run runs a command with a timeout and returns its combined output.
func run(t *testing.T, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}
