// Package stun implements the small part of STUN (RFC 5389) that endpoint
// discovery needs: a Binding request, and a success response carrying
// XOR-MAPPED-ADDRESS. The relay answers requests (Serve); agents ask (Query,
// or Request/ParseResponse on a socket they share with WireGuard, using
// IsMessage to tell STUN from WireGuard packets).
package stun

import (
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net/netip"
)

const (
	headerLen   = 20
	magicCookie = 0x2112A442

	typeBindingRequest = 0x0001
	typeBindingSuccess = 0x0101

	attrMappedAddress    = 0x0001
	attrXorMappedAddress = 0x0020
	attrSoftware         = 0x8022
	attrFingerprint      = 0x8028

	fingerprintXOR = 0x5354554e
)

// TxID is a STUN transaction id.
type TxID [12]byte

// NewTxID returns a random transaction id.
func NewTxID() TxID {
	var t TxID
	_, _ = rand.Read(t[:])
	return t
}

// ErrNotSTUN means the bytes are not a well-formed STUN message of the expected kind.
var ErrNotSTUN = errors.New("stun: not a valid message")

// IsMessage reports whether b looks like a STUN message (cheap check for
// demultiplexing STUN from WireGuard on one socket: WireGuard messages start
// with a type byte 1-4 followed by three zero bytes, STUN with two zero bits
// and carries the magic cookie at bytes 4-8).
func IsMessage(b []byte) bool {
	return len(b) >= headerLen && b[0]&0xc0 == 0 &&
		binary.BigEndian.Uint32(b[4:8]) == magicCookie &&
		int(binary.BigEndian.Uint16(b[2:4]))+headerLen == len(b)
}

func appendHeader(b []byte, typ uint16, tx TxID) []byte {
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint16(b, 0) // length, patched later
	b = binary.BigEndian.AppendUint32(b, magicCookie)
	return append(b, tx[:]...)
}

// finish sets the length and appends a FINGERPRINT attribute.
func finish(b []byte, start int) []byte {
	msg := b[start:]
	binary.BigEndian.PutUint16(msg[2:4], uint16(len(msg)-headerLen+8))
	crc := crc32.ChecksumIEEE(msg) ^ fingerprintXOR
	b = binary.BigEndian.AppendUint16(b, attrFingerprint)
	b = binary.BigEndian.AppendUint16(b, 4)
	return binary.BigEndian.AppendUint32(b, crc)
}

// AppendRequest appends a Binding request with transaction id tx to b.
func AppendRequest(b []byte, tx TxID) []byte {
	start := len(b)
	b = appendHeader(b, typeBindingRequest, tx)
	return finish(b, start)
}

// AppendResponse appends a Binding success response telling the requester
// its address as seen by the server.
func AppendResponse(b []byte, tx TxID, addr netip.AddrPort) []byte {
	start := len(b)
	b = appendHeader(b, typeBindingSuccess, tx)
	ip := addr.Addr().Unmap()
	family, alen := byte(0x01), 4
	if ip.Is6() {
		family, alen = 0x02, 16
	}
	b = binary.BigEndian.AppendUint16(b, attrXorMappedAddress)
	b = binary.BigEndian.AppendUint16(b, uint16(4+alen))
	b = append(b, 0, family)
	b = binary.BigEndian.AppendUint16(b, addr.Port()^(magicCookie>>16))
	key := xorKey(tx)
	raw := ip.AsSlice()
	for i := range raw {
		b = append(b, raw[i]^key[i])
	}
	return finish(b, start)
}

func xorKey(tx TxID) [16]byte {
	var k [16]byte
	binary.BigEndian.PutUint32(k[:4], magicCookie)
	copy(k[4:], tx[:])
	return k
}

type message struct {
	typ   uint16
	tx    TxID
	attrs []byte
}

