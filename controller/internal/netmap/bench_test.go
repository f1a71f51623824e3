package netmap

import (
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
)

// benchNode builds a node shaped like a real one: uuid-sized id, base64 key, an
// IPv4 and an IPv6 address, one endpoint, one tag, a user and a group.
func benchNode(i, groupSize int) Node {
	tag := fmt.Sprintf("team-%05d", i/groupSize)
	return Node{
		ID:        fmt.Sprintf("00000000-0000-4000-8000-%012d", i),
		Name:      fmt.Sprintf("host-%06d", i),
		Key:       fmt.Sprintf("%043d=", i),
		Addresses: []netip.Addr{netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)}), netip.AddrFrom16([16]byte{0xfd, 0x7a, 14: byte(i >> 8), 15: byte(i)})},
		Tags:      []string{tag},
		UserID:    fmt.Sprintf("user-%05d", i/groupSize),
		GroupIDs:  []string{"employees"},
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 51, byte(i >> 8), byte(i)}), 41641)},
		HomeRelay: "relay-eu-1",
		Online:    true,
	}
}

// selectivePolicy lets each tag group of groupSize nodes talk within itself.
func selectivePolicy(n, groupSize int) []policy.Policy {
	p := policy.Policy{ID: "teams", Enabled: true}
	for g := 0; g*groupSize < n; g++ {
		t := policy.Tag(fmt.Sprintf("team-%05d", g))
		p.Rules = append(p.Rules, policy.Rule{Action: policy.ActionAllow, Sources: []policy.Target{t},
			Destinations: []policy.Target{t}, Protocol: policy.ProtoAny})
	}
	return []policy.Policy{p}
}

func allToAll() []policy.Policy {
	return []policy.Policy{{ID: "all", Enabled: true, Rules: []policy.Rule{{Action: policy.ActionAllow,
		Sources: []policy.Target{policy.Any()}, Destinations: []policy.Target{policy.Any()}, Protocol: policy.ProtoAny}}}}
}

func heapInUse() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// loadEngine builds an engine of n nodes and returns it with the heap bytes per
// node it holds (runtime.MemStats before and after, after GC).
func loadEngine(b *testing.B, n, groupSize int, ps []policy.Policy) (*Engine, float64) {
	b.Helper()
	nodes := make([]Node, n)
	for i := range nodes {
		nodes[i] = benchNode(i, groupSize)
	}
	before := heapInUse()
	e := New(Options{})
	if err := e.Load(net1, NetworkConfig{CvlanName: "office", Domain: "mesh.example"}, nodes, ps, &RelayMap{}); err != nil {
		b.Fatal(err)
	}
	nodes = nil
	after := heapInUse()
	runtime.KeepAlive(e)
	return e, float64(after-before) / float64(n)
}

