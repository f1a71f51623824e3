package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/jose"
	"go.step.sm/crypto/keyutil"
	"go.step.sm/crypto/pemutil"
	"go.step.sm/crypto/x509util"

	"github.com/cloudvlan/cloudvlan/controller/identity"

	"github.com/cloudvlan/cloudvlan/controller/proctest"
)

const stepCAModule = "github.com/smallstep/certificates"

// stepCAVersion is the step-ca version this module requires, so the test
// talks to the same release the controller links against.
func stepCAVersion(t *testing.T, goBin string) string {
	t.Helper()
	out, err := exec.Command(goBin, "list", "-m", "-f", "{{.Version}}", stepCAModule).Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", stepCAModule, err)
	}
	v := strings.TrimSpace(string(out))
	if v == "" {
		t.Fatalf("go list -m %s: no version", stepCAModule)
	}
	return v
}

// buildStepCA builds cmd/step-ca from the Go module proxy once per version
// and caches the binary, so later runs start in milliseconds.
func buildStepCA(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not on PATH (%v): cannot build step-ca for the external CA test", err)
	}
	version := stepCAVersion(t, goBin)
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "cloudvlan-test", "step-ca-"+version)
	bin := filepath.Join(dir, "step-ca")
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	// A throwaway module that requires only step-ca: building from the
	// controller module would add step-ca's whole command dependency tree
	// to our go.sum (or the workspace's).
	mod := t.TempDir()
	gomod := fmt.Sprintf("module cloudvlan.test/stepca\n\ngo 1.24\n\nrequire %s %s\n", stepCAModule, version)
	if err := os.WriteFile(filepath.Join(mod, "go.mod"), []byte(gomod), 0o644); err != nil {
		t.Fatal(err)
	}
	tmpBin := fmt.Sprintf("%s.tmp-%d", bin, os.Getpid())
	cmd := exec.Command(goBin, "build", "-o", tmpBin, stepCAModule+"/cmd/step-ca")
	cmd.Dir = mod
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=-mod=mod")
	t.Logf("building step-ca %s (first run only; cached in %s)", version, dir)
	start := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building step-ca: %v\n%s", err, out)
	}
	if err := os.Rename(tmpBin, bin); err != nil {
		t.Fatal(err)
	}
	t.Logf("built step-ca in %s", time.Since(start).Round(time.Second))
	return bin
}

// testStepCA is a real step-ca process on loopback.
type testStepCA struct {
	url         string
	rootPEM     []byte
	provisioner string
	password    []byte
	keyFile     string // the provisioner's encrypted private JWK
}

// x509Template is the provisioner template docs/pki.md recommends.
const x509Template = `{
	"subject": {"commonName": {{ toJson .Subject.CommonName }}},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["digitalSignature"],
	"extKeyUsage": ["serverAuth", "clientAuth"]
}`

