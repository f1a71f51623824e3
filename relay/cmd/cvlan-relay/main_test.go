package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/cloudvlan/cloudvlan/relay/client"
	"github.com/cloudvlan/cloudvlan/relay/internal/testpki"
	"github.com/cloudvlan/cloudvlan/relay/stun"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func writePEM(t *testing.T, dir string, cert tls.Certificate, root *x509.Certificate) (certFile, keyFile, caFile string) {
	t.Helper()
	var chain []byte
	for _, der := range cert.Certificate {
		chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile = filepath.Join(dir, "relay.crt"), filepath.Join(dir, "relay.key"), filepath.Join(dir, "ca.pem")
	for f, b := range map[string][]byte{
		certFile: chain,
		keyFile:  pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		caFile:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw}),
	} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, caFile
}

func TestRunServesEverything(t *testing.T) {
	ca, err := testpki.New("cloudvlan.internal")
	if err != nil {
		t.Fatal(err)
	}
	rc, err := ca.Relay("", "relay-1")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile := writePEM(t, t.TempDir(), rc, ca.Root())

	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan [3]net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"--listen", "127.0.0.1:0", "--stun-listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--cert", certFile, "--key", keyFile, "--ca", caFile, "--region", "test", "--log-level", "warn",
		}, io.Discard, &Hooks{Ready: func(r, s, a net.Addr) { ready <- [3]net.Addr{r, s, a} }})
	}()
	var addrs [3]net.Addr
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("run exited: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not ready")
	}
	relayAddr, stunAddr, adminAddr := addrs[0], addrs[1], addrs[2]

	// A node connects and pings.
	var key client.Key
	key[0] = 42
	nc, err := ca.Node("t1", "n1", key)
	if err != nil {
		t.Fatal(err)
	}
	tctx, tcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer tcancel()
	c, err := client.Dial(tctx, "https://"+relayAddr.String()+"/relay", ca.ClientTLS(nc))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(tctx); err != nil {
		t.Fatal(err)
	}

	// STUN.
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	mapped, err := stun.Query(tctx, pc, stunAddr.(*net.UDPAddr).AddrPort())
	if err != nil || mapped.Port() != uint16(pc.LocalAddr().(*net.UDPAddr).Port) {
		t.Fatalf("stun: %v %v", mapped, err)
	}

	// Admin: HTTP health, metrics, gRPC health.
	get := func(path string) string {
		resp, err := http.Get("http://" + adminAddr.String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		return string(b)
	}
	if got := get("/healthz"); got != "ok\n" {
		t.Fatalf("healthz %q", got)
	}
	if m := get("/metrics"); !strings.Contains(m, "cvlan_relay_clients 1") || !strings.Contains(m, `cvlan_relay_dropped_packets_total{reason="queue_full"}`) {
		t.Fatalf("metrics missing relay series:\n%s", m)
	}
	gc, err := grpc.NewClient("passthrough:///"+adminAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	hr, err := healthpb.NewHealthClient(gc).Check(tctx, &healthpb.HealthCheckRequest{Service: "cloudvlan.relay"})
	if err != nil || hr.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("grpc health: %v %v", hr, err)
	}
	_ = gc.Close()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not stop")
	}
	_ = c.Close()
	http.DefaultClient.CloseIdleConnections()
}

func TestFlagErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing files", []string{"--listen", "127.0.0.1:0"}, "required"},
		{"bad flag", []string{"--nope"}, "not defined"},
		{"stray argument", []string{"--cert", "a", "--key", "b", "--ca", "c", "extra"}, "unexpected"},
		{"missing cert file", []string{"--cert", "/nonexistent", "--key", "/nonexistent", "--ca", "/nonexistent"}, "no such file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := run(context.Background(), tc.args, io.Discard, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestRejectsNodeCertificateAsRelayCertificate(t *testing.T) {
	ca, err := testpki.New("cloudvlan.internal")
	if err != nil {
		t.Fatal(err)
	}
	nc, err := ca.Node("t1", "n1", [32]byte{1})
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile := writePEM(t, t.TempDir(), nc, ca.Root())
	err = run(context.Background(), []string{"--cert", certFile, "--key", keyFile, "--ca", caFile}, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "not a relay") {
		t.Fatalf("err = %v", err)
	}
}
