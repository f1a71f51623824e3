package proctest

import (
	"errors"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestProc(t *testing.T) {
	tests := []struct {
		name   string
		script string
		end    func(*Proc)
	}{
		{"stop", `echo "ready port=42"; trap 'echo bye; exit 0' TERM; while :; do sleep 0.05; done`, (*Proc).Stop},
		{"kill", `echo "ready port=42"; trap '' TERM; while :; do sleep 0.05; done`, (*Proc).Kill},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Start(t, tt.name, "sh", "-c", tt.script)
			if m := p.WaitFor(t, regexp.MustCompile(`ready port=(\d+)`), 10*time.Second); m[1] != "42" {
				t.Fatalf("submatches %q", m)
			}
			start := time.Now()
			tt.end(p)
			tt.end(p) // idempotent
			if d := time.Since(start); d > 5*time.Second {
				t.Fatalf("%s took %v", tt.name, d)
			}
			if tt.name == "stop" && !strings.Contains(p.Output(), "bye") {
				t.Fatalf("SIGTERM not delivered: %q", p.Output())
			}
		})
	}
}

func TestEventually(t *testing.T) {
	n := 0
	if err := Eventually(5*time.Second, func() error {
		if n++; n < 3 {
			return errors.New("not yet")
		}
		return nil
	}); err != nil || n != 3 {
		t.Fatalf("err %v after %d calls", err, n)
	}
	if err := Eventually(300*time.Millisecond, func() error { return errors.New("never") }); err == nil || err.Error() != "never" {
		t.Fatalf("err %v, want the last error", err)
	}
}

func TestBufferConcurrent(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				_, _ = b.Write([]byte("x"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if got := len(b.String()); got != 800 {
		t.Fatalf("%d bytes, want 800", got)
	}
}
