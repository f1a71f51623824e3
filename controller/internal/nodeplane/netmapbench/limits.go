package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Rough per-agent costs on this code (netmapbench at 1,000-10,000 agents), for the up-front
// check only: controller heap+stacks+runtime slack per stream (45 KiB RSS measured at 10,000 on the
// lean HTTP/2 node port, ADR 010; the rest is margin for replica processes on PostgreSQL); a worker's
// cost per agent depends on the client (workerPerAgent).
const (
	estControllerPerAgent = 64 << 10
	estReplicaBase        = 200 << 20
	estEnginePerNode      = 4 << 10
	fdMargin              = 300 // listener, store, CA files, pipes, PostgreSQL pool
	maxSources            = 240 // 127.0.0.10 .. 127.0.0.249
)

// plan is how a run spreads N agents.
type plan struct {
	n, replicas, workers, perWorkerMax int
}

func makePlan(n, replicas, perWorker int) plan {
	w := (n + perWorker - 1) / perWorker
	w = max(w, replicas)
	if r := w % replicas; r != 0 {
		w += replicas - r
	}
	return plan{n: n, replicas: replicas, workers: w, perWorkerMax: (n + w - 1) / w}
}

// check fails with a message that names the limit and the flags that fit when the plan would
// exceed open files, ephemeral ports, source addresses, PostgreSQL connections or memory.
func (p plan) check(storeKind, client string, force bool) error {
	hardFiles := fileLimit()
	perReplica := (p.n + p.replicas - 1) / p.replicas
	needReplicas := (p.n + hardFiles - fdMargin - 1) / (hardFiles - fdMargin)
	if storeKind == "sqlite" && p.replicas > 1 {
		return fmt.Errorf("-replicas %d needs -store postgres (SQLite is one process's database)", p.replicas)
	}
	if perReplica+fdMargin > hardFiles {
		hint := fmt.Sprintf("-store postgres -replicas %d", needReplicas)
		return fmt.Errorf("N=%d over %d replica(s) is %d streams per replica, but a process may hold %d open files (hard limit): use %s or more", p.n, p.replicas, perReplica, hardFiles, hint)
	}
	ports := portRange()
	if p.perWorkerMax+fdMargin > hardFiles || p.perWorkerMax > ports {
		return fmt.Errorf("%d agents per worker process exceed %d open files or %d ephemeral ports per source address: use -per-worker %d", p.perWorkerMax, hardFiles, ports, min(hardFiles-fdMargin, ports)/2)
	}
	if p.workers > maxSources {
		return fmt.Errorf("%d worker processes need %d loopback source addresses (at most %d): raise -per-worker", p.workers, p.workers, maxSources)
	}
	if storeKind == "postgres" {
		if need := p.replicas*(replicaMaxConns+2) + 10; need > pgMaxConnections {
			return fmt.Errorf("%d replicas need about %d PostgreSQL connections, the cluster allows %d: use at most -replicas %d", p.replicas, need, pgMaxConnections, (pgMaxConnections-10)/(replicaMaxConns+2))
		}
	}
	need := estimateMemory(p.n, p.replicas, client)
	avail := memAvailable()
	if avail > 0 && need > avail*9/10 && !force {
		fit := p.n
		for fit > 1000 && estimateMemory(fit, p.replicas, client) > avail*9/10 {
			fit -= 1000
		}
		return fmt.Errorf("N=%d needs about %.1f GiB (controllers %d KiB and agent workers %d KiB per agent with -client %s, %d MiB per replica), %.1f GiB available: use -n %d or less (or -force to try anyway)",
			p.n, gib(need), estControllerPerAgent>>10, workerPerAgent(client)>>10, client, estReplicaBase>>20, gib(avail), fit)
	}
	return nil
}

// workerPerAgent is what one simulated agent costs its worker process (RSS with GOGC 60), by
// client. Measured at 2,000 agents (the "agent workers' memory" line; docs/benchmarks.md): lean
// 57 KiB, connect 106 KiB, grpc 126 KiB; grpc-go measured about 140 KiB at 20,000 (connect storms
// and retries leave more behind), so each gets the same 11 % margin.
func workerPerAgent(client string) int64 {
	switch client {
	case clientGRPC:
		return 140 << 10
	case clientConnect:
		return 118 << 10
	default: // clientLean
		return 64 << 10
	}
}

func estimateMemory(n, replicas int, client string) int64 {
	return int64(n)*(estControllerPerAgent+workerPerAgent(client)) + int64(replicas)*(estReplicaBase+int64(n)*estEnginePerNode)
}

func gib(b int64) float64 { return float64(b) / (1 << 30) }

func fileLimit() int {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Max > 1<<30 {
		return 1 << 20
	}
	return int(rl.Max)
}

func portRange() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 28000
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 28000
	}
	lo, _ := strconv.Atoi(f[0])
	hi, _ := strconv.Atoi(f[1])
	return hi - lo + 1
}

func memAvailable() int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
