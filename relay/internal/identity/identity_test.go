package identity

import (
	"crypto/x509"
	"errors"
	"net/url"
	"strings"
	"testing"

	cid "github.com/cloudvlan/cloudvlan/controller/identity"
)

func cert(uris ...string) *x509.Certificate {
	c := &x509.Certificate{}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			panic(err)
		}
		c.URIs = append(c.URIs, u)
	}
	return c
}

func TestFromCertificate(t *testing.T) {
	key := strings.Repeat("ab", 32)
	tests := []struct {
		name string
		cert *x509.Certificate
		want Identity
		ok   bool
	}{
		{"node", cert("spiffe://td/tenant/t1/node/n1", cid.WGKeyURNPrefix+key), Identity{Kind: KindNode, Tenant: "t1", ID: "n1"}, true},
		{"vrouter", cert("spiffe://td/tenant/t1/vrouter/v1", cid.WGKeyURNPrefix+key), Identity{Kind: KindVRouter, Tenant: "t1", ID: "v1"}, true},
		{"shared relay", cert("spiffe://td/relay/r1"), Identity{Kind: KindRelay, ID: "r1"}, true},
		{"tenant relay", cert("spiffe://td/tenant/t1/relay/r1"), Identity{Kind: KindRelay, Tenant: "t1", ID: "r1"}, true},
		{"node without key", cert("spiffe://td/tenant/t1/node/n1"), Identity{}, false},
		{"other trust domain", cert("spiffe://evil/tenant/t1/node/n1", cid.WGKeyURNPrefix+key), Identity{}, false},
		{"two ids", cert("spiffe://td/relay/r1", "spiffe://td/relay/r2"), Identity{}, false},
		{"uppercase key", cert("spiffe://td/tenant/t1/node/n1", cid.WGKeyURNPrefix+strings.ToUpper(key)), Identity{}, false},
		{"bad path", cert("spiffe://td/tenant/t1/node"), Identity{}, false},
		{"empty tenant", cert("spiffe://td/tenant//node/n1", cid.WGKeyURNPrefix+key), Identity{}, false},
		{"no uris", cert(), Identity{}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FromCertificate(tc.cert, "td")
			if !tc.ok {
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("want ErrInvalid, got %v (%+v)", err, got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Kind != tc.want.Kind || got.Tenant != tc.want.Tenant || got.ID != tc.want.ID {
				t.Fatalf("got %+v want %+v", got, tc.want)
			}
			if got.IsClient() && got.WGKey[0] != 0xab {
				t.Fatalf("key not parsed: %x", got.WGKey)
			}
		})
	}
}
