package nodeplane

import (
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// postHolePunch asks this replica's streams of peerID to punch towards fromNodeID and reports
// whether one queued it. The peer's view of fromNodeID holds the endpoints that node last reported
// (and its key; wgKey is the fallback when the view has none).
func (p *Plane) postHolePunch(fromNodeID string, wgKey []byte, peerID string) bool {
	hp := &nodev1.HolePunch{PeerNodeId: fromNodeID, WireguardPublicKey: append([]byte(nil), wgKey...)}
	for _, ms := range p.streamsOf(peerID) {
		ms.mu.Lock()
		if self, ok := ms.mirror.Peer(fromNodeID); ok {
			hp.Endpoints = self.GetEndpoints()
			hp.WireguardPublicKey = self.GetWireguardPublicKey()
		}
		ms.mu.Unlock()
	}
	delivered := false
	for _, sub := range p.hub.Streams(peerID) {
		if sub.Post(hp) {
			delivered = true
		}
	}
	return delivered
}
