package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandAndFlagErrors(t *testing.T) {
	good := []string{"up", "--uplink-interface", "GigabitEthernet0/8/0", "--public-address", "198.51.100.7"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage: cvlan-vrouter up"},
		{"unknown command", []string{"down"}, `unknown command "down"`},
		{"unknown flag", []string{"up", "--nope"}, "not defined"},
		{"stray argument", append(good, "extra"), "unexpected arguments"},
		{"no uplink", []string{"up", "--public-address", "198.51.100.7"}, "--uplink-interface is required"},
		{"no public address", []string{"up", "--uplink-interface", "x"}, "--public-address is required"},
		{"public address not an IP", append(good, "--public-address", "vr.example.com"), "not an IP address"},
		{"report interval too short", append(good, "--report-interval", "10ms"), "at least 1s"},
		{"bad controller URL", append(good, "--controller", "https://"), "no host"},
		{"token without prefix", append(good, "--token", "secret"), "starts with cvj_"},
		{"bad log level", append(good, "--log-level", "loud"), "--log-level"},
		{"no VPP", append(good, "--vpp-api-socket", "/nonexistent/api.sock"), "no VPP API socket"},
		{"status not enrolled", []string{"status", "--state-dir", "/nonexistent"}, "not enrolled"},
		{"status stray argument", []string{"status", "x"}, "unexpected arguments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard, io.Discard, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

// Without saved state and without a token `up` says what it needs before it talks to anyone.
func TestUpNeedsTokenOnFirstStart(t *testing.T) {
	h := &hooks{dataplane: nopConnect}
	err := run(context.Background(), []string{"up", "--uplink-interface", "x", "--public-address", "198.51.100.7",
		"--state-dir", filepath.Join(t.TempDir(), "s"), "--controller", "https://127.0.0.1:1", "--admin-addr", ""}, io.Discard, io.Discard, h)
	if err == nil || !strings.Contains(err.Error(), "join token (--token) is needed") {
		t.Fatalf("err = %v", err)
	}
}
