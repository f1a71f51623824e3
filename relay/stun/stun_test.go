package stun

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestRoundTrip(t *testing.T) {
	tests := []netip.AddrPort{
		netip.MustParseAddrPort("203.0.113.7:51820"),
		netip.MustParseAddrPort("[2001:db8::1]:443"),
	}
	for _, ap := range tests {
		t.Run(ap.String(), func(t *testing.T) {
			tx := NewTxID()
			req := AppendRequest(nil, tx)
			if !IsMessage(req) {
				t.Fatal("request not recognised")
			}
			got, err := ParseRequest(req)
			if err != nil || got != tx {
				t.Fatalf("ParseRequest: %v %v", got, err)
			}
			resp := AppendResponse(nil, tx, ap)
			gtx, gap, err := ParseResponse(resp)
			if err != nil || gtx != tx || gap != ap {
				t.Fatalf("ParseResponse = %v %v %v, want %v", gtx, gap, err, ap)
			}
			if _, err := ParseRequest(resp); !errors.Is(err, ErrNotSTUN) {
				t.Fatalf("response accepted as request: %v", err)
			}
		})
	}
}

// TestKnownVector checks the XOR-MAPPED-ADDRESS encoding against RFC 5769
// section 2.2 (sample IPv4 response: 192.0.2.1:32853).
func TestKnownVector(t *testing.T) {
	tx := TxID{0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae}
	resp := AppendResponse(nil, tx, netip.MustParseAddrPort("192.0.2.1:32853"))
	want := []byte{0x00, 0x20, 0x00, 0x08, 0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43}
	if !bytes.Equal(resp[20:32], want) {
		t.Fatalf("XOR-MAPPED-ADDRESS = % x, want % x", resp[20:32], want)
	}
}

func TestRejects(t *testing.T) {
	tx := NewTxID()
	good := AppendRequest(nil, tx)
	corrupt := bytes.Clone(good)
	corrupt[len(corrupt)-1] ^= 1
	wg := []byte{4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20}
	for name, b := range map[string][]byte{
		"bad fingerprint": corrupt,
		"short":           good[:10],
		"wireguard":       wg,
		"wrong length":    append(bytes.Clone(good), 0, 0, 0, 0),
	} {
		if _, err := ParseRequest(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestServeAndQuery(t *testing.T) {
	for _, network := range []string{"127.0.0.1:0", "[::1]:0"} {
		t.Run(network, func(t *testing.T) {
			srv, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(network)))
			if err != nil {
				t.Skipf("no loopback for %s: %v", network, err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Add(1)
			go func() { defer wg.Done(); _ = Serve(ctx, srv, nil) }()
			t.Cleanup(func() { cancel(); wg.Wait(); srv.Close() })

			cl, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(network)))
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			// Garbage first: the server must ignore it and keep serving.
			if _, err := cl.WriteTo([]byte("not stun"), srv.LocalAddr()); err != nil {
				t.Fatal(err)
			}
			qctx, qcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer qcancel()
			got, err := Query(qctx, cl, srv.LocalAddr().(*net.UDPAddr).AddrPort())
			if err != nil {
				t.Fatal(err)
			}
			want := cl.LocalAddr().(*net.UDPAddr).AddrPort()
			if got.Addr().Unmap() != want.Addr().Unmap() || got.Port() != want.Port() {
				t.Fatalf("mapped %v, want %v", got, want)
			}
		})
	}
}
