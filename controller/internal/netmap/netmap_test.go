package netmap

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/cloudvlan/cloudvlan/controller/internal/policy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var net1 = NetworkID{Tenant: "t1", Cvlan: "cv1"}

func addr4(i int) netip.Addr { return netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}) }

func mkNode(id string, i int, tags ...string) Node {
	return Node{
		ID: id, Name: id, Key: "key-" + id, Tags: tags,
		Addresses: []netip.Addr{addr4(i)},
		Endpoints: []netip.AddrPort{netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}), 51820)},
	}
}

func tagPolicy(tags ...string) []policy.Policy {
	p := policy.Policy{ID: "p", Enabled: true}
	for _, t := range tags {
		p.Rules = append(p.Rules, policy.Rule{Action: policy.ActionAllow, Sources: []policy.Target{policy.Tag(t)},
			Destinations: []policy.Target{policy.Tag(t)}, Protocol: policy.ProtoAny})
	}
	return []policy.Policy{p}
}

// canon renders a view deterministically (dereferencing peers) for comparison.
func canon(v View) string {
	var b strings.Builder
	fmt.Fprintf(&b, "self %+v\n", v.Self)
	for _, p := range v.Peers {
		fmt.Fprintf(&b, "peer %+v\n", *p)
	}
	for _, r := range v.PacketFilter {
		fmt.Fprintf(&b, "filter %+v\n", r)
	}
	for _, r := range v.DNS {
		fmt.Fprintf(&b, "dns %+v\n", r)
	}
	if v.RelayMap != nil {
		fmt.Fprintf(&b, "relay %+v\n", *v.RelayMap)
	}
	return b.String()
}

func peerIDs(v View) []string {
	var out []string
	for _, p := range v.Peers {
		out = append(out, p.NodeID)
	}
	return out
}

