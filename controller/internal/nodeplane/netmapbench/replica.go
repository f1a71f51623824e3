package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
)

// replicaInput configures one controller replica process (-replica FILE).
type replicaInput struct {
	DSN        string `json:"dsn"`
	OwnerDSN   string `json:"owner_dsn"`
	CADir      string `json:"ca_dir"`
	Listen     string `json:"listen"`
	Full       bool   `json:"full"`
	Tenant     string `json:"tenant"`
	Cvlan      string `json:"cvlan"`
	MaxConns   int32  `json:"max_conns"`
	MemProfile string `json:"mem_profile,omitempty"`
}

// runReplica is one controller replica: a node plane on the shared PostgreSQL database with its own
// node-port listener. It reports on standard output (ready, progress, stats, cpu, joined, bye) and
// takes commands on standard input.
func runReplica(file string) error {
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var in replicaInput
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	out := &emitter{out: json.NewEncoder(os.Stdout)}
	ctx := context.Background()
	st, err := postgres.Open(ctx, postgres.Config{DSN: in.DSN, MigrationDSN: in.OwnerDSN, MaxConns: in.MaxConns, Logger: quiet()})
	if err != nil {
		return fmt.Errorf("open store: %w", err)
	}
	defer st.Close()
	ca, err := pki.NewEmbedded(ctx, in.CADir, pki.WithLogger(quiet()))
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	defer ca.Close()
	c, err := startController(ctx, st, ca, in.Listen, in.Full)
	if err != nil {
		return fmt.Errorf("controller: %w", err)
	}
	defer c.close()
	baseHeap, baseRSS := heap(), rss()
	out.emit(event{Type: "ready", Addr: c.addr, Heap: baseHeap, RSS: baseRSS})
	go func() {
		for {
			time.Sleep(2 * time.Second)
			out.emit(event{Type: "progress", Count: c.plane.Streams()})
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var cmd command
		if json.Unmarshal(sc.Bytes(), &cmd) != nil {
			continue
		}
		switch cmd.Cmd {
		case "stats":
			ev := event{Type: "stats", Heap: heap() - baseHeap, RSS: rss() - baseRSS, Goroutines: runtime.NumGoroutine(),
				Sockets: sockets(), CPU: int64(cpuTime()), Count: c.plane.Streams()}
			if in.MemProfile != "" {
				if f, err := os.Create(in.MemProfile); err == nil {
					_ = pprof.WriteHeapProfile(f)
					_ = f.Close()
				}
			}
			out.emit(ev)
		case "cpu":
			out.emit(event{Type: "cpu", CPU: int64(cpuTime())})
		case "join":
			t0 := time.Now()
			if err := createNode(ctx, st, in.Tenant, in.Cvlan, cmd.Name, "server", nil); err != nil {
				out.emit(event{Type: "error", Err: fmt.Sprintf("join %s: %v", cmd.Name, err)})
				continue
			}
			out.emit(event{Type: "joined", T0: t0.UnixNano()})
		case "quit":
			c.close()
			out.emit(event{Type: "bye"})
			return nil
		}
	}
	return nil
}