// BenchmarkJoin measures one node joining a cvlan of N nodes: ns/op is the time
// to compute and record the deltas, "affected" the nodes that get one, "B/node"
// the engine's heap per node before the joins.
func BenchmarkJoin(b *testing.B) {
	const groupSize = 50
	for _, n := range []int{10_000, 100_000} {
		for _, pc := range []struct {
			name string
			ps   []policy.Policy
		}{
			{"selective", selectivePolicy(n, groupSize)},
			{"all-to-all", allToAll()},
		} {
			b.Run(fmt.Sprintf("%s/N=%d", pc.name, n), func(b *testing.B) {
				e, perNode := loadEngine(b, n, groupSize, pc.ps)
				affected := 0
				var cpu time.Duration
				b.ResetTimer()
				for i := range b.N {
					// Join a new id into an existing team.
					node := benchNode(n+i, groupSize)
					node.Tags = benchNode((i*groupSize)%n, groupSize).Tags
					c0 := processCPU()
					ds, err := e.UpsertNode(net1, node)
					if err != nil {
						b.Fatal(err)
					}
					cpu += processCPU() - c0
					affected = len(ds)
					b.StopTimer()
					if _, err := e.RemoveNode(net1, node.ID); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				b.ReportMetric(float64(affected), "affected")
				b.ReportMetric(perNode, "B/node")
				b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
			})
		}
	}
}

// BenchmarkStatus measures an endpoint/online change of one node.
func BenchmarkStatus(b *testing.B) {
	const groupSize = 50
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("selective/N=%d", n), func(b *testing.B) {
			e, _ := loadEngine(b, n, groupSize, selectivePolicy(n, groupSize))
			id := benchNode(n/2, groupSize).ID
			affected := 0
			b.ResetTimer()
			c0 := processCPU()
			for i := range b.N {
				ds, err := e.SetStatus(net1, id, Status{Online: i%2 == 0})
				if err != nil {
					b.Fatal(err)
				}
				affected = len(ds)
			}
			b.ReportMetric(float64((processCPU()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(affected), "affected")
		})
	}
}

// BenchmarkPolicyChange measures a policy change that links two teams in a
// selective cvlan: one compilation, and work for the 100 nodes involved only.
func BenchmarkPolicyChange(b *testing.B) {
	const groupSize = 50
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("selective/N=%d", n), func(b *testing.B) {
			base := selectivePolicy(n, groupSize)
			e, _ := loadEngine(b, n, groupSize, base)
			linked := append([]policy.Policy{}, base...)
			linked = append(linked, policy.Policy{ID: "link", Enabled: true, Rules: []policy.Rule{{Action: policy.ActionAllow,
				Sources: []policy.Target{policy.Tag("team-00001")}, Destinations: []policy.Target{policy.Tag("team-00002")},
				Protocol: policy.ProtoTCP, Ports: []policy.PortRange{{First: 443, Last: 443}}}}})
			affected := 0
			b.ResetTimer()
			c0 := processCPU()
			for i := range b.N {
				ps := linked
				if i%2 == 1 {
					ps = base
				}
				ds, err := e.SetPolicies(net1, ps)
				if err != nil {
					b.Fatal(err)
				}
				affected = len(ds)
			}
			b.ReportMetric(float64((processCPU()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
			b.ReportMetric(float64(affected), "affected")
		})
	}
}

// BenchmarkSnapshot measures building one node's whole view.
func BenchmarkSnapshot(b *testing.B) {
	const groupSize = 50
	for _, n := range []int{10_000, 100_000} {
		for _, pc := range []struct {
			name string
			ps   []policy.Policy
		}{
			{"selective", selectivePolicy(n, groupSize)},
			{"all-to-all", allToAll()},
		} {
			b.Run(fmt.Sprintf("%s/N=%d", pc.name, n), func(b *testing.B) {
				e, _ := loadEngine(b, n, groupSize, pc.ps)
				id := benchNode(n/2, groupSize).ID
				peers := 0
				b.ResetTimer()
				c0 := processCPU()
				for range b.N {
					s, err := e.Snapshot(net1, id)
					if err != nil {
						b.Fatal(err)
					}
					peers = len(s.View.Peers)
				}
				b.ReportMetric(float64((processCPU()-c0).Nanoseconds())/float64(b.N), "cpu-ns/op")
				b.ReportMetric(float64(peers), "peers")
			})
		}
	}
}

// BenchmarkChurnMemory gives every node of a selective cvlan one status change
// (each reaching its 50-node group), so every node's delta ring fills up
// (50 deltas > the 32 kept): the engine's memory per node in steady state.
// One op is the whole pass; "B/node" is the heap per node afterwards.
func BenchmarkChurnMemory(b *testing.B) {
	const groupSize = 50
	for _, n := range []int{10_000, 100_000} {
		b.Run(fmt.Sprintf("selective/N=%d", n), func(b *testing.B) {
			ids := make([]string, n)
			for i := range ids {
				ids[i] = benchNode(i, groupSize).ID
			}
			before := heapInUse()
			e, _ := loadEngine(b, n, groupSize, selectivePolicy(n, groupSize))
			b.ResetTimer()
			for i := range b.N {
				for _, id := range ids {
					if _, err := e.SetStatus(net1, id, Status{Online: i%2 == 0}); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.StopTimer()
			after := heapInUse()
			runtime.KeepAlive(e)
			b.ReportMetric(float64(after-before)/float64(n), "B/node")
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/change")
		})
	}
}
