package frame

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzReadFrame feeds arbitrary bytes to the reader and the payload parsers.
// They must never panic, never hand back a payload above MaxPayload, and every
// frame they accept must re-encode to the same bytes.
func FuzzReadFrame(f *testing.F) {
	f.Add([]byte{byte(TypeKeepAlive), 0, 0, 0, 0})
	f.Add([]byte{byte(TypePing), 0, 0, 0, 8, 1, 2, 3, 4, 5, 6, 7, 8})
	f.Add([]byte{byte(TypeSendPacket), 0xff, 0xff, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bufio.NewReaderSize(bytes.NewReader(data), 64))
		buf := make([]byte, MaxPayload)
		var out bytes.Buffer
		w := NewWriter(bufio.NewWriter(&out))
		for {
			typ, p, err := r.ReadFrame(buf)
			if err != nil {
				if errors.Is(err, ErrFrameTooLarge) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return
				}
				t.Fatalf("unexpected error %v", err)
			}
			if len(p) > MaxPayload {
				t.Fatalf("payload of %d bytes", len(p))
			}
			var werr error
			switch typ {
			case TypeSendPacket, TypeRecvPacket:
				k, pkt, err := ParseKeyPacket(p)
				if err != nil {
					continue
				}
				werr = w.WriteKeyPacket(typ, k, pkt)
			case TypeForwardPacket:
				s, d, pkt, err := ParseForwardPacket(p)
				if err != nil {
					continue
				}
				werr = w.WriteForwardPacket(s, d, pkt)
			case TypePeerPresent:
				k, tn, err := ParsePeerPresent(p)
				if err != nil {
					continue
				}
				werr = w.WritePeerPresent(k, tn)
			case TypePing, TypePong:
				d, err := ParsePing(p)
				if err != nil {
					continue
				}
				werr = w.WritePing(typ, d)
			default:
				// Parsers of the other types must not panic either.
				_, _, _ = ParsePeerGone(p)
				_, _, _ = ParseRestarting(p)
				_, _, _ = ParseServerHello(p)
				continue
			}
			if werr != nil {
				t.Fatalf("re-encode %v: %v", typ, werr)
			}
			if err := w.Flush(); err != nil {
				t.Fatal(err)
			}
			want := make([]byte, HeaderLen+len(p))
			PutHeader(want, typ, len(p))
			copy(want[HeaderLen:], p)
			if !bytes.Equal(out.Bytes(), want) {
				t.Fatalf("%v re-encoded differently", typ)
			}
			out.Reset()
		}
	})
}