func mustSnap(t *testing.T, e *Engine, id string) Snapshot {
	t.Helper()
	s, err := e.Snapshot(net1, id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSnapshotThenDeltas(t *testing.T) {
	e := New(Options{})
	e.SetNetworkConfig(net1, NetworkConfig{CvlanName: "office", Domain: "mesh.example"})
	if _, err := e.SetPolicies(net1, tagPolicy("web", "db")); err != nil {
		t.Fatal(err)
	}
	for i, n := range []Node{mkNode("a", 1, "web"), mkNode("b", 2, "web"), mkNode("c", 3, "db")} {
		if _, err := e.UpsertNode(net1, n); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
	}
	snap := mustSnap(t, e, "a")
	if got := peerIDs(snap.View); !slices.Equal(got, []string{"b"}) {
		t.Fatalf("a's peers = %v, want [b]", got)
	}
	if snap.View.Self.FQDN != "a.office.mesh.example" {
		t.Errorf("self fqdn = %q", snap.View.Self.FQDN)
	}
	if len(snap.View.DNS) != 2 || snap.View.DNS[1].FQDN != "b.office.mesh.example" {
		t.Errorf("dns = %+v", snap.View.DNS)
	}

	// d joins with tag web: a and b get d; c gets nothing.
	deltas, err := e.UpsertNode(net1, mkNode("d", 4, "web"))
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*Delta{}
	for _, d := range deltas {
		got[d.NodeID] = d
	}
	if len(got) != 2 || got["a"] == nil || got["b"] == nil {
		t.Fatalf("deltas for %v, want a and b", slices.Collect(func(yield func(string) bool) {
			for k := range got {
				if !yield(k) {
					return
				}
			}
		}))
	}
	da := got["a"]
	if da.Version != snap.Version+1 || da.Epoch != snap.Epoch {
		t.Errorf("delta version %d/%d, want %d/%d", da.Epoch, da.Version, snap.Epoch, snap.Version+1)
	}
	if len(da.PeersUpserted) != 1 || da.PeersUpserted[0].NodeID != "d" || !da.PacketFilterChanged {
		t.Errorf("delta for a = %+v", da)
	}
	v := snap.View
	v.Apply(da)
	if now := mustSnap(t, e, "a"); canon(v) != canon(now.View) {
		t.Errorf("snapshot+delta != snapshot\n%s\n%s", canon(v), canon(now.View))
	}

	// d's tag changes to db: a, b lose d; c gains it.
	deltas, err = e.UpsertNode(net1, mkNode("d", 4, "db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range deltas {
		switch d.NodeID {
		case "a", "b":
			if len(d.PeersRemoved) != 1 || d.PeersRemoved[0] != (PeerRef{NodeID: "d", Key: "key-d"}) ||
				!slices.Equal(d.DNSRemoved, []string{"d.office.mesh.example"}) {
				t.Errorf("delta for %s = %+v", d.NodeID, d)
			}
		case "c":
			if len(d.PeersUpserted) != 1 || d.PeersUpserted[0].NodeID != "d" {
				t.Errorf("delta for c = %+v", d)
			}
		case "d":
			if d.Self == nil || !slices.Equal(d.Self.Tags, []string{"db"}) || len(d.PeersRemoved) != 2 || len(d.PeersUpserted) != 1 {
				t.Errorf("delta for d = %+v", d)
			}
		default:
			t.Errorf("unexpected delta for %s", d.NodeID)
		}
	}
	if len(deltas) != 4 {
		t.Errorf("got %d deltas, want 4 (a, b, c, d)", len(deltas))
	}
}

func TestHistory(t *testing.T) {
	e := New(Options{History: 3})
	if _, err := e.SetPolicies(net1, tagPolicy("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.UpsertNode(net1, mkNode("a", 1, "x")); err != nil {
		t.Fatal(err)
	}
	s := mustSnap(t, e, "a")
	var sent []*Delta
	for i := 2; i <= 6; i++ {
		ds, err := e.UpsertNode(net1, mkNode(fmt.Sprintf("n%d", i), i, "x"))
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range ds {
			if d.NodeID == "a" {
				sent = append(sent, d)
			}
		}
	}
	if len(sent) != 5 {
		t.Fatalf("a got %d deltas, want 5", len(sent))
	}
	tests := []struct {
		name    string
		epoch   uint64
		version uint64
		want    []*Delta
		err     error
	}{
		{"current", s.Epoch, s.Version + 5, nil, nil},
		{"one behind", s.Epoch, s.Version + 4, sent[4:], nil},
		{"at history limit", s.Epoch, s.Version + 2, sent[2:], nil},
		{"beyond history", s.Epoch, s.Version + 1, nil, ErrTooOld},
		{"snapshot version", s.Epoch, s.Version, nil, ErrTooOld},
		{"future version", s.Epoch, s.Version + 6, nil, ErrTooOld},
		{"other epoch", s.Epoch + 1, s.Version + 5, nil, ErrTooOld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := e.DeltasSince(net1, "a", tt.epoch, tt.version)
			if !errors.Is(err, tt.err) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("got %d deltas, want %d", len(got), len(tt.want))
			}
		})
	}
	if _, err := e.DeltasSince(net1, "zz", s.Epoch, 1); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("unknown node: %v", err)
	}
	if _, err := e.Snapshot(NetworkID{Tenant: "x"}, "a"); !errors.Is(err, ErrUnknownNetwork) {
		t.Errorf("unknown network: %v", err)
	}
	// A node removed and re-added is a new incarnation: the old epoch is refused.
	if _, err := e.RemoveNode(net1, "a"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.UpsertNode(net1, mkNode("a", 1, "x")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.DeltasSince(net1, "a", s.Epoch, s.Version+5); !errors.Is(err, ErrTooOld) {
		t.Errorf("old incarnation: %v, want ErrTooOld", err)
	}
}

func TestInvalidInput(t *testing.T) {
	e := New(Options{})
	if _, err := e.UpsertNode(net1, Node{}); !errors.Is(err, ErrInvalidNode) {
		t.Errorf("empty id: %v", err)
	}
	if _, err := e.UpsertNode(net1, mkNode("a", 1)); err != nil {
		t.Fatal(err)
	}
	n := mkNode("b", 2)
	n.Name = "A"
	if _, err := e.UpsertNode(net1, n); !errors.Is(err, ErrNameConflict) {
		t.Errorf("duplicate name: %v", err)
	}
	bad := []policy.Policy{{ID: "p", Enabled: true, Rules: []policy.Rule{{Action: policy.ActionAllow}}}}
	if _, err := e.SetPolicies(net1, bad); !errors.Is(err, policy.ErrInvalidRule) {
		t.Errorf("invalid policy: %v", err)
	}
	if _, err := e.RemoveNode(net1, "nope"); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("remove unknown: %v", err)
	}
	if _, err := e.SetStatus(net1, "nope", Status{}); !errors.Is(err, ErrUnknownNode) {
		t.Errorf("status unknown: %v", err)
	}
}

// TestSelectiveChangeTouchesOnlyItsGroup builds 40 tag groups of 50 and checks
// that a join reaches exactly its group.
func TestSelectiveChangeTouchesOnlyItsGroup(t *testing.T) {
	const groups, size = 40, 50
	e := New(Options{})
	var tags []string
	var nodes []Node
	for g := range groups {
		tags = append(tags, fmt.Sprintf("g%d", g))
		for i := range size {
			k := g*size + i
			nodes = append(nodes, mkNode(fmt.Sprintf("n%d", k), k+1, tags[g]))
		}
	}
	if err := e.Load(net1, NetworkConfig{Domain: "mesh"}, nodes, tagPolicy(tags...), nil); err != nil {
		t.Fatal(err)
	}
	deltas, err := e.UpsertNode(net1, mkNode("new", groups*size+1, "g7"))
	if err != nil {
		t.Fatal(err)
	}
	if len(deltas) != size {
		t.Fatalf("%d deltas, want %d", len(deltas), size)
	}
	for _, d := range deltas {
		var k int
		fmt.Sscanf(d.NodeID, "n%d", &k)
		if k/size != 7 || len(d.PeersUpserted) != 1 || !d.PacketFilterChanged {
			t.Errorf("unexpected delta %+v", d)
		}
	}
	// An endpoint change reaches the same 50 nodes with only the peer record.
	deltas, err = e.SetStatus(net1, "new", Status{Online: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(deltas) != size || deltas[0].PacketFilterChanged || len(deltas[0].PeersUpserted) != 1 || !deltas[0].PeersUpserted[0].Online {
		t.Errorf("status: %d deltas, first %+v", len(deltas), deltas[0])
	}

	// Linking two groups touches their 100 members only.
	linked := append(tagPolicy(tags...), policy.Policy{ID: "link", Enabled: true, Rules: []policy.Rule{{Action: policy.ActionAllow,
		Sources: []policy.Target{policy.Tag("g1")}, Destinations: []policy.Target{policy.Tag("g2")}, Protocol: policy.ProtoTCP}}})
	deltas, err = e.SetPolicies(net1, linked)
	if err != nil {
		t.Fatal(err)
	}
	if len(deltas) != 2*size {
		t.Errorf("link: %d deltas, want %d", len(deltas), 2*size)
	}
	for _, d := range deltas {
		if len(d.PeersUpserted) != size || d.Resync {
			t.Errorf("link: delta for %s has %d new peers (resync %v), want %d", d.NodeID, len(d.PeersUpserted), d.Resync, size)
			break
		}
	}

	// Going all-to-all would add ~2,000 peers per node: every node resyncs
	// instead of receiving a huge delta.
	deltas, err = e.SetPolicies(net1, allToAll())
	if err != nil {
		t.Fatal(err)
	}
	if len(deltas) != groups*size+1 {
		t.Errorf("all-to-all: %d deltas, want %d", len(deltas), groups*size+1)
	}
	for _, d := range deltas {
		if !d.Resync {
			t.Errorf("all-to-all: delta for %s is not a resync", d.NodeID)
			break
		}
	}
}

// randomWorld drives an engine with random changes and keeps, per node, the view
// an agent would hold by applying the returned deltas.
type randomWorld struct {
	t     *testing.T
	r     *rand.Rand
	e     *Engine
	views map[string]View
	vers  map[string]uint64
	// lagging agents catch up now and then through DeltasSince and Merge.
	lag       map[string]Snapshot
	resumes   int
	snapshots int
	resyncs   int
}

var (
	rwTags   = []string{"a", "b", "c"}
	rwUsers  = []string{"u1", "u2"}
	rwGroups = []string{"g1", "g2"}
)

func (w *randomWorld) randNode(i int) Node {
	r := w.r
	n := mkNode(fmt.Sprintf("n%02d", i), i)
	if r.IntN(4) == 0 {
		n.Name = fmt.Sprintf("renamed%02d", i)
	}
	if r.IntN(3) == 0 {
		n.Key = fmt.Sprintf("key-%d", r.IntN(1000))
	}
	for _, t := range rwTags {
		if r.IntN(3) == 0 {
			n.Tags = append(n.Tags, t)
		}
	}
	n.UserID = rwUsers[r.IntN(len(rwUsers))]
	if r.IntN(2) == 0 {
		n.GroupIDs = []string{rwGroups[r.IntN(len(rwGroups))]}
	}
	if r.IntN(4) == 0 {
		n.Addresses = []netip.Addr{addr4(i + 100)}
	}
	if r.IntN(5) == 0 {
		n.Routes = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(r.IntN(2)), byte(i), 0}), 24)}
	}
	return n
}

