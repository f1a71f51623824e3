package bind

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// A minimal STUN (RFC 5389) Binding client. It sends from the WireGuard socket itself, because the
// mapping a NAT gives that socket is the endpoint peers must use.

const stunMagicCookie = 0x2112A442

func stunRequest(id [12]byte) []byte {
	b := make([]byte, 20)
	binary.BigEndian.PutUint16(b[0:], 0x0001) // Binding request
	binary.BigEndian.PutUint32(b[4:], stunMagicCookie)
	copy(b[8:], id[:])
	return b
}

func isSTUNResponse(p []byte) bool {
	return len(p) >= 20 && binary.BigEndian.Uint16(p[0:]) == 0x0101 && binary.BigEndian.Uint32(p[4:]) == stunMagicCookie
}

// parseSTUNResponse returns the transaction id and the XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS).
func parseSTUNResponse(p []byte) ([12]byte, netip.AddrPort, bool) {
	var id [12]byte
	if !isSTUNResponse(p) {
		return id, netip.AddrPort{}, false
	}
	copy(id[:], p[8:20])
	n := int(binary.BigEndian.Uint16(p[2:]))
	if 20+n > len(p) {
		return id, netip.AddrPort{}, false
	}
	attrs := p[20 : 20+n]
	var mapped netip.AddrPort
	for len(attrs) >= 4 {
		typ := binary.BigEndian.Uint16(attrs[0:])
		l := int(binary.BigEndian.Uint16(attrs[2:]))
		if 4+l > len(attrs) {
			break
		}
		v := attrs[4 : 4+l]
		switch typ {
		case 0x0020: // XOR-MAPPED-ADDRESS
			if ap, ok := decodeSTUNAddr(v, true, p[4:20]); ok {
				return id, ap, true
			}
		case 0x0001: // MAPPED-ADDRESS
			if ap, ok := decodeSTUNAddr(v, false, nil); ok {
				mapped = ap
			}
		}
		pad := (4 - l%4) % 4
		if 4+l+pad > len(attrs) {
			break
		}
		attrs = attrs[4+l+pad:]
	}
	return id, mapped, mapped.IsValid()
}

func decodeSTUNAddr(v []byte, xor bool, cookieAndID []byte) (netip.AddrPort, bool) {
	if len(v) < 4 {
		return netip.AddrPort{}, false
	}
	port := binary.BigEndian.Uint16(v[2:])
	if xor {
		port ^= stunMagicCookie >> 16
	}
	var ip []byte
	switch v[1] {
	case 1:
		if len(v) < 8 {
			return netip.AddrPort{}, false
		}
		ip = append([]byte(nil), v[4:8]...)
	case 2:
		if len(v) < 20 {
			return netip.AddrPort{}, false
		}
		ip = append([]byte(nil), v[4:20]...)
	default:
		return netip.AddrPort{}, false
	}
	if xor {
		for i := range ip {
			ip[i] ^= cookieAndID[i]
		}
	}
	a, ok := netip.AddrFromSlice(ip)
	return netip.AddrPortFrom(a.Unmap(), port), ok
}

func (b *Bind) handleSTUN(p []byte) {
	id, ap, ok := parseSTUNResponse(p)
	if !ok {
		return
	}
	b.mu.Lock()
	ch := b.stunWait[id]
	delete(b.stunWait, id)
	b.mu.Unlock()
	if ch != nil {
		ch <- ap
	}
}

// STUN asks each server (host:port, UDP) for this socket's public endpoint and returns the first answer.
func (b *Bind) STUN(ctx context.Context, servers []string) (netip.AddrPort, error) {
	ch := make(chan netip.AddrPort, len(servers))
	var ids [][12]byte
	b.mu.Lock()
	u := b.udp
	b.mu.Unlock()
	if u == nil {
		return netip.AddrPort{}, net.ErrClosed
	}
	var lastErr error
	for _, s := range servers {
		ua, err := net.ResolveUDPAddr("udp", s)
		if err != nil {
			lastErr = err
			continue
		}
		id := newTxID()
		b.mu.Lock()
		b.stunWait[id] = ch
		b.mu.Unlock()
		ids = append(ids, id)
		if _, err := u.WriteToUDPAddrPort(stunRequest(id), unmap(ua.AddrPort())); err != nil {
			lastErr = err
		}
	}
	defer func() {
		b.mu.Lock()
		for _, id := range ids {
			delete(b.stunWait, id)
		}
		b.mu.Unlock()
	}()
	if len(ids) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNoSTUN, lastErr)
	}
	select {
	case ap := <-ch:
		return ap, nil
	case <-ctx.Done():
		return netip.AddrPort{}, fmt.Errorf("%w: %w (last error %v)", ErrNoSTUN, ctx.Err(), lastErr)
	}
}
