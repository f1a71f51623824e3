package server

import "sync/atomic"

// DropReason says why a packet was not forwarded.
type DropReason int

// Drop reasons. A packet to another tenant's key is counted as
// DropCrossTenant here but looks exactly like DropUnknownDest to its sender.
const (
	DropQueueFull DropReason = iota
	DropRateLimited
	DropUnknownDest
	DropCrossTenant
	DropDestClosed
	DropMeshNoRoute
	numDropReasons
)

// String is the reason's label in metrics and stats.
func (r DropReason) String() string {
	switch r {
	case DropQueueFull:
		return "queue_full"
	case DropRateLimited:
		return "rate_limited"
	case DropUnknownDest:
		return "unknown_dest"
	case DropCrossTenant:
		return "cross_tenant"
	case DropDestClosed:
		return "dest_closed"
	case DropMeshNoRoute:
		return "mesh_no_route"
	}
	return "unknown"
}

// RejectReason says why a connection was refused or dropped.
type RejectReason int

// Reject reasons.
const (
	RejectUnauthenticated RejectReason = iota
	RejectAdmission
	RejectProtocol
	RejectWriteTimeout
	RejectIdle
	numRejectReasons
)

// String is the reason's label in metrics and stats.
func (r RejectReason) String() string {
	switch r {
	case RejectUnauthenticated:
		return "unauthenticated"
	case RejectAdmission:
		return "admission_limit"
	case RejectProtocol:
		return "protocol_error"
	case RejectWriteTimeout:
		return "write_timeout"
	case RejectIdle:
		return "idle_timeout"
	}
	return "unknown"
}

// Stats is a snapshot of the relay's counters.
type Stats struct {
	RelayID, Region string
	// Clients is the number of connected clients (not mesh peers).
	Clients int
	// MeshPeersIn/Out count inbound and outbound mesh connections.
	MeshPeersIn, MeshPeersOut int
	// RemoteKeys is the number of keys known on other relays of the region.
	RemoteKeys int
	// PacketsForwarded and BytesForwarded count packets accepted for
	// delivery (to a local client or a mesh peer), payload bytes only.
	PacketsForwarded, BytesForwarded uint64
	// Drops counts dropped packets by reason.
	Drops map[string]uint64
	// Rejects counts refused or dropped connections by reason.
	Rejects map[string]uint64
}

// counters belong to one connection's reader goroutine: only it writes, so
// the atomics are uncontended; Stats sums them.
type counters struct {
	packets, bytes atomic.Uint64
	drops          [numDropReasons]atomic.Uint64
}

func (c *counters) addTo(s *Stats) {
	s.PacketsForwarded += c.packets.Load()
	s.BytesForwarded += c.bytes.Load()
	for i := range c.drops {
		if v := c.drops[i].Load(); v > 0 {
			s.Drops[DropReason(i).String()] += v
		}
	}
}

func (c *counters) moveTo(dst *counters) {
	dst.packets.Add(c.packets.Load())
	dst.bytes.Add(c.bytes.Load())
	for i := range c.drops {
		dst.drops[i].Add(c.drops[i].Load())
	}
}
