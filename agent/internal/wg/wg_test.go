package wg

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/tun/netstack"

	"github.com/cloudvlan/cloudvlan/agent/internal/bind"
)

func key(b byte) [32]byte {
	var k [32]byte
	k[0] = b
	k[31] = 0x40
	return k
}

func TestSetPeersTouchesOnlyChanges(t *testing.T) {
	tdev, _, err := netstack.CreateNetTUN([]netip.Addr{netip.MustParseAddr("100.64.0.1")}, nil, 1280)
	if err != nil {
		t.Fatal(err)
	}
	var priv [32]byte
	priv[0] = 8
	d, err := New(tdev, bind.New(bind.Config{ListenIP: netip.MustParseAddr("127.0.0.1")}), priv, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	p1 := PeerConfig{Key: key(1), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.2/32")}}
	p2 := PeerConfig{Key: key(2), AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32"), netip.MustParsePrefix("fd7a::3/128")}, Keepalive: 25 * time.Second}
	steps := []struct {
		name                   string
		peers                  []PeerConfig
		added, changed, remove int
	}{
		{"add two", []PeerConfig{p1, p2}, 2, 0, 0},
		{"same again", []PeerConfig{p2, p1}, 0, 0, 0},
		{"same prefixes, other order", []PeerConfig{p1, {Key: p2.Key, AllowedIPs: []netip.Prefix{p2.AllowedIPs[1], p2.AllowedIPs[0]}, Keepalive: p2.Keepalive}}, 0, 0, 0},
		{"route added to p2", []PeerConfig{p1, {Key: p2.Key, AllowedIPs: append([]netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}, p2.AllowedIPs...), Keepalive: p2.Keepalive}}, 0, 1, 0},
		{"p1 removed", []PeerConfig{{Key: p2.Key, AllowedIPs: append([]netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")}, p2.AllowedIPs...), Keepalive: p2.Keepalive}}, 0, 0, 1},
	}
	for _, s := range steps {
		a, c, r, err := d.SetPeers(s.peers)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if a != s.added || c != s.changed || r != s.remove {
			t.Fatalf("%s: added/changed/removed %d/%d/%d, want %d/%d/%d", s.name, a, c, r, s.added, s.changed, s.remove)
		}
	}
	st, err := d.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st[key(2)]; !ok || len(st) != 1 {
		t.Fatalf("device peers %v, want only p2", st)
	}
	uapi, _ := d.dev.IpcGet()
	for _, want := range []string{"allowed_ip=10.9.0.0/24", "allowed_ip=fd7a::3/128", "persistent_keepalive_interval=25"} {
		if !contains(uapi, want) {
			t.Fatalf("device state lacks %q:\n%s", want, uapi)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
