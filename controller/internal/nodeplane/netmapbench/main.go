// Command netmapbench measures the node plane at scale: N simulated agents, each a real gRPC
// WatchNetworkMap stream over real mTLS with its own certificate and its own TCP connection.
//
// Two modes. The default (-store sqlite) runs one controller node plane (SQLite store, embedded
// CA) in this process. With -store postgres the controller runs as -replicas R processes of this
// binary (-replica FILE), all on one throw-away PostgreSQL cluster on loopback, each with its own
// node-port listener on 127.0.1.x: the production design, and the way past the 20,000 open files
// one process may hold here. In both modes the agents run in worker processes (this binary with
// -worker FILE), spread evenly over the replicas, every worker dialling from its own loopback
// source address (127.0.0.x), so that no process holds more than about 19,000 sockets and no
// source address runs out of ephemeral ports. The controller serves its node port the way
// cvlan-controller does (server.Serve with server.NodeHTTP2()). The agents' client is -client: lean
// (the default; gRPC written on x/net/http2's Framer, one goroutine and about 57 KiB per agent),
// connect (connect-go over x/net/http2) or grpc (grpc-go, as cvlan-agent; about 126 KiB per agent).
// -check only prints whether and how N fits on this machine.
//
// For each N it prints: the time for one node join to reach all N agents (p50, p99; the join is
// committed through replica 0's store and timed at the agents of every replica), the bytes of that
// change in total and per agent, controller memory per connected agent (HeapInuse+StackInuse over
// each replica's own baseline, summed over replicas, / N), idle controller CPU (summed over
// replicas), the time for all N to reconnect after every replica restarts, and the same join sent
// as full maps.
//
//	go run ./controller/internal/nodeplane/netmapbench -n 1000,10000
//	go run ./controller/internal/nodeplane/netmapbench -store postgres -replicas 4 -n 50000
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/server"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

var memProfile string

// options are the flags of a bench run.
type options struct {
	store, client                string
	replicas, perWorker, servers int
	idle                         time.Duration
	force                        bool
}

