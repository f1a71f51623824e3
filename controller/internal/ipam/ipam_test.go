package ipam

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net/netip"
	"testing"
)

func TestSizeAndUsable(t *testing.T) {
	tests := []struct {
		prefix            string
		size, first, last int64
		usable            int64
	}{
		{"100.64.0.0/10", 1 << 22, 1, 1<<22 - 2, 1<<22 - 2},
		{"10.0.0.0/29", 8, 1, 6, 6},
		{"10.0.0.0/30", 4, 1, 2, 2},
		{"10.0.0.0/31", 2, 0, 1, 2},
		{"10.0.0.1/32", 1, 0, 0, 1},
		{"fd00::/120", 256, 1, 255, 255},
		{"fd00::/48", 1<<63 - 1, 1, 1<<63 - 2, 1<<63 - 2},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			p := netip.MustParsePrefix(tt.prefix)
			if got := Size(p); got != tt.size {
				t.Errorf("Size = %d, want %d", got, tt.size)
			}
			first, last := UsableRange(p)
			if first != tt.first || last != tt.last {
				t.Errorf("UsableRange = %d..%d, want %d..%d", first, last, tt.first, tt.last)
			}
			if got := Usable(p); got != tt.usable {
				t.Errorf("Usable = %d, want %d", got, tt.usable)
			}
		})
	}
}

func TestNthIndexRoundTrip(t *testing.T) {
	tests := []struct {
		prefix string
		index  int64
		addr   string
	}{
		{"100.64.0.0/10", 1, "100.64.0.1"},
		{"100.64.0.0/10", 256, "100.64.1.0"},
		{"100.64.0.0/10", 1<<22 - 1, "100.127.255.255"},
		{"10.0.0.0/29", 6, "10.0.0.6"},
		{"fd7a:1c2b:3d4e::/48", 1, "fd7a:1c2b:3d4e::1"},
		{"fd7a:1c2b:3d4e::/48", 65536 + 2, "fd7a:1c2b:3d4e::1:2"},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			p := netip.MustParsePrefix(tt.prefix)
			a, err := Nth(p, tt.index)
			if err != nil {
				t.Fatal(err)
			}
			if a.String() != tt.addr {
				t.Fatalf("Nth = %s, want %s", a, tt.addr)
			}
			i, err := Index(p, a)
			if err != nil {
				t.Fatal(err)
			}
			if i != tt.index {
				t.Fatalf("Index = %d, want %d", i, tt.index)
			}
		})
	}
}

func TestOutOfRange(t *testing.T) {
	p := netip.MustParsePrefix("10.0.0.0/29")
	for _, i := range []int64{-1, 8, 1000} {
		if _, err := Nth(p, i); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("Nth(%d) err = %v, want ErrOutOfRange", i, err)
		}
	}
	if _, err := Index(p, netip.MustParseAddr("10.0.0.8")); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("Index outside err = %v", err)
	}
	if _, err := Index(p, netip.MustParseAddr("::ffff:10.0.0.3")); err != nil {
		t.Errorf("Index of a 4in6 address: %v", err)
	}
}

func TestParse(t *testing.T) {
	v4 := []struct {
		in   string
		want string
		ok   bool
	}{
		{"", "100.64.0.0/10", true},
		{"10.10.0.0/16", "10.10.0.0/16", true},
		{"10.10.0.1/16", "", false},
		{"10.0.0.0/31", "", false},
		{"fd00::/48", "", false},
		{"garbage", "", false},
	}
	for _, tt := range v4 {
		p, err := ParseIPv4(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseIPv4(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
			continue
		}
		if tt.ok && p.String() != tt.want {
			t.Errorf("ParseIPv4(%q) = %s, want %s", tt.in, p, tt.want)
		}
	}
	def := DefaultIPv4
	v6 := []struct {
		in string
		ok bool
	}{
		{"fd7a:1c2b:3d4e::/48", true},
		{"fd7a:1c2b:3d4e::/106", true},
		{"fd7a:1c2b:3d4e::/107", false}, // 21 host bits < 22 of a /10
		{"2001:db8::/48", false},
		{"fd7a:1c2b:3d4e::1/48", false},
		{"10.0.0.0/8", false},
	}
	for _, tt := range v6 {
		if _, err := ParseIPv6(tt.in, def); (err == nil) != tt.ok {
			t.Errorf("ParseIPv6(%q) err = %v, want ok=%v", tt.in, err, tt.ok)
		}
	}
}

func TestGenerateULA(t *testing.T) {
	p, err := GenerateULA(bytes.NewReader([]byte{1, 2, 3, 4, 5}))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.String(), "fd01:203:405::/48"; got != want {
		t.Fatalf("GenerateULA = %s, want %s", got, want)
	}
	if _, err := ParseIPv6(p.String(), DefaultIPv4); err != nil {
		t.Fatalf("generated prefix does not parse back: %v", err)
	}
	a, _ := GenerateULA(rand.Reader)
	b, _ := GenerateULA(rand.Reader)
	if a == b {
		t.Fatalf("two random ULAs are equal: %s", a)
	}
	if _, err := GenerateULA(bytes.NewReader([]byte{1})); err == nil {
		t.Fatal("short random source: want error")
	}
}
