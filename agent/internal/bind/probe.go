package bind

import "bytes"

// Probe messages share the socket with WireGuard. WireGuard messages start with a type byte 1-4 followed
// by three zero bytes, so a message starting with this magic can never be one.
var probeMagic = []byte("CVLNPRB1")

const (
	probePing byte = 1
	probePong byte = 2
	probeLen       = 8 + 1 + 32 + 12
)

func isProbe(p []byte) bool { return len(p) == probeLen && bytes.HasPrefix(p, probeMagic) }

func encodeProbe(typ byte, sender [32]byte, id [12]byte) []byte {
	b := make([]byte, 0, probeLen)
	b = append(b, probeMagic...)
	b = append(b, typ)
	b = append(b, sender[:]...)
	return append(b, id[:]...)
}

func decodeProbe(p []byte) (typ byte, sender [32]byte, id [12]byte, ok bool) {
	if !isProbe(p) {
		return 0, sender, id, false
	}
	typ = p[8]
	copy(sender[:], p[9:41])
	copy(id[:], p[41:53])
	return typ, sender, id, typ == probePing || typ == probePong
}