func main() {
	var (
		worker  = flag.String("worker", "", "internal: run as an agent worker with this input file")
		replica = flag.String("replica", "", "internal: run as a controller replica with this input file")
		ns      = flag.String("n", "1000,10000", "comma-separated agent counts")
		timeout = flag.Duration("timeout", 90*time.Minute, "bound on the whole run")
		check   = flag.Bool("check", false, "only run the up-front checks (open files, ports, addresses, PostgreSQL connections, memory) for every -n and print the plan")
		o       options
	)
	flag.StringVar(&o.store, "store", "sqlite", "sqlite (one controller replica in this process) or postgres (-replicas processes on one PostgreSQL)")
	flag.IntVar(&o.replicas, "replicas", 1, "controller replica processes (with -store postgres)")
	flag.StringVar(&o.client, "client", clientLean, "simulated agents' gRPC client: "+clientLean+" (gRPC written on x/net/http2's Framer, one goroutine per agent), "+clientConnect+" (connect-go with WithGRPC over x/net/http2) or "+clientGRPC+" (grpc-go, as cvlan-agent)")
	flag.IntVar(&o.perWorker, "per-worker", 5000, "at most this many agents per worker process")
	flag.IntVar(&o.servers, "servers", 20, "server nodes every agent may reach (hub and spoke policy)")
	flag.DurationVar(&o.idle, "idle", 10*time.Second, "idle CPU measurement window")
	flag.BoolVar(&o.force, "force", false, "run even if the memory estimate says N does not fit")
	cpuProfile := flag.String("cpuprofile", "", "write the controller process's CPU profile to this file (-store sqlite)")
	flag.StringVar(&memProfile, "memprofile", "", "write the controller's heap profile with all agents connected to this file (.replicaI per replica; .workerI for each agent worker)")
	flag.Parse()
	switch {
	case *worker != "":
		if err := runWorker(*worker); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
		}
		return
	case *replica != "":
		if err := runReplica(*replica); err != nil {
			fmt.Fprintln(os.Stderr, "replica:", err)
			os.Exit(1)
		}
		return
	}
	if o.store != "sqlite" && o.store != "postgres" {
		fmt.Fprintln(os.Stderr, "-store must be sqlite or postgres")
		os.Exit(2)
	}
	if o.client != clientLean && o.client != clientConnect && o.client != clientGRPC {
		fmt.Fprintf(os.Stderr, "-client must be %s, %s or %s\n", clientLean, clientConnect, clientGRPC)
		os.Exit(2)
	}
	if o.replicas < 1 || o.perWorker < 1 {
		fmt.Fprintln(os.Stderr, "-replicas and -per-worker must be at least 1")
		os.Exit(2)
	}
	var counts []int
	for _, f := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "bad -n:", f)
			os.Exit(2)
		}
		if err := makePlan(n, o.replicas, o.perWorker).check(o.store, o.client, o.force); err != nil {
			fmt.Fprintln(os.Stderr, "netmapbench:", err)
			os.Exit(2)
		}
		counts = append(counts, n)
	}
	if *check {
		for _, n := range counts {
			p := makePlan(n, o.replicas, o.perWorker)
			fmt.Printf("N=%d: fits: %d replica(s), %d worker processes of up to %d agents, about %.1f GiB (controllers %d KiB and agent workers %d KiB per agent with -client %s), %.1f GiB available\n",
				n, p.replicas, p.workers, p.perWorkerMax, gib(estimateMemory(n, p.replicas, o.client)), estControllerPerAgent>>10, workerPerAgent(o.client)>>10, o.client, gib(memAvailable()))
		}
		return
	}
	if *cpuProfile != "" {
		if f, err := os.Create(*cpuProfile); err == nil {
			_ = pprof.StartCPUProfile(f)
			defer pprof.StopCPUProfile()
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	agents := map[string]string{clientLean: "lean agents (gRPC on x/net/http2's Framer)", clientConnect: "connect-go agents (WithGRPC over x/net/http2)", clientGRPC: "grpc-go agents"}[o.client]
	fmt.Printf("netmapbench: %d CPUs, GOMAXPROCS %d, real TLS 1.3 + gRPC (connect-go handlers on the production node port: server.Serve, server.NodeHTTP2; %s) over loopback TCP, load average %s\n", runtime.NumCPU(), runtime.GOMAXPROCS(0), agents, loadAvg())
	var results []*result
	for _, n := range counts {
		r, err := runN(ctx, n, o)
		if err != nil {
			fmt.Fprintf(os.Stderr, "N=%d: %v\n", n, err)
			if ctx.Err() != nil {
				fmt.Fprintf(os.Stderr, "the run hit -timeout %s\n", *timeout)
			}
			os.Exit(1)
		}
		r.print()
		results = append(results, r)
	}
	printTable(results)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

type result struct {
	n, workers, servers, replicas           int
	mode, client                            string
	perReplica                              []int
	setup, connect                          time.Duration
	heapPerAgent, rssPerAgent               float64
	workerHeapPerAgent, workerRSSPerAgent   float64
	workerStacksPerAgent                    float64
	workerGoroutines                        int
	idleCPU                                 float64
	joinP50, joinP99, joinMax               time.Duration
	joinBytes                               int64
	reconnect                               time.Duration
	refused                                 int
	fullP50, fullP99, fullMax               time.Duration
	fullBytes                               int64
	controllerGoroutines, controllerSockets int
	load                                    string
}

func (r *result) print() {
	fmt.Printf("\n=== N = %d agents (%d worker processes, %d server nodes; real sockets, %s) ===\n", r.n, r.workers, r.servers, r.mode)
	fmt.Printf("setup (nodes, certificates) %s; all N connected with a snapshot in %s\n", r.setup.Round(time.Millisecond), r.connect.Round(time.Millisecond))
	fmt.Printf("join -> all N (delta):      p50 %s  p99 %s  max %s\n", r.joinP50.Round(time.Millisecond), r.joinP99.Round(time.Millisecond), r.joinMax.Round(time.Millisecond))
	fmt.Printf("bytes of that change:       %d total, %.0f per agent (protobuf + 5-byte gRPC frame prefix)\n", r.joinBytes, float64(r.joinBytes)/float64(r.n))
	fmt.Printf("join -> all N (full maps):  p50 %s  p99 %s  max %s\n", r.fullP50.Round(time.Millisecond), r.fullP99.Round(time.Millisecond), r.fullMax.Round(time.Millisecond))
	fmt.Printf("bytes with full maps:       %d total, %.0f per agent (%.1fx the delta)\n", r.fullBytes, float64(r.fullBytes)/float64(r.n), float64(r.fullBytes)/float64(max(r.joinBytes, 1)))
	fmt.Printf("controller memory:          %.1f KiB heap+stacks per connected agent, %.1f KiB RSS per agent (%d goroutines, %d sockets", r.heapPerAgent/1024, r.rssPerAgent/1024, r.controllerGoroutines, r.controllerSockets)
	if r.replicas > 1 {
		fmt.Printf(", summed over %d replicas; streams per replica %v", r.replicas, r.perReplica)
	}
	fmt.Printf(")\n")
	fmt.Printf("agent workers' memory:      %.1f KiB heap+stacks per agent (%.1f KiB of it stacks), %.1f KiB RSS per agent (%s client, %d goroutines in %d workers)\n", r.workerHeapPerAgent/1024, r.workerStacksPerAgent/1024, r.workerRSSPerAgent/1024, r.client, r.workerGoroutines, r.workers)
	fmt.Printf("idle controller CPU:        %.2f%% of one core with N streams open", r.idleCPU*100)
	if r.replicas > 1 {
		fmt.Printf(" (summed over replicas)")
	}
	fmt.Printf("\n")
	what := "controller restart"
	if r.replicas > 1 {
		what = fmt.Sprintf("all %d replicas restart", r.replicas)
	}
	fmt.Printf("restart -> all N resynced:  %s (%s; %d connection attempts shed with ResourceExhausted + retry-after-ms)\n", r.reconnect.Round(time.Millisecond), what, r.refused)
}

// printTable prints the results as the Markdown rows of docs/benchmarks.md.
func printTable(rs []*result) {
	fmt.Printf("\n| N agents | mode | one join reaches all: p50 / p99 / max | delta bytes total / per agent | full maps instead: bytes per agent, p99 | controller memory per agent | idle CPU | all resynced after restart | load |\n|---|---|---|---|---|---|---|---|---|\n")
	ms := func(d time.Duration) string { return d.Round(time.Millisecond).String() }
	for _, r := range rs {
		fmt.Printf("| %d | %s | %s / %s / %s | %.2f MB / %.0f B | %.0f B (%.1fx), %s | %.1f KiB heap+stacks | %.2f %% | %s (%d shed) | %s |\n",
			r.n, r.mode, ms(r.joinP50), ms(r.joinP99), ms(r.joinMax), float64(r.joinBytes)/1e6, float64(r.joinBytes)/float64(r.n),
			float64(r.fullBytes)/float64(r.n), float64(r.fullBytes)/float64(max(r.joinBytes, 1)), ms(r.fullP99),
			r.heapPerAgent/1024, r.idleCPU*100, ms(r.reconnect), r.refused, r.load)
	}
}

// --- controller side ---

type controller struct {
	st    store.Store
	ca    pki.Authority
	plane *nodeplane.Plane
	addr  string
	// serving is the node port (server.Start): stopping it closes the listener, sends GOAWAY and
	// cancels request contexts.
	serving *server.Running
	// stop ends the plane's Run; done is closed when it has returned.
	stop context.CancelFunc
	done chan struct{}
	once sync.Once
}

func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// startController runs a node plane and serves its node port the way cvlan-controller does:
// server.Serve with the node listener's mTLS configuration and server.NodeHTTP2(). On a restart
// addr is the previous replica's address, which may take a moment to be free again.
func startController(ctx context.Context, st store.Store, ca pki.Authority, addr string, full bool) (*controller, error) {
	pctx, stop := context.WithCancel(context.Background())
	p, err := nodeplane.New(ctx, nodeplane.Deps{Store: st, Authority: ca, Log: quiet(), FullMaps: full})
	if err != nil {
		stop()
		return nil, err
	}
	c := &controller{st: st, ca: ca, plane: p, done: make(chan struct{}), stop: stop}
	go func() { defer close(c.done); _ = p.Run(pctx) }()
	for i := 0; ; i++ {
		bound, err := c.serve(addr)
		if err == nil {
			c.addr = bound
			return c, nil
		}
		if i >= 50 {
			_ = p.Close()
			stop()
			<-c.done
			return nil, fmt.Errorf("serve node port on %s: %w", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serve starts server.Serve with the node listener and returns its bound address once it listens.
func (c *controller) serve(addr string) (string, error) {
	r, err := server.Start(context.Background(), quiet(), []server.Listener{{Name: "node", Addr: addr, TLS: c.plane.TLSConfig(), Handler: c.plane.Handler(), HTTP2: server.NodeHTTP2()}})
	if err != nil {
		return "", err
	}
	c.serving = r
	return r.Addrs["node"].String(), nil
}

func (c *controller) close() {
	c.once.Do(func() {
		c.serving.Stop()
		_ = c.plane.Close()
		_ = c.serving.Wait()
		c.stop()
		<-c.done
	})
}

type agentCred struct {
	NodeID string   `json:"node_id"`
	Key    string   `json:"key"`
	Chain  []string `json:"chain"`
}

type workerInput struct {
	Target string `json:"target"`
	Source string `json:"source"`
	Client string `json:"client"`
	// MemProfile, when set, is where "stats" writes the worker's heap profile.
	MemProfile string      `json:"mem_profile,omitempty"`
	Root       string      `json:"root"`
	Agents     []agentCred `json:"agents"`
}

func randKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

func createNode(ctx context.Context, st store.Store, tenant, cvlan, name, tag string, id *string) error {
	return st.Tx(ctx, store.TenantScope(tenant), func(tx store.Tx) error {
		nd := &domain.Node{TenantID: tenant, CvlanID: cvlan, Name: name, Kind: domain.NodeKindNode, WireGuardPublicKey: randKey(), Tags: []string{tag}, Status: domain.NodePending}
		if err := tx.CreateNode(ctx, nd); err != nil {
			return err
		}
		if id != nil {
			*id = nd.ID
		}
		return nil
	})
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

func heap() int64 {
	// Twice: the first GC shrinks goroutine stacks that grew once and are mostly unused now.
	runtime.GC()
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapInuse + ms.StackInuse)
}

func sockets() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	n := 0
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}

func percentiles(lat []time.Duration) (p50, p99, maxd time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	return lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)], lat[len(lat)-1]
}

func rootDER(ca pki.Authority) []byte {
	pemBytes := ca.RootPEM()
	const begin = "-----BEGIN CERTIFICATE-----"
	s := string(pemBytes)
	i := strings.Index(s, begin)
	j := strings.Index(s, "-----END CERTIFICATE-----")
	if i < 0 || j < 0 {
		return nil
	}
	der, _ := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(s[i+len(begin):j]), ""))
	return der
}
