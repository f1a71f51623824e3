package netmap

// Merge combines consecutive deltas of one node (oldest first, as DeltasSince
// returns them) into one delta from the first's BaseVersion to the last's
// Version, keeping only each peer's and DNS name's final state. The stream
// layer uses it to coalesce a burst, or a resume, into one message. A single
// delta is returned as is; nil for none.
func Merge(ds []*Delta) *Delta {
	switch len(ds) {
	case 0:
		return nil
	case 1:
		return ds[0]
	}
	first, last := ds[0], ds[len(ds)-1]
	c := &Change{}
	type peerState struct {
		up  *Peer
		ref PeerRef
	}
	peers := map[string]peerState{}
	var peerOrder []string
	type dnsState struct {
		rec     DNSRecord
		removed bool
	}
	names := map[string]dnsState{}
	var nameOrder []string
	for _, d := range ds {
		if d.Self != nil {
			c.Self = d.Self
		}
		for _, r := range d.PeersRemoved {
			if _, ok := peers[r.NodeID]; !ok {
				peerOrder = append(peerOrder, r.NodeID)
			}
			peers[r.NodeID] = peerState{ref: r}
		}
		for _, p := range d.PeersUpserted {
			if _, ok := peers[p.NodeID]; !ok {
				peerOrder = append(peerOrder, p.NodeID)
			}
			peers[p.NodeID] = peerState{up: p}
		}
		if d.PacketFilterChanged {
			c.PacketFilterChanged, c.PacketFilter = true, d.PacketFilter
		}
		for _, f := range d.DNSRemoved {
			if _, ok := names[f]; !ok {
				nameOrder = append(nameOrder, f)
			}
			names[f] = dnsState{removed: true}
		}
		for _, r := range d.DNSUpserted {
			if _, ok := names[r.FQDN]; !ok {
				nameOrder = append(nameOrder, r.FQDN)
			}
			names[r.FQDN] = dnsState{rec: r}
		}
		if d.RelayMap != nil {
			c.RelayMap = d.RelayMap
		}
	}
	for _, id := range peerOrder {
		if s := peers[id]; s.up != nil {
			c.PeersUpserted = append(c.PeersUpserted, s.up)
		} else {
			c.PeersRemoved = append(c.PeersRemoved, s.ref)
		}
	}
	for _, f := range nameOrder {
		if s := names[f]; s.removed {
			c.DNSRemoved = append(c.DNSRemoved, f)
		} else {
			c.DNSUpserted = append(c.DNSUpserted, s.rec)
		}
	}
	return &Delta{NodeID: last.NodeID, Epoch: last.Epoch, BaseVersion: first.BaseVersion, Version: last.Version, Change: c}
}
