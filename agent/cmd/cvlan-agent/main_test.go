package main

import (
	"bytes"
	"context"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/agent/internal/agent"
	"github.com/cloudvlan/cloudvlan/agent/internal/testctl"
	"github.com/cloudvlan/cloudvlan/agent/internal/testpki"
)

// TestMain lets the test binary run as cvlan-agent itself, so `up` runs as a real separate process that
// `down` can signal.
func TestMain(m *testing.M) {
	if os.Getenv("CVLAN_AGENT_RUN_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	if h := os.Getenv("CVLAN_TEST_HELPER"); h != "" {
		os.Exit(helper(h, os.Getenv("CVLAN_TEST_ARG")))
	}
	os.Exit(m.Run())
}

func TestControllerTarget(t *testing.T) {
	for in, want := range map[string]string{
		"https://ctl.example.com":      "ctl.example.com:8444",
		"https://ctl.example.com:9000": "ctl.example.com:9000",
		"ctl.example.com":              "ctl.example.com:8444",
		"127.0.0.1:8444":               "127.0.0.1:8444",
		"https://[::1]:8444":           "[::1]:8444",
	} {
		if got, err := controllerTarget(in); err != nil || got != want {
			t.Errorf("controllerTarget(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestUpNeedsTokenOnFirstStart(t *testing.T) {
	var out, errb bytes.Buffer
	err := run(t.Context(), []string{"up", "--state-dir", t.TempDir(), "--netstack", "--controller", "127.0.0.1:1", "--admin-addr", "127.0.0.1:0"}, &out, &errb)
	if err == nil || !strings.Contains(err.Error(), "join token") {
		t.Fatalf("err = %v, want a join token error", err)
	}
	if err := run(t.Context(), []string{"status", "--state-dir", t.TempDir()}, &out, &errb); err == nil {
		t.Fatal("status without a running agent succeeded")
	}
}

// TestUpStatusDown runs two agents as processes in netstack mode against a test controller and relay,
// reads `status` until the peer shows a handshake, then stops one with `down`.
func TestUpStatusDown(t *testing.T) {
	ca, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	ctl, err := testctl.NewController(ca, "127.0.0.1:0", t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ctl.Stop)
	// A keepalive makes the peers handshake without any traffic of the test's own.
	ctl.SetKeepalive(10 * time.Second)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Root.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	start := func(name string) (string, *exec.Cmd, chan error) {
		dir := filepath.Join(t.TempDir(), name)
		cmd := exec.Command(os.Args[0], "up", "--controller", "https://"+ctl.Addr(), "--token", testctl.Token, "--controller-ca", caFile,
			"--state-dir", dir, "--netstack", "--name", name, "--listen-ip", "127.0.0.1", "--admin-addr", "127.0.0.1:0", "--socks5", "127.0.0.1:0")
		cmd.Env = append(os.Environ(), "CVLAN_AGENT_RUN_MAIN=1")
		var logs bytes.Buffer
		cmd.Stderr = &logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		exited := make(chan struct{})
		go func() { done <- cmd.Wait(); close(exited) }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
			if t.Failed() {
				t.Logf("%s logs:\n%s", name, logs.String())
			}
		})
		return dir, cmd, done
	}
	dirA, _, doneA := start("alpha")
	dirB, _, _ := start("bravo")
	_ = dirB

	deadline := time.Now().Add(60 * time.Second)
	var out bytes.Buffer
	for {
		out.Reset()
		var errb bytes.Buffer
		err := run(t.Context(), []string{"status", "--state-dir", dirA}, &out, &errb)
		if err == nil && strings.Contains(out.String(), "bravo."+testctl.Domain) && strings.Contains(out.String(), "direct 127.0.0.1:") && !strings.Contains(out.String(), "never") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never showed a direct peer with a handshake: %v\n%s", err, out.String())
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("status:\n%s", out.String())

	var so, se bytes.Buffer
	if err := run(context.Background(), []string{"down", "--state-dir", dirA}, &so, &se); err != nil {
		t.Fatalf("down: %v %s", err, se.String())
	}
	select {
	case err := <-doneA:
		if err != nil {
			t.Fatalf("agent exited with %v after down", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("agent still running after down")
	}
	if _, err := os.Stat(filepath.Join(dirA, agent.PIDFile)); !os.IsNotExist(err) {
		t.Fatalf("pid file still there: %v", err)
	}
}