func (w *randomWorld) randTarget() policy.Target {
	r := w.r
	switch r.IntN(9) {
	case 0:
		return policy.Any()
	case 1:
		return policy.User(rwUsers[r.IntN(len(rwUsers))])
	case 2:
		return policy.Group(rwGroups[r.IntN(len(rwGroups))])
	case 3, 4, 5:
		return policy.Tag(rwTags[r.IntN(len(rwTags))])
	case 6:
		return policy.Node(fmt.Sprintf("n%02d", r.IntN(12)))
	default:
		return policy.CIDR(netip.MustParsePrefix([]string{"10.0.0.0/8", "100.64.0.0/26", "10.1.0.0/16"}[r.IntN(3)]))
	}
}

func (w *randomWorld) randPolicies() []policy.Policy {
	r := w.r
	var ps []policy.Policy
	for i := range 1 + r.IntN(3) {
		p := policy.Policy{ID: fmt.Sprintf("p%d", i), Enabled: r.IntN(5) > 0, Priority: r.IntN(2)}
		for range 1 + r.IntN(3) {
			rule := policy.Rule{Action: policy.ActionAllow, Protocol: policy.Protocol(r.IntN(4)),
				Sources: []policy.Target{w.randTarget()}, Destinations: []policy.Target{w.randTarget()}}
			if r.IntN(4) == 0 {
				rule.Action = policy.ActionDeny
			}
			if rule.Protocol == policy.ProtoTCP && r.IntN(2) == 0 {
				rule.Ports = []policy.PortRange{{First: 22, Last: 22}}
			}
			p.Rules = append(p.Rules, rule)
		}
		ps = append(ps, p)
	}
	return ps
}