func startStepCA(t *testing.T) *testStepCA {
	t.Helper()
	bin := buildStepCA(t)
	dir := t.TempDir()
	password := []byte("step-ca test password")
	write := func(name string, data []byte, perm os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, perm); err != nil {
			t.Fatal(err)
		}
		return p
	}

	// Root and intermediate, made with go.step.sm/crypto like `step certificate create`.
	rootKey, err := keyutil.GenerateDefaultSigner()
	if err != nil {
		t.Fatal(err)
	}
	rootCSR, err := x509util.CreateCertificateRequest("Test External Root CA", nil, rootKey)
	if err != nil {
		t.Fatal(err)
	}
	rootTmpl, err := x509util.NewCertificate(rootCSR, x509util.WithTemplate(x509util.DefaultRootTemplate, x509util.CreateTemplateData("Test External Root CA", nil)))
	if err != nil {
		t.Fatal(err)
	}
	rc := rootTmpl.GetCertificate()
	rc.NotBefore, rc.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(24*time.Hour)
	root, err := x509util.CreateCertificate(rc, rc, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	intKey, err := keyutil.GenerateDefaultSigner()
	if err != nil {
		t.Fatal(err)
	}
	intCSR, err := x509util.CreateCertificateRequest("Test External Intermediate CA", nil, intKey)
	if err != nil {
		t.Fatal(err)
	}
	intTmpl, err := x509util.NewCertificate(intCSR, x509util.WithTemplate(x509util.DefaultIntermediateTemplate, x509util.CreateTemplateData("Test External Intermediate CA", nil)))
	if err != nil {
		t.Fatal(err)
	}
	ic := intTmpl.GetCertificate()
	ic.NotBefore, ic.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(24*time.Hour)
	inter, err := x509util.CreateCertificate(ic, root, intKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Raw})
	rootFile := write("root_ca.crt", rootPEM, 0o644)
	intFile := write("intermediate_ca.crt", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: inter.Raw}), 0o644)
	intKeyBlock, err := pemutil.Serialize(intKey, pemutil.WithPassword(password))
	if err != nil {
		t.Fatal(err)
	}
	intKeyFile := write("intermediate_ca_key", pem.EncodeToMemory(intKeyBlock), 0o600)
	passFile := write("password.txt", password, 0o600)

	// The JWK provisioner: public key in ca.json, private key encrypted
	// with the password both in ca.json (for fetching) and in a file.
	pub, jwe, err := jose.GenerateDefaultKeyPair(password)
	if err != nil {
		t.Fatal(err)
	}
	encKey, err := jwe.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	keyFile := write("provisioner.key", []byte(encKey), 0o600)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	cfg := map[string]any{
		"root":     rootFile,
		"crt":      intFile,
		"key":      intKeyFile,
		"address":  addr,
		"dnsNames": []string{"127.0.0.1", "localhost"},
		"logger":   map[string]any{"format": "text"},
		"authority": map[string]any{
			"provisioners": []any{map[string]any{
				"type":         "JWK",
				"name":         "cloudvlan-controller",
				"key":          pub,
				"encryptedKey": encKey,
				"claims": map[string]any{
					"minTLSCertDuration":     "1s",
					"maxTLSCertDuration":     "168h",
					"defaultTLSCertDuration": "8h",
				},
				"options": map[string]any{"x509": map[string]any{"template": x509Template}},
			}},
		},
	}
	cfgJSON, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := write("ca.json", cfgJSON, 0o600)

	var logs proctest.Buffer
	cmd := exec.Command(bin, "--password-file", passFile, cfgFile)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("step-ca output:\n%s", logs.String())
		}
	})

	pool := x509.NewCertPool()
	pool.AddCert(root)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	base := "https://" + addr
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := hc.Get(base + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			exited <- err // for the cleanup
			t.Fatalf("step-ca exited before becoming healthy: %v\n%s", err, logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("step-ca not healthy after 60s: %v\n%s", err, logs.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return &testStepCA{url: base, rootPEM: rootPEM, provisioner: "cloudvlan-controller", password: password, keyFile: keyFile}
}

func TestExternalStepCA(t *testing.T) {
	sca := startStepCA(t)
	ctx := context.Background()

	configs := map[string]ExternalConfig{
		"key fetched from the CA": {URL: sca.url, RootPEM: sca.rootPEM, Provisioner: sca.provisioner, Password: sca.password},
		"key file":                {URL: sca.url, RootPEM: sca.rootPEM, Provisioner: sca.provisioner, Password: sca.password, KeyFile: sca.keyFile},
	}
	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			ext, err := NewExternal(ctx, cfg, WithLogger(quietLogger()))
			if err != nil {
				t.Fatalf("NewExternal: %v", err)
			}
			t.Cleanup(func() { _ = ext.Close() })

			key := newKey(t)
			id := identity.ID{TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}
			before := time.Now()
			chain, err := ext.Sign(ctx, SignRequest{CSR: csrFor(t, key, &x509.CertificateRequest{}), ID: id, WGKey: wgKey(1), TTL: 5 * time.Second})
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			leaf := chain.Leaf
			var uris []string
			for _, u := range leaf.URIs {
				uris = append(uris, u.String())
			}
			want := []string{"spiffe://cloudvlan.internal/tenant/t1/node/n1", wgURI(wgKey(1))}
			if !slices.Equal(uris, want) || len(leaf.DNSNames)+len(leaf.IPAddresses)+len(leaf.EmailAddresses) != 0 {
				t.Fatalf("SANs: URIs %q DNS %q IP %v email %q; want URIs exactly %q", uris, leaf.DNSNames, leaf.IPAddresses, leaf.EmailAddresses, want)
			}
			if leaf.Subject.CommonName != "n1" {
				t.Errorf("CN %q", leaf.Subject.CommonName)
			}
			if d := leaf.NotAfter.Sub(before); d < 4*time.Second || d > 65*time.Second {
				t.Errorf("NotAfter is %s after the request, want about 5s", d)
			}
			if !publicKeysEqual(leaf.PublicKey, key.Public()) {
				t.Error("certificate key is not the CSR's key")
			}
			peer, err := VerifierFor(ext).VerifyChain(append([]*x509.Certificate{leaf}, chain.Intermediates...))
			if err != nil {
				t.Fatalf("issued certificate does not verify against Roots(): %v", err)
			}
			if peer.ID != (identity.ID{TrustDomain: "cloudvlan.internal", TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"}) {
				t.Fatalf("peer %+v", peer)
			}

			// A shared relay with hostnames, default TTL.
			relay, err := ext.Sign(ctx, SignRequest{CSR: csrFor(t, key, &x509.CertificateRequest{}),
				ID: identity.ID{Kind: identity.KindRelay, ResourceID: "fra1"}, DNSNames: []string{"relay.example.com"}})
			if err != nil {
				t.Fatalf("Sign relay: %v", err)
			}
			if relay.Leaf.URIs[0].String() != "spiffe://cloudvlan.internal/relay/fra1" || !slices.Equal(relay.Leaf.DNSNames, []string{"relay.example.com"}) {
				t.Fatalf("relay SANs %v %v", relay.Leaf.URIs, relay.Leaf.DNSNames)
			}
			if d := time.Until(relay.Leaf.NotAfter); d < 7*time.Hour || d > 8*time.Hour+time.Minute {
				t.Fatalf("relay validity %s, want 8h", d)
			}

			// A CSR naming someone else is refused before reaching the CA.
			evil, _ := url.Parse("spiffe://cloudvlan.internal/tenant/t1/node/admin")
			_, err = ext.Sign(ctx, SignRequest{CSR: csrFor(t, key, &x509.CertificateRequest{URIs: []*url.URL{evil}}), ID: id, WGKey: wgKey(1)})
			if !errors.Is(err, ErrCSRNames) {
				t.Fatalf("Sign with a hostile CSR = %v, want ErrCSRNames", err)
			}
			// A CSR with exactly the identity's names is accepted.
			exact := []*url.URL{mustParseURL(t, "spiffe://cloudvlan.internal/tenant/t1/node/n1"), mustParseURL(t, wgURI(wgKey(1)))}
			if _, err := ext.Sign(ctx, SignRequest{CSR: csrFor(t, key, &x509.CertificateRequest{URIs: exact}), ID: id, WGKey: wgKey(1)}); err != nil {
				t.Fatalf("Sign with an exact CSR: %v", err)
			}
			// The remote CA enforces the provisioner's duration limits.
			if _, err := ext.Sign(ctx, SignRequest{CSR: csrFor(t, key, &x509.CertificateRequest{}), ID: id, WGKey: wgKey(1), TTL: 169 * time.Hour}); err == nil {
				t.Fatal("Sign beyond the provisioner's maxTLSCertDuration succeeded")
			}
			// Bad CSR signatures are refused locally.
			if _, err := ext.Sign(ctx, SignRequest{CSR: badSignatureCSR(t), ID: id, WGKey: wgKey(1)}); !errors.Is(err, ErrCSRSignature) {
				t.Fatalf("bad CSR = %v", err)
			}
			// The controller's server certificate through the external CA.
			sc, err := NewServerCert(ctx, ext, []string{"ctl.example.com"}, time.Hour, quietLogger())
			if err != nil {
				t.Fatalf("NewServerCert: %v", err)
			}
			if err := sc.Current().Leaf.VerifyHostname("127.0.0.1"); err != nil {
				t.Fatal(err)
			}
		})
	}

	t.Run("wrong password", func(t *testing.T) {
		_, err := NewExternal(ctx, ExternalConfig{URL: sca.url, RootPEM: sca.rootPEM, Provisioner: sca.provisioner, Password: []byte("nope")})
		if err == nil || !strings.Contains(err.Error(), "decrypting key of provisioner") {
			t.Fatalf("NewExternal with a wrong password = %v, want a decryption error", err)
		}
	})
	t.Run("unknown provisioner", func(t *testing.T) {
		_, err := NewExternal(ctx, ExternalConfig{URL: sca.url, RootPEM: sca.rootPEM, Provisioner: "nobody", Password: sca.password})
		if err == nil || !strings.Contains(err.Error(), `no JWK provisioner named "nobody"`) {
			t.Fatalf("NewExternal with an unknown provisioner = %v", err)
		}
	})
	t.Run("untrusted CA TLS", func(t *testing.T) {
		other := newEmbedded(t, t.TempDir())
		_, err := NewExternal(ctx, ExternalConfig{URL: sca.url, RootPEM: other.RootPEM(), Provisioner: sca.provisioner, Password: sca.password})
		if !errors.Is(err, ErrExternalCA) {
			t.Fatalf("NewExternal trusting another root = %v, want ErrExternalCA", err)
		}
	})
}

func mustParseURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}
