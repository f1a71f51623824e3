// Package system is a multi-process system test: the built cvlan-controller, cvlan-relay and
// cvlan-agent binaries (make build) on loopback, driven through the real API.
package system

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// builtBinary returns bin/<name> as built by `make build`, or fails with what to run.
func builtBinary(t *testing.T, name string) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{filepath.Join(os.Getenv("CLOUDVLAN_BIN"), name), filepath.Join(root, "bin", name)} {
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	t.Fatalf("%s is not built: run `make build` first (it writes bin/%s)", name, name)
	return ""
}

type syncBuffer struct {
	mu sync.Mutex
	sb strings.Builder
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

// proc is a started binary whose combined output is kept.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
	// ended is set by stop and kill (test goroutine only), so cleanup does not signal twice.
	ended bool
}

// start runs a binary until the test ends (SIGTERM, then kill) and logs its output if the test failed.
func start(t *testing.T, name, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{name: name, cmd: cmd, out: &syncBuffer{}, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.out.Write([]byte(sc.Text() + "\n"))
		}
	}()
	go func() { p.done <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// stop ends the process with SIGTERM (kill after 15 s); it is idempotent.
func (p *proc) stop() {
	if p.ended {
		return
	}
	p.ended = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(15 * time.Second):
		_ = p.cmd.Process.Kill()
	}
}

// kill ends the process with SIGKILL, the way a crash would.
func (p *proc) kill() {
	if p.ended {
		return
	}
	p.ended = true
	_ = p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err
}

// waitFor polls the output for re until timeout.
func (p *proc) waitFor(t *testing.T, re *regexp.Regexp, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if m := re.FindStringSubmatch(p.out.String()); m != nil {
			return m
		}
		select {
		case err := <-p.done:
			p.done <- err
			if m := re.FindStringSubmatch(p.out.String()); m != nil {
				return m
			}
			t.Fatalf("%s exited (%v) before printing %q:\n%s", p.name, err, re, p.out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s did not print %q within %v:\n%s", p.name, re, timeout, p.out.String())
	return nil
}

// freePort returns a loopback TCP port that was free a moment ago (for addresses that must be
// known before the process starts, like the relay's, which goes into its certificate).
func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// apiClient is an HTTP client for the API port. The test does not verify the API certificate:
// the API port's certificate is not what this test is about, and it is loopback only.
func apiClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true,
	}}
}

// bearer adds the API key to every call.
func bearer(key string) connect.Option {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+key)
			return next(ctx, req)
		}
	}))
}

// eventually retries f until it returns nil or timeout passes; it returns the last error.
func eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}