// apply feeds the deltas of one change to the agent views and checks that each
// delta follows the view's version and changes it (no spurious deltas).
func (w *randomWorld) apply(step int, what string, ds []*Delta, err error) {
	t := w.t
	if err != nil {
		if errors.Is(err, ErrNameConflict) {
			return
		}
		t.Fatalf("step %d %s: %v", step, what, err)
	}
	seen := map[string]bool{}
	for _, d := range ds {
		if seen[d.NodeID] {
			t.Fatalf("step %d %s: two deltas for %s", step, what, d.NodeID)
		}
		seen[d.NodeID] = true
		if d.Resync {
			s := mustSnap(t, w.e, d.NodeID)
			if s.Epoch != d.Epoch || s.Version != d.Version {
				t.Fatalf("step %d %s: resync of %s at %d/%d, snapshot %d/%d", step, what, d.NodeID, d.Epoch, d.Version, s.Epoch, s.Version)
			}
			w.views[d.NodeID], w.vers[d.NodeID] = s.View, s.Version
			w.resyncs++
			continue
		}
		v, ok := w.views[d.NodeID]
		if !ok {
			t.Fatalf("step %d %s: delta for %s which has no snapshot", step, what, d.NodeID)
		}
		if d.Version != w.vers[d.NodeID]+1 || d.BaseVersion != w.vers[d.NodeID] {
			t.Fatalf("step %d %s: %s delta version %d after %d", step, what, d.NodeID, d.Version, w.vers[d.NodeID])
		}
		before := canon(v)
		v.Peers = slices.Clone(v.Peers)
		v.DNS = slices.Clone(v.DNS)
		v.Apply(d)
		if canon(v) == before {
			t.Fatalf("step %d %s: delta for %s changes nothing: %+v", step, what, d.NodeID, d)
		}
		w.views[d.NodeID] = v
		w.vers[d.NodeID] = d.Version
	}
}

