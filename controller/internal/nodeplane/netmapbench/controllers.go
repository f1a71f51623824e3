package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// fleet is the controller side of a run: one in-process replica (SQLite) or several replica
// processes on one PostgreSQL.
type fleet interface {
	// addrs are the node-port addresses, one per replica.
	addrs() []string
	// streams is the number of open map streams over all replicas (progress lines).
	streams() int
	// measure returns memory (HeapInuse+StackInuse and RSS) over the fleet's baseline, summed over
	// replicas, goroutines and sockets summed, and streams per replica.
	measure(ctx context.Context) (heap, rss int64, goroutines, sockets int, per []int, err error)
	// cpu is the CPU time used so far, summed over replicas.
	cpu(ctx context.Context) (time.Duration, error)
	// join creates a server node through replica 0's store and returns when its transaction began.
	join(ctx context.Context, name string) (time.Time, error)
	// restart stops every replica and starts it again on the same address, sending full maps if
	// full; it returns once every replica listens.
	restart(ctx context.Context, full bool) error
	close()
}

// inProc is the default mode: one node plane in this process on SQLite.
type inProc struct {
	st            store.Store
	ca            pki.Authority
	c             *controller
	tenant, cvlan string
	baseHeap      int64
	baseRSS       int64
}

func newInProc(ctx context.Context, st store.Store, ca pki.Authority, tenant, cvlan string) (*inProc, error) {
	c, err := startController(ctx, st, ca, "127.0.0.1:0", false)
	if err != nil {
		return nil, err
	}
	p := &inProc{st: st, ca: ca, c: c, tenant: tenant, cvlan: cvlan}
	p.baseHeap, p.baseRSS = heap(), rss()
	return p, nil
}

func (p *inProc) addrs() []string { return []string{p.c.addr} }
func (p *inProc) streams() int    { return p.c.plane.Streams() }

func (p *inProc) measure(context.Context) (int64, int64, int, int, []int, error) {
	h, r := heap()-p.baseHeap, rss()-p.baseRSS
	if memProfile != "" {
		if f, err := os.Create(memProfile); err == nil {
			_ = pprof.WriteHeapProfile(f)
			_ = f.Close()
		}
	}
	return h, r, runtime.NumGoroutine(), sockets(), []int{p.c.plane.Streams()}, nil
}

func (p *inProc) cpu(context.Context) (time.Duration, error) { return cpuTime(), nil }

func (p *inProc) join(ctx context.Context, name string) (time.Time, error) {
	t0 := time.Now()
	return t0, createNode(ctx, p.st, p.tenant, p.cvlan, name, "server", nil)
}

func (p *inProc) restart(ctx context.Context, full bool) error {
	addr := p.c.addr
	p.c.close()
	c, err := startController(ctx, p.st, p.ca, addr, full)
	if err != nil {
		return err
	}
	p.c = c
	return nil
}

func (p *inProc) close() { p.c.close() }

// replicaSet runs each replica as a process of this binary (-replica FILE), all on one
// PostgreSQL database, each with its own listener on 127.0.1.x.
type replicaSet struct {
	dir   string
	in    []replicaInput
	procs []*child
	wait  time.Duration
}

func newReplicaSet(ctx context.Context, dir string, r int, base replicaInput, wait time.Duration) (*replicaSet, error) {
	s := &replicaSet{dir: dir, wait: wait}
	for i := 0; i < r; i++ {
		in := base
		in.Listen = fmt.Sprintf("127.0.1.%d:0", 1+i)
		if base.MemProfile != "" {
			in.MemProfile = fmt.Sprintf("%s.replica%d", base.MemProfile, i)
		}
		s.in = append(s.in, in)
	}
	if err := s.start(ctx); err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// start launches every replica at once (as a restarted deployment would) and waits until all
// listen; it records each one's address so a restart reuses it.
func (s *replicaSet) start(ctx context.Context) error {
	s.procs = make([]*child, len(s.in))
	for i := range s.in {
		b, _ := json.Marshal(s.in[i])
		file := filepath.Join(s.dir, fmt.Sprintf("replica-%d.json", i))
		if err := os.WriteFile(file, b, 0o600); err != nil {
			return err
		}
		c, err := startChild(ctx, "-replica", file, 0)
		if err != nil {
			return err
		}
		s.procs[i] = c
	}
	for i, c := range s.procs {
		wctx, cancel := context.WithTimeout(ctx, s.wait)
		ev, err := c.wait(wctx, "ready")
		cancel()
		if err != nil {
			return fmt.Errorf("replica %d: %w", i, err)
		}
		s.in[i].Listen = ev.Addr
	}
	return nil
}

func (s *replicaSet) addrs() []string {
	out := make([]string, len(s.in))
	for i, in := range s.in {
		out[i] = in.Listen
	}
	return out
}

func (s *replicaSet) streams() int {
	n := 0
	for _, c := range s.procs {
		if c != nil {
			n += int(c.progress.Load())
		}
	}
	return n
}

// all sends cmd to every replica at once and collects the replies.
func (s *replicaSet) all(ctx context.Context, cmd command, typ string) ([]event, error) {
	evs := make([]event, len(s.procs))
	errs := make([]error, len(s.procs))
	var wg sync.WaitGroup
	for i, c := range s.procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			evs[i], errs[i] = c.call(ctx, cmd, typ, s.wait)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("replica %d: %w", i, err)
		}
	}
	return evs, nil
}

func (s *replicaSet) measure(ctx context.Context) (heap, rss int64, goroutines, sockets int, per []int, err error) {
	evs, err := s.all(ctx, command{Cmd: "stats"}, "stats")
	if err != nil {
		return
	}
	for _, ev := range evs {
		heap += ev.Heap
		rss += ev.RSS
		goroutines += ev.Goroutines
		sockets += ev.Sockets
		per = append(per, ev.Count)
	}
	return
}

func (s *replicaSet) cpu(ctx context.Context) (time.Duration, error) {
	evs, err := s.all(ctx, command{Cmd: "cpu"}, "cpu")
	if err != nil {
		return 0, err
	}
	var sum time.Duration
	for _, ev := range evs {
		sum += time.Duration(ev.CPU)
	}
	return sum, nil
}

func (s *replicaSet) join(ctx context.Context, name string) (time.Time, error) {
	ev, err := s.procs[0].call(ctx, command{Cmd: "join", Name: name}, "joined", s.wait)
	if err != nil {
		return time.Time{}, err
	}
	return time.Unix(0, ev.T0), nil
}

func (s *replicaSet) restart(ctx context.Context, full bool) error {
	s.stopAll()
	for i := range s.in {
		s.in[i].Full = full
	}
	return s.start(ctx)
}

func (s *replicaSet) stopAll() {
	var wg sync.WaitGroup
	for _, c := range s.procs {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); c.stop() }()
	}
	wg.Wait()
	s.procs = nil
}

func (s *replicaSet) close() { s.stopAll() }

func (s *replicaSet) String() string { return strings.Join(s.addrs(), ",") }
