package server

import (
	"testing"
	"time"
)

func TestTokenBucket(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tests := []struct {
		name  string
		at    time.Duration
		n     int
		allow bool
	}{
		{"burst available at start", 0, 1000, true},
		{"burst spent", 0, 1, false},
		{"refills at rate", 100 * time.Millisecond, 100, true},
		{"not more than refilled", 100 * time.Millisecond, 1, false},
		{"clock going backwards adds nothing", 50 * time.Millisecond, 1, false},
		{"capped at burst", time.Hour, 1000, true},
		{"cap means no more than burst", time.Hour, 1, false},
	}
	b := newTokenBucket(1000, 1000) // 1000 B/s, 1000 B burst
	for _, tc := range tests {
		if got := b.allow(t0.Add(tc.at), tc.n); got != tc.allow {
			t.Fatalf("%s: allow = %v", tc.name, got)
		}
	}
}
