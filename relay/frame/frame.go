// Package frame defines the binary framing spoken between cvlan-relay and its
// clients (and between relays of one region) after the HTTP upgrade.
//
// Every frame is a 1-byte type, a 4-byte big-endian payload length and the
// payload. The payload is at most MaxPayload bytes; a peer that announces a
// longer frame is broken or hostile and the connection is closed.
//
//	ServerHello   relay -> client   version(1) key(32)        the client's key as the relay sees it
//	SendPacket    client -> relay   dst(32) packet            send packet to the key dst
//	RecvPacket    relay -> client   src(32) packet            packet from the key src
//	KeepAlive     both              (empty)                   keeps idle connections and NAT state alive
//	PeerGone      relay -> client   key(32) reason(1)         key is no longer reachable through this relay
//	PeerPresent   relay -> relay    key(32) tenant            key connected to the sending relay (mesh)
//	Ping          both              data(8)                   the other side answers Pong with the same data
//	Pong          both              data(8)
//	Restarting    relay -> client   reconnectIn(4) tryFor(4)  milliseconds: reconnect after, keep trying for
//	ForwardPacket relay -> relay    src(32) dst(32) packet    one-hop forward inside a region mesh
//	WatchConns    relay -> relay    (empty)                   subscribe to PeerPresent/PeerGone of the peer
//
// Unknown frame types are skipped by readers so that the protocol can grow.
package frame

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
)

// Type is a frame type.
type Type byte

// Frame types. Values are part of the wire protocol and never change.
const (
	TypeServerHello   Type = 0x01
	TypeSendPacket    Type = 0x02
	TypeRecvPacket    Type = 0x03
	TypeKeepAlive     Type = 0x04
	TypePeerGone      Type = 0x05
	TypePeerPresent   Type = 0x06
	TypePing          Type = 0x07
	TypePong          Type = 0x08
	TypeRestarting    Type = 0x09
	TypeForwardPacket Type = 0x0a
	TypeWatchConns    Type = 0x0b
)

// String returns the frame type's name for logs.
func (t Type) String() string {
	switch t {
	case TypeServerHello:
		return "ServerHello"
	case TypeSendPacket:
		return "SendPacket"
	case TypeRecvPacket:
		return "RecvPacket"
	case TypeKeepAlive:
		return "KeepAlive"
	case TypePeerGone:
		return "PeerGone"
	case TypePeerPresent:
		return "PeerPresent"
	case TypePing:
		return "Ping"
	case TypePong:
		return "Pong"
	case TypeRestarting:
		return "Restarting"
	case TypeForwardPacket:
		return "ForwardPacket"
	case TypeWatchConns:
		return "WatchConns"
	}
	return fmt.Sprintf("Type(0x%02x)", byte(t))
}

const (
	// HeaderLen is the length of a frame header: type and payload length.
	HeaderLen = 5
	// MaxPayload is the largest payload a frame may carry (64 KiB).
	MaxPayload = 64 << 10
	// KeyLen is the length of a WireGuard public key.
	KeyLen = 32
	// MaxPacket is the largest packet a SendPacket frame can carry.
	MaxPacket = MaxPayload - KeyLen
	// MaxForwardPacket is the largest packet a ForwardPacket frame can carry.
	MaxForwardPacket = MaxPayload - 2*KeyLen
	// MaxTenantLen bounds the tenant id in a PeerPresent frame.
	MaxTenantLen = 255
	// ProtocolVersion is the version sent in ServerHello.
	ProtocolVersion = 1
	// UpgradeProtocol is the HTTP Upgrade token that switches to this framing.
	UpgradeProtocol = "cloudvlan-relay-v1"
	// Path is the HTTP path of the upgrade endpoint.
	Path = "/relay"
)

// Key is a WireGuard public key; relays address clients by it.
type Key [KeyLen]byte

// String returns the key as lowercase hex (the form used in certificates).
func (k Key) String() string { return hex.EncodeToString(k[:]) }

// ShortString returns a short prefix of the key for logs.
func (k Key) ShortString() string { return hex.EncodeToString(k[:4]) }

// IsZero reports whether k is the all-zero key.
func (k Key) IsZero() bool { return k == Key{} }

// ParseKey parses 64 hex characters into a Key.
func ParseKey(s string) (Key, error) {
	var k Key
	if len(s) != 2*KeyLen {
		return k, fmt.Errorf("parse key: want %d hex characters, got %d", 2*KeyLen, len(s))
	}
	if _, err := hex.Decode(k[:], []byte(s)); err != nil {
		return k, fmt.Errorf("parse key: %w", err)
	}
	return k, nil
}

