package frame

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

func testKey(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b + byte(i)
	}
	return k
}

func TestRoundTrip(t *testing.T) {
	src, dst := testKey(1), testKey(100)
	pkt := bytes.Repeat([]byte{0xab}, 1400)
	tests := []struct {
		name  string
		write func(w *Writer) error
		check func(t *testing.T, typ Type, p []byte)
	}{
		{"server hello", func(w *Writer) error { return w.WriteServerHello(src) }, func(t *testing.T, typ Type, p []byte) {
			v, k, err := ParseServerHello(p)
			if typ != TypeServerHello || err != nil || v != ProtocolVersion || k != src {
				t.Fatalf("got %v %v %v %v", typ, v, k, err)
			}
		}},
		{"send packet", func(w *Writer) error { return w.WriteKeyPacket(TypeSendPacket, dst, pkt) }, func(t *testing.T, typ Type, p []byte) {
			k, got, err := ParseKeyPacket(p)
			if typ != TypeSendPacket || err != nil || k != dst || !bytes.Equal(got, pkt) {
				t.Fatalf("got %v %v %v", typ, k, err)
			}
		}},
		{"forward packet", func(w *Writer) error { return w.WriteForwardPacket(src, dst, pkt) }, func(t *testing.T, typ Type, p []byte) {
			s, d, got, err := ParseForwardPacket(p)
			if typ != TypeForwardPacket || err != nil || s != src || d != dst || !bytes.Equal(got, pkt) {
				t.Fatalf("got %v %v %v %v", typ, s, d, err)
			}
		}},
		{"peer gone", func(w *Writer) error { return w.WritePeerGone(dst, PeerGoneDisconnected) }, func(t *testing.T, typ Type, p []byte) {
			k, r, err := ParsePeerGone(p)
			if typ != TypePeerGone || err != nil || k != dst || r != PeerGoneDisconnected {
				t.Fatalf("got %v %v %v %v", typ, k, r, err)
			}
		}},
		{"peer present", func(w *Writer) error { return w.WritePeerPresent(dst, "tenant-a") }, func(t *testing.T, typ Type, p []byte) {
			k, tn, err := ParsePeerPresent(p)
			if typ != TypePeerPresent || err != nil || k != dst || tn != "tenant-a" {
				t.Fatalf("got %v %v %q %v", typ, k, tn, err)
			}
		}},
		{"ping", func(w *Writer) error { return w.WritePing(TypePing, [8]byte{1, 2, 3, 4, 5, 6, 7, 8}) }, func(t *testing.T, typ Type, p []byte) {
			d, err := ParsePing(p)
			if typ != TypePing || err != nil || d != [8]byte{1, 2, 3, 4, 5, 6, 7, 8} {
				t.Fatalf("got %v %v %v", typ, d, err)
			}
		}},
		{"restarting", func(w *Writer) error { return w.WriteRestarting(500, 30000) }, func(t *testing.T, typ Type, p []byte) {
			a, b, err := ParseRestarting(p)
			if typ != TypeRestarting || err != nil || a != 500 || b != 30000 {
				t.Fatalf("got %v %v %v %v", typ, a, b, err)
			}
		}},
		{"keepalive", func(w *Writer) error { return w.WriteEmpty(TypeKeepAlive) }, func(t *testing.T, typ Type, p []byte) {
			if typ != TypeKeepAlive || len(p) != 0 {
				t.Fatalf("got %v %d", typ, len(p))
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			w := NewWriter(bufio.NewWriter(&buf))
			if err := tc.write(w); err != nil {
				t.Fatal(err)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			r := NewReader(bufio.NewReader(&buf))
			typ, p, err := r.ReadFrame(make([]byte, MaxPayload))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, typ, p)
			if _, _, err := r.ReadHeader(); err != io.EOF {
				t.Fatalf("trailing data: %v", err)
			}
		})
	}
}

func TestRejects(t *testing.T) {
	tests := []struct {
		name string
		in   []byte
		want error
	}{
		{"oversize", []byte{byte(TypeSendPacket), 0, 1, 0, 1}, ErrFrameTooLarge},
		{"huge", []byte{byte(TypeSendPacket), 0xff, 0xff, 0xff, 0xff}, ErrFrameTooLarge},
		{"truncated header", []byte{byte(TypeSendPacket), 0}, io.ErrUnexpectedEOF},
		{"truncated payload", []byte{byte(TypeSendPacket), 0, 0, 0, 40, 1, 2}, io.ErrUnexpectedEOF},
		{"short buffer", []byte{byte(TypeSendPacket), 0, 0, 0x10, 0, 1}, ErrShortBuffer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := NewReader(bufio.NewReader(bytes.NewReader(tc.in)))
			_, _, err := r.ReadFrame(make([]byte, 64))
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if _, _, err := ParseKeyPacket(make([]byte, 31)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("short key packet: %v", err)
	}
	if _, _, err := ParsePeerPresent(make([]byte, KeyLen+MaxTenantLen+1)); !errors.Is(err, ErrMalformed) {
		t.Fatalf("long tenant: %v", err)
	}
}

func TestParseKey(t *testing.T) {
	k := testKey(7)
	got, err := ParseKey(k.String())
	if err != nil || got != k {
		t.Fatalf("ParseKey(%s) = %v, %v", k, got, err)
	}
	for _, bad := range []string{"", "zz", k.String()[:63] + "g"} {
		if _, err := ParseKey(bad); err == nil {
			t.Fatalf("ParseKey(%q) accepted", bad)
		}
	}
}

func TestWriterDoesNotAllocate(t *testing.T) {
	w := NewWriter(bufio.NewWriterSize(io.Discard, 16<<10))
	pkt := make([]byte, 1400)
	k := testKey(3)
	allocs := testing.AllocsPerRun(1000, func() {
		_ = w.WriteKeyPacket(TypeRecvPacket, k, pkt)
	})
	if allocs != 0 {
		t.Fatalf("WriteKeyPacket allocates %.1f times", allocs)
	}
}

func BenchmarkWriteRead(b *testing.B) {
	pkt := make([]byte, 1400)
	k := testKey(3)
	pr, pw := io.Pipe()
	w := NewWriter(bufio.NewWriterSize(pw, 16<<10))
	go func() {
		for i := 0; i < b.N; i++ {
			_ = w.WriteKeyPacket(TypeRecvPacket, k, pkt)
		}
		_ = w.Flush()
		_ = pw.Close()
	}()
	r := NewReader(bufio.NewReaderSize(pr, 16<<10))
	buf := make([]byte, MaxPayload)
	b.SetBytes(int64(len(pkt)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, _, err := r.ReadFrame(buf); err != nil {
			b.Fatal(err)
		}
	}
}