func parse(b []byte) (message, error) {
	var m message
	if !IsMessage(b) {
		return m, ErrNotSTUN
	}
	m.typ = binary.BigEndian.Uint16(b[0:2])
	copy(m.tx[:], b[8:20])
	m.attrs = b[headerLen:]
	// Walk the attributes once to validate lengths and the fingerprint.
	for off := 0; off < len(m.attrs); {
		if off+4 > len(m.attrs) {
			return m, fmt.Errorf("%w: truncated attribute", ErrNotSTUN)
		}
		t := binary.BigEndian.Uint16(m.attrs[off:])
		l := int(binary.BigEndian.Uint16(m.attrs[off+2:]))
		end := off + 4 + (l+3)&^3
		if off+4+l > len(m.attrs) || end > len(m.attrs) {
			return m, fmt.Errorf("%w: attribute overruns message", ErrNotSTUN)
		}
		if t == attrFingerprint {
			if l != 4 || end != len(m.attrs) {
				return m, fmt.Errorf("%w: misplaced fingerprint", ErrNotSTUN)
			}
			want := crc32.ChecksumIEEE(b[:headerLen+off]) ^ fingerprintXOR
			if binary.BigEndian.Uint32(m.attrs[off+4:]) != want {
				return m, fmt.Errorf("%w: bad fingerprint", ErrNotSTUN)
			}
		}
		off = end
	}
	return m, nil
}

// ParseRequest accepts a Binding request and returns its transaction id.
func ParseRequest(b []byte) (TxID, error) {
	m, err := parse(b)
	if err != nil {
		return TxID{}, err
	}
	if m.typ != typeBindingRequest {
		return TxID{}, fmt.Errorf("%w: type 0x%04x is not a Binding request", ErrNotSTUN, m.typ)
	}
	return m.tx, nil
}

// ParseResponse accepts a Binding success response and returns its
// transaction id and the mapped address (XOR-MAPPED-ADDRESS, or
// MAPPED-ADDRESS from old servers).
func ParseResponse(b []byte) (TxID, netip.AddrPort, error) {
	m, err := parse(b)
	if err != nil {
		return TxID{}, netip.AddrPort{}, err
	}
	if m.typ != typeBindingSuccess {
		return m.tx, netip.AddrPort{}, fmt.Errorf("%w: type 0x%04x is not a Binding success", ErrNotSTUN, m.typ)
	}
	var mapped netip.AddrPort
	for off := 0; off+4 <= len(m.attrs); {
		t := binary.BigEndian.Uint16(m.attrs[off:])
		l := int(binary.BigEndian.Uint16(m.attrs[off+2:]))
		v := m.attrs[off+4 : off+4+l]
		switch t {
		case attrXorMappedAddress:
			if ap, ok := decodeAddr(v, true, m.tx); ok {
				return m.tx, ap, nil
			}
		case attrMappedAddress:
			if ap, ok := decodeAddr(v, false, m.tx); ok {
				mapped = ap
			}
		}
		off += 4 + (l+3)&^3
	}
	if mapped.IsValid() {
		return m.tx, mapped, nil
	}
	return m.tx, netip.AddrPort{}, fmt.Errorf("%w: no mapped address", ErrNotSTUN)
}

func decodeAddr(v []byte, xor bool, tx TxID) (netip.AddrPort, bool) {
	if len(v) < 4 {
		return netip.AddrPort{}, false
	}
	var alen int
	switch v[1] {
	case 0x01:
		alen = 4
	case 0x02:
		alen = 16
	default:
		return netip.AddrPort{}, false
	}
	if len(v) != 4+alen {
		return netip.AddrPort{}, false
	}
	port := binary.BigEndian.Uint16(v[2:4])
	raw := make([]byte, alen)
	copy(raw, v[4:])
	if xor {
		port ^= magicCookie >> 16
		key := xorKey(tx)
		for i := range raw {
			raw[i] ^= key[i]
		}
	}
	ip, ok := netip.AddrFromSlice(raw)
	if !ok {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ip, port), true
}