// PeerGoneReason says why a PeerGone frame was sent.
type PeerGoneReason byte

// PeerGone reasons.
const (
	// PeerGoneDisconnected: the peer was connected and left.
	PeerGoneDisconnected PeerGoneReason = 0x01
	// PeerGoneNotHere: the peer is not connected to this relay (or its region).
	PeerGoneNotHere PeerGoneReason = 0x02
)

// Errors returned by readers and parsers.
var (
	// ErrFrameTooLarge means a header announced a payload above MaxPayload.
	ErrFrameTooLarge = errors.New("frame: payload larger than maximum")
	// ErrMalformed means a payload does not fit its frame type.
	ErrMalformed = errors.New("frame: malformed payload")
	// ErrShortBuffer means the caller's buffer cannot hold the payload.
	ErrShortBuffer = errors.New("frame: buffer too small for payload")
)

// PutHeader writes a header for a frame of type t with payload length n into b[:HeaderLen].
func PutHeader(b []byte, t Type, n int) {
	_ = b[HeaderLen-1]
	b[0] = byte(t)
	binary.BigEndian.PutUint32(b[1:5], uint32(n))
}

// ParseHeader decodes a header and checks the length bound.
func ParseHeader(b []byte) (Type, int, error) {
	if len(b) < HeaderLen {
		return 0, 0, ErrMalformed
	}
	n := binary.BigEndian.Uint32(b[1:5])
	if n > MaxPayload {
		return Type(b[0]), 0, fmt.Errorf("%w: %d bytes", ErrFrameTooLarge, n)
	}
	return Type(b[0]), int(n), nil
}

// ParseServerHello decodes a ServerHello payload.
func ParseServerHello(p []byte) (version byte, self Key, err error) {
	if len(p) < 1+KeyLen {
		return 0, self, fmt.Errorf("%w: ServerHello of %d bytes", ErrMalformed, len(p))
	}
	copy(self[:], p[1:1+KeyLen])
	return p[0], self, nil
}

// ParseKeyPacket decodes a SendPacket or RecvPacket payload: a key and the packet.
// The packet aliases p.
func ParseKeyPacket(p []byte) (Key, []byte, error) {
	var k Key
	if len(p) < KeyLen {
		return k, nil, fmt.Errorf("%w: %d bytes, want at least a key", ErrMalformed, len(p))
	}
	copy(k[:], p[:KeyLen])
	return k, p[KeyLen:], nil
}

// ParseForwardPacket decodes a ForwardPacket payload. The packet aliases p.
func ParseForwardPacket(p []byte) (src, dst Key, pkt []byte, err error) {
	if len(p) < 2*KeyLen {
		return src, dst, nil, fmt.Errorf("%w: ForwardPacket of %d bytes", ErrMalformed, len(p))
	}
	copy(src[:], p[:KeyLen])
	copy(dst[:], p[KeyLen:2*KeyLen])
	return src, dst, p[2*KeyLen:], nil
}

// ParsePeerGone decodes a PeerGone payload.
func ParsePeerGone(p []byte) (Key, PeerGoneReason, error) {
	var k Key
	if len(p) < KeyLen+1 {
		return k, 0, fmt.Errorf("%w: PeerGone of %d bytes", ErrMalformed, len(p))
	}
	copy(k[:], p[:KeyLen])
	return k, PeerGoneReason(p[KeyLen]), nil
}

// ParsePeerPresent decodes a PeerPresent payload: the key and its tenant.
func ParsePeerPresent(p []byte) (Key, string, error) {
	var k Key
	if len(p) < KeyLen || len(p) > KeyLen+MaxTenantLen {
		return k, "", fmt.Errorf("%w: PeerPresent of %d bytes", ErrMalformed, len(p))
	}
	copy(k[:], p[:KeyLen])
	return k, string(p[KeyLen:]), nil
}

// ParsePing decodes a Ping or Pong payload.
func ParsePing(p []byte) ([8]byte, error) {
	var d [8]byte
	if len(p) != 8 {
		return d, fmt.Errorf("%w: ping of %d bytes", ErrMalformed, len(p))
	}
	copy(d[:], p)
	return d, nil
}

// ParseRestarting decodes a Restarting payload (both values in milliseconds).
func ParseRestarting(p []byte) (reconnectInMs, tryForMs uint32, err error) {
	if len(p) < 8 {
		return 0, 0, fmt.Errorf("%w: Restarting of %d bytes", ErrMalformed, len(p))
	}
	return binary.BigEndian.Uint32(p[0:4]), binary.BigEndian.Uint32(p[4:8]), nil
}
