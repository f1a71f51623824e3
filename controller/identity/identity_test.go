package identity

import (
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestIDRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		id   ID
		want string
	}{
		{"node", ID{"cloudvlan.internal", "t1", KindNode, "n1"}, "spiffe://cloudvlan.internal/tenant/t1/node/n1"},
		{"vrouter", ID{"example.org", "acme", KindVRouter, "vr-7"}, "spiffe://example.org/tenant/acme/vrouter/vr-7"},
		{"tenant relay", ID{"td", "T_2", KindRelay, "r.1"}, "spiffe://td/tenant/T_2/relay/r.1"},
		{"shared relay", ID{"cloudvlan.internal", "", KindRelay, "fra-1"}, "spiffe://cloudvlan.internal/relay/fra-1"},
		{"uuid ids", ID{"cloudvlan.internal", "0b9e1c1e-8f7a-4b7e-9a53-4b1f3f3f1a01", KindNode, "4f0c8a52-2c1e-4a57-bd2c-7d6e5a1e9b00"},
			"spiffe://cloudvlan.internal/tenant/0b9e1c1e-8f7a-4b7e-9a53-4b1f3f3f1a01/node/4f0c8a52-2c1e-4a57-bd2c-7d6e5a1e9b00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.id.Validate(); err != nil {
				t.Fatalf("Validate: %v", err)
			}
			if got := tt.id.String(); got != tt.want {
				t.Fatalf("String() = %q, want %q", got, tt.want)
			}
			got, err := ParseString(tt.want)
			if err != nil {
				t.Fatalf("ParseString: %v", err)
			}
			if got != tt.id {
				t.Fatalf("ParseString = %+v, want %+v", got, tt.id)
			}
			got, err = Parse(tt.id.URI())
			if err != nil || got != tt.id {
				t.Fatalf("Parse(URI()) = %+v, %v", got, err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in      string
		wantErr error
		wantMsg string
	}{
		{"https://cloudvlan.internal/tenant/t/node/n", ErrNotSPIFFE, `scheme "https"`},
		{"spiffe:cloudvlan.internal/tenant/t/node/n", ErrTrustDomain, "no authority"},
		{"spiffe:///tenant/t/node/n", ErrTrustDomain, "empty"},
		{"spiffe://Cloudvlan.internal/tenant/t/node/n", ErrTrustDomain, `character 'C'`},
		{"spiffe://cloudvlan.internal:443/tenant/t/node/n", ErrURIComponents, ""},
		{"spiffe://u@cloudvlan.internal/tenant/t/node/n", ErrURIComponents, ""},
		{"spiffe://cloudvlan.internal/tenant/t/node/n?x=1", ErrURIComponents, ""},
		{"spiffe://cloudvlan.internal/tenant/t/node/n#f", ErrURIComponents, ""},
		{"spiffe://cloudvlan.internal", ErrPath, "empty path"},
		{"spiffe://cloudvlan.internal/", ErrPath, ""},
		{"spiffe://cloudvlan.internal/tenant/t/node", ErrPath, ""},
		{"spiffe://cloudvlan.internal/tenant/t/node/n/extra", ErrPath, ""},
		{"spiffe://cloudvlan.internal/org/t/node/n", ErrPath, "want /tenant/"},
		{"spiffe://cloudvlan.internal/tenant/t/router/n", ErrKind, `"router"`},
		{"spiffe://cloudvlan.internal/node/n", ErrTenantRequired, "node"},
		{"spiffe://cloudvlan.internal/vrouter/v", ErrTenantRequired, "vrouter"},
		{"spiffe://cloudvlan.internal/tenant//node/n", ErrSegment, "empty tenant id"},
		{"spiffe://cloudvlan.internal/tenant/t/node/", ErrSegment, "empty node id"},
		{"spiffe://cloudvlan.internal/tenant/t/node/..", ErrSegment, `".."`},
		{"spiffe://cloudvlan.internal/tenant/t%2Fx/node/n", ErrPath, "percent-encoding"},
		{"spiffe://cloudvlan.internal/tenant/t/node/a%61", ErrPath, "percent-encoding"},
		{"spiffe://cloudvlan.internal/tenant/t/node/a%20b", ErrSegment, `character ' '`},
		{"spiffe://cloudvlan.internal/tenant/t/node/a+b", ErrSegment, `character '+'`},
		{"spiffe://cloudvlan.internal/tenant/t/relay/" + strings.Repeat("x", 129), ErrSegment, "longer than 128"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := ParseString(tt.in)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ParseString(%q) error = %v, want %v", tt.in, err, tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("error %q does not mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestParseNil(t *testing.T) {
	if _, err := Parse(nil); !errors.Is(err, ErrNotSPIFFE) {
		t.Fatalf("Parse(nil) = %v", err)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		id      ID
		wantErr error
	}{
		{"ok", ID{"td", "t", KindNode, "n"}, nil},
		{"zero", ID{}, ErrTrustDomain},
		{"no kind", ID{"td", "t", "", "n"}, ErrKind},
		{"bad kind", ID{"td", "t", "Node", "n"}, ErrKind},
		{"vrouter no tenant", ID{"td", "", KindVRouter, "v"}, ErrTenantRequired},
		{"slash in tenant", ID{"td", "a/b", KindNode, "n"}, ErrSegment},
		{"empty resource", ID{"td", "t", KindRelay, ""}, ErrSegment},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.id.Validate(); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Validate() = %v, want %v", err, tt.wantErr)
			}
		})
	}
}

func testKey(b byte) [32]byte {
	var k [32]byte
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func TestWGKeyURI(t *testing.T) {
	key := testKey(0xa0)
	u := WGKeyURI(key)
	want := "urn:cloudvlan:wgkey:a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
	if u.String() != want {
		t.Fatalf("WGKeyURI = %q, want %q", u, want)
	}
	// The URI must survive the trip through a certificate's SAN encoding,
	// which stores the string and re-parses it with url.Parse.
	parsed, err := url.Parse(u.String())
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseWGKeyURI(parsed)
	if err != nil || got != key {
		t.Fatalf("ParseWGKeyURI = %x, %v", got, err)
	}
	if !IsWGKeyURI(parsed) {
		t.Fatal("IsWGKeyURI = false")
	}
}

func TestParseWGKeyURIErrors(t *testing.T) {
	hex64 := strings.Repeat("ab", 32)
	tests := []struct {
		in      string
		wantMsg string
	}{
		{"urn:cloudvlan:wgkey:" + hex64[:62], "62 hex characters"},
		{"urn:cloudvlan:wgkey:" + hex64 + "00", "66 hex characters"},
		{"urn:cloudvlan:wgkey:" + strings.ToUpper(hex64), "lowercase hex"},
		{"urn:cloudvlan:wgkey:" + hex64[:63] + "g", "lowercase hex"},
		{"urn:cloudvlan:wgkey:" + strings.Repeat("0", 64), "all-zero"},
		{"urn:cloudvlan:WGKEY:" + hex64, "does not start with"},
		{"urn:other:" + hex64, "does not start with"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := url.Parse(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			_, err = ParseWGKeyURI(u)
			if !errors.Is(err, ErrWGKey) || !strings.Contains(err.Error(), tt.wantMsg) {
				t.Fatalf("ParseWGKeyURI(%q) = %v, want ErrWGKey mentioning %q", tt.in, err, tt.wantMsg)
			}
		})
	}
}

func TestWGKeyFromBytes(t *testing.T) {
	k := testKey(1)
	if got, err := WGKeyFromBytes(k[:]); err != nil || got != k {
		t.Fatalf("WGKeyFromBytes = %x, %v", got, err)
	}
	for _, b := range [][]byte{nil, make([]byte, 31), make([]byte, 33), make([]byte, 32)} {
		if _, err := WGKeyFromBytes(b); !errors.Is(err, ErrWGKey) {
			t.Fatalf("WGKeyFromBytes(len %d) = %v, want ErrWGKey", len(b), err)
		}
	}
}

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestFromCertificate(t *testing.T) {
	key := testKey(7)
	wg := WGKeyURI(key).String()
	node := "spiffe://cloudvlan.internal/tenant/t/node/n"
	tests := []struct {
		name    string
		uris    []string
		wantID  string
		wantKey [32]byte
		wantErr error
	}{
		{"node", []string{node, wg}, node, key, nil},
		{"node, wgkey first", []string{wg, node}, node, key, nil},
		{"vrouter", []string{"spiffe://td/tenant/t/vrouter/v", wg}, "spiffe://td/tenant/t/vrouter/v", key, nil},
		{"shared relay without key", []string{"spiffe://td/relay/r"}, "spiffe://td/relay/r", [32]byte{}, nil},
		{"tenant relay with key", []string{"spiffe://td/tenant/t/relay/r", wg}, "spiffe://td/tenant/t/relay/r", key, nil},
		{"no uris", nil, "", [32]byte{}, ErrNoID},
		{"only wgkey", []string{wg}, "", [32]byte{}, ErrNoID},
		{"two ids", []string{node, "spiffe://cloudvlan.internal/tenant/t/node/m", wg}, "", [32]byte{}, ErrMultipleIDs},
		{"node without key", []string{node}, "", [32]byte{}, ErrMissingWGKey},
		{"vrouter without key", []string{"spiffe://td/tenant/t/vrouter/v"}, "", [32]byte{}, ErrMissingWGKey},
		{"two keys", []string{node, wg, WGKeyURI(testKey(9)).String()}, "", [32]byte{}, ErrMultipleWGKeys},
		{"bad key", []string{node, "urn:cloudvlan:wgkey:00"}, "", [32]byte{}, ErrWGKey},
		{"bad id", []string{"spiffe://td/tenant/t/gateway/g", wg}, "", [32]byte{}, ErrKind},
		{"foreign uri", []string{node, wg, "https://example.com/"}, "", [32]byte{}, ErrUnexpectedURI},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := &x509.Certificate{}
			for _, s := range tt.uris {
				cert.URIs = append(cert.URIs, mustURL(t, s))
			}
			id, k, err := FromCertificate(cert)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("FromCertificate error = %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				if !id.IsZero() || k != ([32]byte{}) {
					t.Fatalf("FromCertificate returned %v, %x with error", id, k)
				}
				return
			}
			if id.String() != tt.wantID || k != tt.wantKey {
				t.Fatalf("FromCertificate = %s, %x; want %s, %x", id, k, tt.wantID, tt.wantKey)
			}
		})
	}
	if _, _, err := FromCertificate(nil); !errors.Is(err, ErrNoID) {
		t.Fatalf("FromCertificate(nil) = %v", err)
	}
}
