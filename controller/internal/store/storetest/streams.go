package storetest

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

func streamIDs(ms []store.MapStream) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

// testStreamRegistry: replicas register and unregister map streams; an opened stream is reported
// with the other live replicas' streams of its node under another session id (not its own
// replica's, not the same session's, not a dead replica's); dead replicas' rows expire; hole
// punches are queued per replica, taken once in order, and wake Watch.
func testStreamRegistry(t *testing.T, h Harness) {
	s := h.New(t)
	c := t.Context()
	now := time.Now().UTC().Truncate(time.Millisecond)
	stale := now.Add(-time.Minute)
	joined := map[string]bool{}
	sync := func(replica string, at time.Time, opened []store.MapStream, closed ...string) map[string][]store.MapStream {
		t.Helper()
		got, err := s.SyncMapStreams(c, store.StreamSync{ReplicaID: replica, Now: at, StaleBefore: stale, Opened: opened, Closed: closed})
		if err != nil {
			t.Fatal(err)
		}
		if got.Joined == joined[replica] {
			t.Fatalf("%s: joined %v, want %v", replica, got.Joined, !joined[replica])
		}
		joined[replica] = true
		return got.Conflicts
	}
	st := func(id, replica, node, session string) store.MapStream {
		return store.MapStream{ID: id, ReplicaID: replica, NodeID: node, SessionID: session, Addr: "192.0.2.1:" + id, OpenTime: now}
	}
	if got := sync("r1", now, []store.MapStream{st("a", "r1", "n1", "s1")}); len(got) != 0 {
		t.Fatalf("first stream conflicts with %v", got)
	}
	// A dead replica (last seen long ago) holding n1 under another session does not count.
	sync("dead", now.Add(-time.Hour), []store.MapStream{st("d", "dead", "n1", "s9")})
	got := sync("r2", now, []store.MapStream{
		st("b", "r2", "n1", "s2"), // another session on another replica: conflict with a
		st("c", "r2", "n1", "s1"), // the same session as a (a reconnect): none
		st("e", "r2", "n2", "s1"), // another node: none
	})
	if len(got) != 1 || fmt.Sprint(streamIDs(got["b"])) != "[a]" {
		t.Fatalf("conflicts %v, want b with a only", got)
	}
	if a := got["b"][0]; a.ReplicaID != "r1" || a.Addr != "192.0.2.1:a" || a.SessionID != "s1" || !a.OpenTime.Equal(now) {
		t.Fatalf("reported stream %+v", a)
	}
	// The dead replica was expired by that sync.
	ms, err := s.MapStreams(c, "n1", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(streamIDs(ms)) != "[a b c]" {
		t.Fatalf("n1's streams %v, want [a b c]", streamIDs(ms))
	}
	// An expired replica is told that it joins anew (its streams are gone).
	if got, err := s.SyncMapStreams(c, store.StreamSync{ReplicaID: "dead", Now: now, StaleBefore: stale}); err != nil || !got.Joined {
		t.Fatalf("expired replica's sync: %+v %v, want joined", got, err)
	}
	if ms, err := s.MapStreams(c, "n1", time.Time{}); err != nil || len(ms) != 3 {
		t.Fatalf("n1's streams %v %v, want 3", streamIDs(ms), err)
	}
	// Same replica, other session: not reported (the replica sees its own streams itself).
	if got := sync("r1", now, []store.MapStream{st("f", "r1", "n2", "s7")}); fmt.Sprint(streamIDs(got["f"])) != "[e]" {
		t.Fatalf("f conflicts with %v, want [e]", got)
	}
	sync("r1", now, nil, "a", "f", "b") // b is r2's: not closed by r1
	if ms, err = s.MapStreams(c, "n1", time.Time{}); err != nil || fmt.Sprint(streamIDs(ms)) != "[b c]" {
		t.Fatalf("after close: %v %v, want [b c]", streamIDs(ms), err)
	}
	// liveAfter filters replicas not seen since.
	if ms, err = s.MapStreams(c, "n1", now.Add(time.Second)); err != nil || len(ms) != 0 {
		t.Fatalf("streams of replicas seen after now: %v %v", streamIDs(ms), err)
	}

	// Hole punches.
	wctx, cancel := contextWithCancel(t)
	defer cancel()
	ch, err := s.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	drain(ch)
	key := bytes.Repeat([]byte{7}, 32)
	if err := s.PostHolePunches(c, []store.HolePunchPost{
		{ReplicaID: "r2", NodeID: "n1", FromNodeID: "n2", WGKey: key},
		{ReplicaID: "r2", NodeID: "n1", FromNodeID: "n3", WGKey: key},
		{ReplicaID: "r1", NodeID: "n2", FromNodeID: "n1", WGKey: key},
	}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	case <-time.After(10 * time.Second):
		t.Fatal("posting hole punches did not wake Watch")
	}
	hps, err := s.TakeHolePunches(c, "r2")
	if err != nil {
		t.Fatal(err)
	}
	if len(hps) != 2 || hps[0].FromNodeID != "n2" || hps[1].FromNodeID != "n3" || hps[0].NodeID != "n1" || !bytes.Equal(hps[0].WGKey, key) || hps[0].CreateTime.IsZero() {
		t.Fatalf("r2 took %+v", hps)
	}
	if hps, err = s.TakeHolePunches(c, "r2"); err != nil || len(hps) != 0 {
		t.Fatalf("taken twice: %+v %v", hps, err)
	}
	// DropReplica removes r1's streams and punches.
	if err := s.DropReplica(c, "r1"); err != nil {
		t.Fatal(err)
	}
	if hps, err = s.TakeHolePunches(c, "r1"); err != nil || len(hps) != 0 {
		t.Fatalf("dropped replica's punches: %+v %v", hps, err)
	}
	if ms, err = s.MapStreams(c, "n2", time.Time{}); err != nil || fmt.Sprint(streamIDs(ms)) != "[e]" {
		t.Fatalf("n2 after r1 dropped: %v %v, want [e]", streamIDs(ms), err)
	}
}

// testStreamRegistryRace: two processes registering streams of one node under different
// sessions at once: exactly one of them is told about the other's.
func testStreamRegistryRace(t *testing.T, h Harness) {
	s := h.New(t)
	other := s
	if h.Twin != nil {
		other = h.Twin(t, s)
	}
	now := time.Now().UTC()
	for i := range 20 {
		node := fmt.Sprint("race-", i)
		var wg sync.WaitGroup
		seen := make([]int, 2)
		errs := make([]error, 2)
		for j, st := range []store.Store{s, other} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				id := fmt.Sprint(node, "-", j)
				got, err := st.SyncMapStreams(t.Context(), store.StreamSync{
					ReplicaID: fmt.Sprint("replica-", j), Now: now, StaleBefore: now.Add(-time.Minute),
					Opened: []store.MapStream{{ID: id, NodeID: node, SessionID: id, Addr: "192.0.2.1:1", OpenTime: now}},
				})
				if err == nil {
					seen[j] = len(got.Conflicts[id])
				}
				errs[j] = err
			}()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		if seen[0]+seen[1] != 1 {
			t.Fatalf("round %d: the two registrations saw %v other streams, want exactly one sighting", i, seen)
		}
	}
}
