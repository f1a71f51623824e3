// Package proctest runs binaries for multi-process tests (the controller's system tests, the
// vrouter's end-to-end test): a process whose output is kept and searched, stopped at the end of
// the test and shown when it failed, and the API client those tests drive the controller with.
// It is exported so that the agent, relay and vrouter modules can use it; only tests import it.
package proctest

import (
	"bufio"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"connectrpc.com/connect"
)

// Buffer collects a process's or a goroutine's output while the test reads it.
type Buffer struct {
	mu sync.Mutex
	sb strings.Builder
}

// Write implements io.Writer.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sb.String()
}

// Proc is a started binary whose combined output is kept.
type Proc struct {
	name string
	cmd  *exec.Cmd
	out  *Buffer
	// done holds Wait's result once the process exited (put back by every reader).
	done chan error
	// ended is set by Stop and Kill (test goroutine only), so cleanup does not signal twice.
	ended bool
}

// StopTimeout is how long Stop waits after SIGTERM before it kills.
const StopTimeout = 15 * time.Second

// Start runs bin until the test ends (SIGTERM, then kill) and logs its output if the test failed.
func Start(t testing.TB, name, bin string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &Proc{name: name, cmd: cmd, out: &Buffer{}, done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			p.out.Write([]byte(sc.Text() + "\n"))
		}
	}()
	go func() { p.done <- cmd.Wait(); pw.Close() }()
	t.Cleanup(func() {
		p.Stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// Output returns the process's combined output so far.
func (p *Proc) Output() string { return p.out.String() }

// Stop ends the process with SIGTERM (kill after StopTimeout) and waits for it; it is idempotent.
func (p *Proc) Stop() {
	if p.ended {
		return
	}
	p.ended = true
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
	case <-time.After(StopTimeout):
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
	}
}

// Kill ends the process with SIGKILL, the way a crash would, and waits for it.
func (p *Proc) Kill() {
	if p.ended {
		return
	}
	p.ended = true
	_ = p.cmd.Process.Kill()
	err := <-p.done
	p.done <- err
}

// WaitFor polls the output for re until timeout and returns its submatches; it fails the test
// when the process exits or the time runs out first.
func (p *Proc) WaitFor(t testing.TB, re *regexp.Regexp, timeout time.Duration) []string {
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

// Eventually retries f every 200 ms until it returns nil or timeout passes; it returns the last
// error.
func Eventually(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// APIClient is an HTTP/2 client for a controller's API port on loopback. It does not verify the
// API certificate: these tests are not about it (the node port is verified with the root CA).
func APIClient() *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true,
	}}
}

// Bearer adds the API key to every unary call.
func Bearer(key string) connect.Option {
	return connect.WithInterceptors(connect.UnaryInterceptorFunc(func(next connect.UnaryFunc) connect.UnaryFunc {
		return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
			req.Header().Set("Authorization", "Bearer "+key)
			return next(ctx, req)
		}
	}))
}