// catchUp brings every lagging agent to the current version with one merged
// delta, or a snapshot when the history no longer reaches back.
func (w *randomWorld) catchUp(step int) {
	for id := range w.views {
		cur := mustSnap(w.t, w.e, id)
		l, ok := w.lag[id]
		if ok && l.Epoch == cur.Epoch {
			ds, err := w.e.DeltasSince(net1, id, l.Epoch, l.Version)
			switch {
			case err == nil:
				if m := Merge(ds); m != nil {
					if m.BaseVersion != l.Version || m.Version != cur.Version {
						w.t.Fatalf("step %d: merged delta %d->%d for %s at %d, current %d", step, m.BaseVersion, m.Version, id, l.Version, cur.Version)
					}
					l.View.Peers = slices.Clone(l.View.Peers)
					l.View.DNS = slices.Clone(l.View.DNS)
					l.View.Apply(m)
					l.Version = m.Version
				}
				if canon(l.View) != canon(cur.View) {
					w.t.Fatalf("step %d: merged catch-up of %s drifted\nagent:\n%s\nengine:\n%s", step, id, canon(l.View), canon(cur.View))
				}
				w.resumes++
				w.lag[id] = l
				continue
			case !errors.Is(err, ErrTooOld):
				w.t.Fatalf("step %d: DeltasSince %s: %v", step, id, err)
			}
		}
		w.snapshots++
		w.lag[id] = cur
	}
}

// check compares every agent view with a fresh snapshot.
func (w *randomWorld) check(step int, what string) {
	for id, v := range w.views {
		s, err := w.e.Snapshot(net1, id)
		if err != nil {
			w.t.Fatalf("step %d: snapshot %s: %v", step, id, err)
		}
		if s.Version != w.vers[id] {
			w.t.Fatalf("step %d %s: %s at version %d, engine at %d", step, what, id, w.vers[id], s.Version)
		}
		if canon(v) != canon(s.View) {
			w.t.Fatalf("step %d %s: view of %s drifted\nagent:\n%s\nengine:\n%s", step, what, id, canon(v), canon(s.View))
		}
	}
}

func TestDeltasReproduceSnapshots(t *testing.T) {
	const seeds, steps, maxNodes = 8, 120, 16
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			w := &randomWorld{t: t, r: rand.New(rand.NewPCG(seed, 99)), e: New(Options{History: 6, MaxDeltaPeers: int(seed%3) * 3}),
				views: map[string]View{}, vers: map[string]uint64{}, lag: map[string]Snapshot{}}
			w.e.SetNetworkConfig(net1, NetworkConfig{CvlanName: "cv", Domain: "mesh.test"})
			for step := range steps {
				var what string
				var ds []*Delta
				var err error
				i := w.r.IntN(maxNodes)
				id := fmt.Sprintf("n%02d", i)
				_, exists := w.views[id]
				switch op := w.r.IntN(10); {
				case op < 4 || !exists:
					what = "upsert " + id
					n := w.randNode(i)
					ds, err = w.e.UpsertNode(net1, n)
					if err == nil && !exists {
						s := mustSnap(t, w.e, id)
						w.views[id], w.vers[id] = s.View, s.Version
					}
				case op < 5:
					what = "remove " + id
					ds, err = w.e.RemoveNode(net1, id)
					delete(w.views, id)
					delete(w.vers, id)
				case op < 7:
					what = "status " + id
					ds, err = w.e.SetStatus(net1, id, Status{Online: w.r.IntN(2) == 0, HomeRelay: fmt.Sprint("r", w.r.IntN(2)),
						Endpoints: []netip.AddrPort{netip.AddrPortFrom(addr4(w.r.IntN(3)), 41641)}})
				case op < 9:
					what = "policies"
					ds, err = w.e.SetPolicies(net1, w.randPolicies())
				default:
					what = "relay map"
					ds = w.e.SetRelayMap(net1, RelayMap{Regions: []RelayRegion{{ID: "eu", Relays: []Relay{{ID: fmt.Sprint("r", w.r.IntN(2))}}}}})
				}
				w.apply(step, what, ds, err)
				w.check(step, what)
				if step%(3+int(seed)) == 0 {
					w.catchUp(step)
				}
			}
			if w.resumes == 0 || w.snapshots == 0 {
				t.Errorf("catch-up exercised %d resumes and %d snapshots, want both", w.resumes, w.snapshots)
			}
			t.Logf("%d resumes, %d snapshots, %d resyncs", w.resumes, w.snapshots, w.resyncs)
		})
	}
}

