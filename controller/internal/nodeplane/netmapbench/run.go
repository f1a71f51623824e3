package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/sqlite"
)

// replicaMaxConns is each replica's PostgreSQL pool size (plus one change-feed listener).
const replicaMaxConns = 8

// phase bounds one phase of a run (connect, join, restart) at N agents.
func phase(n int) time.Duration { return 5*time.Minute + time.Duration(n)*10*time.Millisecond }

func runN(ctx context.Context, n int, o options) (*result, error) {
	p := makePlan(n, o.replicas, o.perWorker)
	r := &result{n: n, servers: o.servers, replicas: o.replicas, workers: p.workers, client: o.client}
	dir, err := os.MkdirTemp("", "netmapbench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	var st store.Store
	var appDSN, ownerDSN string
	switch o.store {
	case "sqlite":
		r.mode = "SQLite, 1 replica in-process"
		st, err = sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(dir, "cv.db"), Logger: quiet()})
	case "postgres":
		r.mode = fmt.Sprintf("PostgreSQL, %d replica processes", o.replicas)
		var stopPG func()
		if appDSN, ownerDSN, stopPG, err = startPostgres(ctx); err != nil {
			return nil, fmt.Errorf("start PostgreSQL: %w", err)
		}
		defer stopPG()
		st, err = postgres.Open(ctx, postgres.Config{DSN: appDSN, MigrationDSN: ownerDSN, MaxConns: 4, Logger: quiet()})
	}
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	caDir := filepath.Join(dir, "data")
	ca, err := pki.NewEmbedded(ctx, caDir, pki.WithLogger(quiet()))
	if err != nil {
		return nil, err
	}
	defer ca.Close()
	t := time.Now()
	tenant, cvlan, creds, err := setup(ctx, st, ca, n, o.servers)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	r.setup = time.Since(t)
	fmt.Fprintf(os.Stderr, "  N=%d: setup done in %s; starting %s\n", n, r.setup.Round(time.Second), r.mode)

	var fl fleet
	if o.store == "sqlite" {
		fl, err = newInProc(ctx, st, ca, tenant, cvlan)
	} else {
		fl, err = newReplicaSet(ctx, dir, o.replicas, replicaInput{DSN: appDSN, OwnerDSN: ownerDSN, CADir: caDir,
			Tenant: tenant, Cvlan: cvlan, MaxConns: replicaMaxConns, MemProfile: memProfile}, phase(n))
	}
	if err != nil {
		return nil, fmt.Errorf("start controller: %w", err)
	}
	defer func() { fl.close() }()

	var ws []*child
	defer func() {
		for _, w := range ws {
			w.stop()
		}
	}()
	root := base64.StdEncoding.EncodeToString(rootDER(ca))
	addrs := fl.addrs()
	t = time.Now()
	for i := 0; i < p.workers; i++ {
		chunk := creds[i*n/p.workers : (i+1)*n/p.workers]
		in := workerInput{Target: addrs[i%len(addrs)], Source: fmt.Sprintf("127.0.0.%d", 10+i), Client: o.client, Root: root, Agents: chunk}
		if memProfile != "" {
			in.MemProfile = fmt.Sprintf("%s.worker%d", memProfile, i)
		}
		b, _ := json.Marshal(in)
		file := filepath.Join(dir, fmt.Sprintf("worker-%d.json", i))
		if err := os.WriteFile(file, b, 0o600); err != nil {
			return nil, err
		}
		w, err := startChild(ctx, "-worker", file, len(chunk))
		if err != nil {
			return nil, err
		}
		ws = append(ws, w)
	}
	creds = nil
	stop := progressLine(func() string {
		ready := 0
		for _, w := range ws {
			ready += int(w.progress.Load())
		}
		return fmt.Sprintf("N=%d: %d streams open, %d agents have a map", n, fl.streams(), ready)
	})
	defer stop()
	for _, w := range ws {
		wctx, cancel := context.WithTimeout(ctx, phase(n))
		_, err := w.wait(wctx, "ready")
		cancel()
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
	}
	r.connect = time.Since(t)

	// Let the connection storm's status writes and acks settle before measuring steady state.
	time.Sleep(5*time.Second + time.Duration(n/1000)*time.Second)
	var h, rs int64
	if h, rs, r.controllerGoroutines, r.controllerSockets, r.perReplica, err = fl.measure(ctx); err != nil {
		return nil, fmt.Errorf("memory: %w", err)
	}
	r.heapPerAgent, r.rssPerAgent = float64(h)/float64(n), float64(rs)/float64(n)
	var wh, wst, wr int64
	for _, w := range ws {
		ev, err := w.call(ctx, command{Cmd: "stats"}, "stats", time.Minute)
		if err != nil {
			return nil, fmt.Errorf("worker memory: %w", err)
		}
		wh += ev.Heap
		wst += ev.Stacks
		wr += ev.RSS
		r.workerGoroutines += ev.Goroutines
	}
	r.workerHeapPerAgent, r.workerStacksPerAgent, r.workerRSSPerAgent = float64(wh)/float64(n), float64(wst)/float64(n), float64(wr)/float64(n)
	cpu0, err := fl.cpu(ctx)
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	time.Sleep(o.idle)
	cpu1, err := fl.cpu(ctx)
	if err != nil {
		return nil, err
	}
	r.idleCPU = float64(cpu1-cpu0) / float64(time.Since(t0))
	r.load = loadAvg()

	if r.joinP50, r.joinP99, r.joinMax, r.joinBytes, err = measureJoin(ctx, ws, fl, n, "joiner-delta"); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	time.Sleep(3*time.Second + time.Duration(n/1000)*time.Second)

	// Restart: every replica and its listener go away; new ones load the store and the agents come
	// back with jittered backoff, resuming or resyncing. The restarted replicas send full maps.
	for _, w := range ws {
		if _, err := w.call(ctx, command{Cmd: "arm-reconnect", Within: int64(phase(n))}, "armed", time.Minute); err != nil {
			return nil, err
		}
	}
	t = time.Now()
	if err := fl.restart(ctx, true); err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	var last time.Time
	for _, w := range ws {
		wctx, cancel := context.WithTimeout(ctx, phase(n)+time.Minute)
		ev, err := w.wait(wctx, "reconnected")
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reconnect: %w", err)
		}
		if ev.Missing > 0 {
			return nil, fmt.Errorf("reconnect: %d agents of a worker did not get a map within %s", ev.Missing, phase(n))
		}
		r.refused += ev.Refused
		for _, x := range ev.Recv {
			if tt := time.Unix(0, x); tt.After(last) {
				last = tt
			}
		}
	}
	r.reconnect = last.Sub(t)
	time.Sleep(3*time.Second + time.Duration(n/1000)*time.Second)

	if r.fullP50, r.fullP99, r.fullMax, r.fullBytes, err = measureJoin(ctx, ws, fl, n, "joiner-full"); err != nil {
		return nil, fmt.Errorf("full-map join: %w", err)
	}
	return r, nil
}

// measureJoin arms every worker for a node name, commits that node's join through the fleet
// (replica 0) and collects when each agent, on whichever replica, saw it.
func measureJoin(ctx context.Context, ws []*child, fl fleet, n int, name string) (p50, p99, mx time.Duration, bytes int64, err error) {
	for _, w := range ws {
		if _, err = w.call(ctx, command{Cmd: "arm", Name: name, Within: int64(phase(n))}, "armed", time.Minute); err != nil {
			return
		}
	}
	t0, err := fl.join(ctx, name)
	if err != nil {
		return
	}
	var lat []time.Duration
	for _, w := range ws {
		wctx, cancel := context.WithTimeout(ctx, phase(n)+time.Minute)
		ev, werr := w.wait(wctx, "result")
		cancel()
		if werr != nil {
			return 0, 0, 0, 0, werr
		}
		if ev.Missing > 0 {
			return 0, 0, 0, 0, fmt.Errorf("%d agents of a worker never saw %s", ev.Missing, name)
		}
		for _, r := range ev.Recv {
			lat = append(lat, time.Unix(0, r).Sub(t0))
		}
		bytes += ev.Bytes
	}
	p50, p99, mx = percentiles(lat)
	return p50, p99, mx, bytes, nil
}
