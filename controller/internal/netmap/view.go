package netmap

import (
	"slices"
	"strings"
)

// Apply updates the view with a delta, in the order documented on Delta. It is
// the reference for what an agent does with a delta; tests use it to check that
// a snapshot plus deltas equals a later snapshot.
func (v *View) Apply(d *Delta) {
	if d.Self != nil {
		v.Self = *d.Self
	}
	if len(d.PeersRemoved)+len(d.PeersUpserted) > 0 {
		gone := make(map[string]bool, len(d.PeersRemoved)+len(d.PeersUpserted))
		for _, r := range d.PeersRemoved {
			gone[r.NodeID] = true
		}
		for _, p := range d.PeersUpserted {
			gone[p.NodeID] = true
		}
		v.Peers = slices.DeleteFunc(v.Peers, func(p *Peer) bool { return gone[p.NodeID] })
		v.Peers = append(v.Peers, d.PeersUpserted...)
		slices.SortFunc(v.Peers, func(a, b *Peer) int { return strings.Compare(a.NodeID, b.NodeID) })
	}
	if d.PacketFilterChanged {
		v.PacketFilter = d.PacketFilter
	}
	if len(d.DNSRemoved)+len(d.DNSUpserted) > 0 {
		gone := make(map[string]bool, len(d.DNSRemoved)+len(d.DNSUpserted))
		for _, f := range d.DNSRemoved {
			gone[f] = true
		}
		for _, r := range d.DNSUpserted {
			gone[r.FQDN] = true
		}
		v.DNS = slices.DeleteFunc(v.DNS, func(r DNSRecord) bool { return gone[r.FQDN] })
		v.DNS = append(v.DNS, d.DNSUpserted...)
		slices.SortFunc(v.DNS, func(a, b DNSRecord) int { return strings.Compare(a.FQDN, b.FQDN) })
	}
	if d.RelayMap != nil {
		v.RelayMap = d.RelayMap
	}
}
