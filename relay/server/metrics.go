package server

import "github.com/prometheus/client_golang/prometheus"

// Collector exposes the relay's counters to Prometheus. It reads them at
// scrape time, so the forwarding path pays nothing for metrics.
func (s *Server) Collector() prometheus.Collector { return collector{s} }

var (
	descClients = prometheus.NewDesc("cvlan_relay_clients", "Connected clients (nodes and vrouters).", nil, nil)
	descMesh    = prometheus.NewDesc("cvlan_relay_mesh_peers", "Connected mesh peers by direction.", []string{"direction"}, nil)
	descRemote  = prometheus.NewDesc("cvlan_relay_remote_keys", "Keys known to be connected to other relays of the region.", nil, nil)
	descPackets = prometheus.NewDesc("cvlan_relay_forwarded_packets_total", "Packets accepted for delivery.", nil, nil)
	descBytes   = prometheus.NewDesc("cvlan_relay_forwarded_bytes_total", "Packet bytes accepted for delivery.", nil, nil)
	descDrops   = prometheus.NewDesc("cvlan_relay_dropped_packets_total", "Packets dropped, by reason.", []string{"reason"}, nil)
	descRejects = prometheus.NewDesc("cvlan_relay_rejected_connections_total", "Connections refused or dropped, by reason.", []string{"reason"}, nil)
	allDescs    = []*prometheus.Desc{descClients, descMesh, descRemote, descPackets, descBytes, descDrops, descRejects}
)

type collector struct{ s *Server }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.Stats()
	ch <- prometheus.MustNewConstMetric(descClients, prometheus.GaugeValue, float64(st.Clients))
	ch <- prometheus.MustNewConstMetric(descMesh, prometheus.GaugeValue, float64(st.MeshPeersIn), "in")
	ch <- prometheus.MustNewConstMetric(descMesh, prometheus.GaugeValue, float64(st.MeshPeersOut), "out")
	ch <- prometheus.MustNewConstMetric(descRemote, prometheus.GaugeValue, float64(st.RemoteKeys))
	ch <- prometheus.MustNewConstMetric(descPackets, prometheus.CounterValue, float64(st.PacketsForwarded))
	ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(st.BytesForwarded))
	// Every reason is exported, zero or not, so that rate() works from the start.
	for r := DropReason(0); r < numDropReasons; r++ {
		ch <- prometheus.MustNewConstMetric(descDrops, prometheus.CounterValue, float64(st.Drops[r.String()]), r.String())
	}
	for r := RejectReason(0); r < numRejectReasons; r++ {
		ch <- prometheus.MustNewConstMetric(descRejects, prometheus.CounterValue, float64(st.Rejects[r.String()]), r.String())
	}
}