// TestConcurrentReaders runs snapshot and resume readers while changes are
// applied; the race detector and the consistency checks are the assertions.
func TestConcurrentReaders(t *testing.T) {
	e := New(Options{History: 8})
	if _, err := e.SetPolicies(net1, tagPolicy("x")); err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if _, err := e.UpsertNode(net1, mkNode(fmt.Sprintf("n%d", i), i+1, "x")); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 4)
	for r := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("n%d", r)
			for {
				select {
				case <-stop:
					return
				default:
				}
				s, err := e.Snapshot(net1, id)
				if err != nil {
					errs <- err
					return
				}
				ds, err := e.DeltasSince(net1, id, s.Epoch, s.Version)
				if err != nil && !errors.Is(err, ErrTooOld) {
					errs <- err
					return
				}
				for k, d := range ds {
					if d.Version != s.Version+uint64(k)+1 {
						errs <- fmt.Errorf("delta %d has version %d after %d", k, d.Version, s.Version)
						return
					}
				}
			}
		}()
	}
	for i := range 200 {
		n := mkNode(fmt.Sprintf("m%d", i%10), 100+i%10, "x")
		n.Online = i%2 == 0
		if _, err := e.UpsertNode(net1, n); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestLoadMatchesIncremental checks that Load builds the same views as adding
// the nodes one by one, with fresh epochs.
func TestLoadMatchesIncremental(t *testing.T) {
	cfg := NetworkConfig{CvlanName: "cv", Domain: "mesh.test"}
	ps := tagPolicy("a", "b")
	rm := &RelayMap{Regions: []RelayRegion{{ID: "eu", Code: "eu-west", Relays: []Relay{{ID: "r1", Hostname: "r1.example"}}}}}
	var nodes []Node
	for i := range 12 {
		nodes = append(nodes, mkNode(fmt.Sprintf("n%02d", i), i+1, []string{"a", "b"}[i%2]))
	}
	inc := New(Options{})
	inc.SetNetworkConfig(net1, cfg)
	if _, err := inc.SetPolicies(net1, ps); err != nil {
		t.Fatal(err)
	}
	inc.SetRelayMap(net1, *rm)
	for _, n := range nodes {
		if _, err := inc.UpsertNode(net1, n); err != nil {
			t.Fatal(err)
		}
	}
	loaded := New(Options{})
	if err := loaded.Load(net1, cfg, nodes, ps, rm); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		a, b := mustSnap(t, inc, n.ID), mustSnap(t, loaded, n.ID)
		if canon(a.View) != canon(b.View) {
			t.Errorf("%s: incremental\n%s\nloaded\n%s", n.ID, canon(a.View), canon(b.View))
		}
		if a.Epoch == b.Epoch {
			t.Errorf("%s: two engines gave the same epoch", n.ID)
		}
	}
	if err := loaded.Load(net1, cfg, append(nodes, nodes[0]), ps, rm); !errors.Is(err, ErrInvalidNode) {
		t.Errorf("duplicate id: %v", err)
	}
	if err := loaded.Load(net1, cfg, nodes, []policy.Policy{{ID: "bad", Enabled: true, Rules: []policy.Rule{{}}}}, rm); !errors.Is(err, policy.ErrInvalidRule) {
		t.Errorf("invalid policy: %v", err)
	}
}

func TestSetNetworkConfigForcesResync(t *testing.T) {
	e := New(Options{})
	if _, err := e.SetPolicies(net1, tagPolicy("a")); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := e.UpsertNode(net1, mkNode(fmt.Sprintf("n%d", i), i+1, "a")); err != nil {
			t.Fatal(err)
		}
	}
	before := mustSnap(t, e, "n0")
	var resync []string
	for _, d := range e.SetNetworkConfig(net1, NetworkConfig{CvlanName: "lab", Domain: "corp.example"}) {
		if !d.Resync || d.Version != 1 || len(d.PeersUpserted) > 0 {
			t.Errorf("delta %+v, want an empty Resync at version 1", d)
		}
		resync = append(resync, d.NodeID)
	}
	slices.Sort(resync)
	if !slices.Equal(resync, []string{"n0", "n1", "n2"}) {
		t.Errorf("resync = %v", resync)
	}
	after := mustSnap(t, e, "n0")
	if after.Epoch == before.Epoch {
		t.Error("epoch unchanged")
	}
	if _, err := e.DeltasSince(net1, "n0", before.Epoch, before.Version); !errors.Is(err, ErrTooOld) {
		t.Errorf("resume across config change: %v", err)
	}
	if got := after.View.Peers[0].FQDN; got != "n1.lab.corp.example" {
		t.Errorf("peer fqdn = %q", got)
	}
	if again := e.SetNetworkConfig(net1, NetworkConfig{CvlanName: "lab", Domain: "corp.example"}); again != nil {
		t.Errorf("unchanged config resynced %v", again)
	}
}
