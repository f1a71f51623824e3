// Command memprobe is netmapbench cut down to the memory phase, with a breakdown (heap vs stacks,
// heap profile): N simulated agents (grpc-go clients in worker processes, each a real gRPC
// WatchNetworkMap stream over real mTLS with its own certificate) against one controller node plane
// (SQLite store, embedded CA) in this process, whose node port is served the production way
// (server.Serve with server.NodeHTTP2(), as cvlan-controller does).
//
//	go run ./controller/internal/nodeplane/memprobe -n 2000 [-memprofile FILE]
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
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

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/nodeplane"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/server"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/sqlite"
)

var (
	memProfile string
	probeOnly  = true
)

func main() {
	var (
		worker    = flag.String("worker", "", "internal: run as an agent worker with this input file")
		ns        = flag.String("n", "1000,10000", "comma-separated agent counts")
		perWorker = flag.Int("per-worker", 5000, "agents per worker process")
		servers   = flag.Int("servers", 20, "server nodes every agent may reach (hub and spoke policy)")
		idle      = flag.Duration("idle", 10*time.Second, "idle CPU measurement window")
		timeout   = flag.Duration("timeout", 20*time.Minute, "bound on the whole run")
	)
	cpuProfile := flag.String("cpuprofile", "", "write the controller process's CPU profile to this file")
	flag.StringVar(&memProfile, "memprofile", "", "write the controller's heap profile with all agents connected to this file")
	flag.Parse()
	if memProfile != "" {
		runtime.MemProfileRate = 4096 // fine-grained enough to attribute a few KiB per agent
	}
	if *worker != "" {
		if err := runWorker(*worker); err != nil {
			fmt.Fprintln(os.Stderr, "worker:", err)
			os.Exit(1)
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
	fmt.Printf("netmapbench: %d CPUs, GOMAXPROCS %d, real TLS 1.3 + gRPC (connect-go server, grpc-go agents) over loopback TCP\n", runtime.NumCPU(), runtime.GOMAXPROCS(0))
	for _, f := range strings.Split(*ns, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintln(os.Stderr, "bad -n:", f)
			os.Exit(2)
		}
		r, err := runN(ctx, n, *perWorker, *servers, *idle)
		if err != nil {
			fmt.Fprintf(os.Stderr, "N=%d: %v\n", n, err)
			os.Exit(1)
		}
		if !probeOnly {
			r.print()
		}
	}
}

type result struct {
	n, workers, servers                     int
	setup, connect                          time.Duration
	heapPerAgent, rssPerAgent               float64
	idleCPU                                 float64
	joinP50, joinP99, joinMax               time.Duration
	joinBytes                               int64
	reconnect                               time.Duration
	refused                                 int
	fullP50, fullP99, fullMax               time.Duration
	fullBytes                               int64
	controllerGoroutines, controllerSockets int
}

func (r *result) print() {
	fmt.Printf("\n=== N = %d agents (%d worker processes, %d server nodes; real sockets, one controller replica, SQLite) ===\n", r.n, r.workers, r.servers)
	fmt.Printf("setup (nodes, certificates) %s; all N connected with a snapshot in %s\n", r.setup.Round(time.Millisecond), r.connect.Round(time.Millisecond))
	fmt.Printf("join -> all N (delta):      p50 %s  p99 %s  max %s\n", r.joinP50.Round(time.Millisecond), r.joinP99.Round(time.Millisecond), r.joinMax.Round(time.Millisecond))
	fmt.Printf("bytes of that change:       %d total, %.0f per agent (protobuf + 5-byte gRPC frame prefix)\n", r.joinBytes, float64(r.joinBytes)/float64(r.n))
	fmt.Printf("join -> all N (full maps):  p50 %s  p99 %s  max %s\n", r.fullP50.Round(time.Millisecond), r.fullP99.Round(time.Millisecond), r.fullMax.Round(time.Millisecond))
	fmt.Printf("bytes with full maps:       %d total, %.0f per agent (%.1fx the delta)\n", r.fullBytes, float64(r.fullBytes)/float64(r.n), float64(r.fullBytes)/float64(max(r.joinBytes, 1)))
	fmt.Printf("controller memory:          %.1f KiB heap+stacks per connected agent, %.1f KiB RSS per agent (%d goroutines, %d sockets)\n", r.heapPerAgent/1024, r.rssPerAgent/1024, r.controllerGoroutines, r.controllerSockets)
	fmt.Printf("idle controller CPU:        %.2f%% of one core with N streams open\n", r.idleCPU*100)
	fmt.Printf("restart -> all N resynced:  %s (%d connection attempts shed with ResourceExhausted + retry-after-ms)\n", r.reconnect.Round(time.Millisecond), r.refused)
}

// --- controller side ---

type controller struct {
	st    store.Store
	ca    pki.Authority
	plane *nodeplane.Plane
	addr  string
	// serving is the node port (server.Start).
	serving *server.Running
	done    chan struct{}
	stop    context.CancelFunc
	once    sync.Once
}

func quiet() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

// startController runs a node plane and serves its node port the production way: server.Serve with
// the node listener's mTLS configuration and server.NodeHTTP2(), as cvlan-controller does.
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
		if err = c.serve(addr); err == nil {
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

func (c *controller) serve(addr string) error {
	r, err := server.Start(context.Background(), quiet(), []server.Listener{{Name: "node", Addr: addr, TLS: c.plane.TLSConfig(), Handler: c.plane.Handler(), HTTP2: server.NodeHTTP2()}})
	if err != nil {
		return err
	}
	c.addr, c.serving = r.Addrs["node"].String(), r
	return nil
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
	Target string      `json:"target"`
	Source string      `json:"source"`
	Root   string      `json:"root"`
	Agents []agentCred `json:"agents"`
}

func randKey() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

// setup creates a tenant, a cvlan, a hub-and-spoke policy, the server nodes and n client nodes with
// their certificates.
func setup(ctx context.Context, st store.Store, ca pki.Authority, n, servers int) (tenant, cvlan string, creds []agentCred, err error) {
	ten := &domain.Tenant{Name: "bench"}
	if err = st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx, ten) }); err != nil {
		return
	}
	cv := &domain.Cvlan{TenantID: ten.ID, Name: "lan", DNSDomain: "bench.test"}
	err = st.Tx(ctx, store.TenantScope(ten.ID), func(tx store.Tx) error {
		if err := tx.CreateCvlan(ctx, cv); err != nil {
			return err
		}
		return tx.CreatePolicy(ctx, &domain.Policy{TenantID: ten.ID, Name: "clients-to-servers", Enabled: true, Rules: []domain.PolicyRule{{
			Action: domain.ActionAllow, Sources: []domain.PolicyTarget{{Tag: "client"}}, Destinations: []domain.PolicyTarget{{Tag: "server"}}, Protocol: domain.ProtocolAny,
		}}})
	})
	if err != nil {
		return
	}
	for i := 0; i < servers; i++ {
		if err = createNode(ctx, st, ten.ID, cv.ID, fmt.Sprintf("server-%d", i), "server", nil); err != nil {
			return
		}
	}
	ids := make([]string, 0, n)
	for start := 0; start < n; start += 1000 {
		err = st.Tx(ctx, store.TenantScope(ten.ID), func(tx store.Tx) error {
			for i := start; i < min(start+1000, n); i++ {
				nd := &domain.Node{TenantID: ten.ID, CvlanID: cv.ID, Name: fmt.Sprintf("client-%d", i), Kind: domain.NodeKindNode,
					WireGuardPublicKey: randKey(), Tags: []string{"client"}, Status: domain.NodePending}
				if err := tx.CreateNode(ctx, nd); err != nil {
					return err
				}
				ids = append(ids, nd.ID)
			}
			return nil
		})
		if err != nil {
			return
		}
	}
	creds = make([]agentCred, n)
	var wg sync.WaitGroup
	errs := make(chan error, runtime.NumCPU())
	for w := 0; w < runtime.NumCPU(); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += runtime.NumCPU() {
				key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
				csr, _ := x509.ParseCertificateRequest(der)
				var wg [32]byte
				_, _ = rand.Read(wg[:])
				chain, err := ca.Sign(ctx, pki.SignRequest{CSR: csr, ID: identity.ID{TenantID: ten.ID, Kind: identity.KindNode, ResourceID: ids[i]}, WGKey: wg[:]})
				if err != nil {
					errs <- err
					return
				}
				kder, _ := x509.MarshalPKCS8PrivateKey(key)
				c := agentCred{NodeID: ids[i], Key: base64.StdEncoding.EncodeToString(kder)}
				for _, d := range chain.DER() {
					c.Chain = append(c.Chain, base64.StdEncoding.EncodeToString(d))
				}
				creds[i] = c
			}
		}()
	}
	wg.Wait()
	select {
	case err = <-errs:
		return
	default:
	}
	return ten.ID, cv.ID, creds, nil
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

// workerProc is one agent worker process.
type workerProc struct {
	cmd    *exec.Cmd
	in     io.WriteCloser
	events chan event
	n      int
}

type event struct {
	Type    string  `json:"type"`
	Name    string  `json:"name,omitempty"`
	Recv    []int64 `json:"recv,omitempty"`
	Bytes   int64   `json:"bytes,omitempty"`
	Refused int     `json:"refused,omitempty"`
	Missing int     `json:"missing,omitempty"`
	Err     string  `json:"err,omitempty"`
}

type command struct {
	Cmd  string `json:"cmd"`
	Name string `json:"name,omitempty"`
}

func (w *workerProc) send(c command) error {
	b, _ := json.Marshal(c)
	_, err := w.in.Write(append(b, '\n'))
	return err
}

func (w *workerProc) wait(ctx context.Context, typ string) (event, error) {
	for {
		select {
		case <-ctx.Done():
			return event{}, fmt.Errorf("waiting for %s: %w", typ, ctx.Err())
		case ev, ok := <-w.events:
			if !ok {
				return event{}, fmt.Errorf("worker exited while waiting for %s", typ)
			}
			if ev.Type == "error" {
				return ev, errors.New(ev.Err)
			}
			if ev.Type == typ {
				return ev, nil
			}
		}
	}
}

func startWorker(ctx context.Context, file string, n int) (*workerProc, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], "-worker", file)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &workerProc{cmd: cmd, in: in, events: make(chan event, 16), n: n}
	go func() {
		defer close(w.events)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			var ev event
			if json.Unmarshal(sc.Bytes(), &ev) == nil {
				w.events <- ev
			}
		}
	}()
	return w, nil
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

// measureJoin arms every worker for a node name, commits that node's join and collects when each
// agent saw it.
func measureJoin(ctx context.Context, ws []*workerProc, st store.Store, tenant, cvlan, name string) (p50, p99, mx time.Duration, bytes int64, err error) {
	for _, w := range ws {
		if err = w.send(command{Cmd: "arm", Name: name}); err != nil {
			return
		}
		if _, err = w.wait(ctx, "armed"); err != nil {
			return
		}
	}
	t0 := time.Now()
	if err = createNode(ctx, st, tenant, cvlan, name, "server", nil); err != nil {
		return
	}
	var lat []time.Duration
	for _, w := range ws {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
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

func runN(ctx context.Context, n, perWorker, servers int, idle time.Duration) (*result, error) {
	r := &result{n: n, servers: servers}
	dir, err := os.MkdirTemp("", "netmapbench")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(ctx, sqlite.Config{Path: filepath.Join(dir, "cv.db"), Logger: quiet()})
	if err != nil {
		return nil, err
	}
	defer st.Close()
	ca, err := pki.NewEmbedded(ctx, dir, pki.WithLogger(quiet()))
	if err != nil {
		return nil, err
	}
	defer ca.Close()
	t := time.Now()
	tenant, cvlan, creds, err := setup(ctx, st, ca, n, servers)
	if err != nil {
		return nil, fmt.Errorf("setup: %w", err)
	}
	r.setup = time.Since(t)

	c, err := startController(ctx, st, ca, "127.0.0.1:0", false)
	if err != nil {
		return nil, err
	}
	defer func() { c.close() }()
	baseHeap, baseRSS := heap(), rss()

	var ws []*workerProc
	defer func() {
		for _, w := range ws {
			_ = w.send(command{Cmd: "quit"})
			_ = w.in.Close()
			_ = w.cmd.Wait()
		}
	}()
	root := base64.StdEncoding.EncodeToString(rootDER(ca))
	t = time.Now()
	for i := 0; i*perWorker < n; i++ {
		chunk := creds[i*perWorker : min(n, (i+1)*perWorker)]
		in := workerInput{Target: c.addr, Source: fmt.Sprintf("127.0.0.%d", 10+i), Root: root, Agents: chunk}
		b, _ := json.Marshal(in)
		file := filepath.Join(dir, fmt.Sprintf("worker-%d.json", i))
		if err := os.WriteFile(file, b, 0o600); err != nil {
			return nil, err
		}
		w, err := startWorker(ctx, file, len(chunk))
		if err != nil {
			return nil, err
		}
		ws = append(ws, w)
	}
	r.workers = len(ws)
	progress := make(chan struct{})
	go func() {
		for {
			select {
			case <-progress:
				return
			case <-time.After(5 * time.Second):
				fmt.Fprintf(os.Stderr, "  ... %s: %d streams open\n", time.Since(t).Round(time.Second), c.plane.Streams())
			}
		}
	}()
	defer close(progress)
	for _, w := range ws {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		_, err := w.wait(wctx, "ready")
		cancel()
		if err != nil {
			return nil, fmt.Errorf("connect: %w", err)
		}
	}
	r.connect = time.Since(t)

	// Let the connection storm's status writes and acks settle before measuring steady state.
	time.Sleep(5*time.Second + time.Duration(n/1000)*time.Second)
	r.heapPerAgent = float64(heap()-baseHeap) / float64(n)
	r.rssPerAgent = float64(rss()-baseRSS) / float64(n)
	r.controllerGoroutines, r.controllerSockets = runtime.NumGoroutine(), sockets()
	{
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("N=%d heap+stack/agent %.1f KiB; HeapInuse %.1f MiB StackInuse %.1f MiB (base heap+stack %.1f MiB) goroutines %d => stack/goroutine %.0f B, stack/agent %.1f KiB, heap/agent %.1f KiB\n",
			n, r.heapPerAgent/1024, float64(ms.HeapInuse)/(1<<20), float64(ms.StackInuse)/(1<<20), float64(baseHeap)/(1<<20), runtime.NumGoroutine(),
			float64(ms.StackInuse)/float64(runtime.NumGoroutine()), float64(ms.StackInuse)/float64(n)/1024, (float64(ms.HeapInuse)-float64(baseHeap))/float64(n)/1024)
	}
	if memProfile != "" {
		if f, err := os.Create(memProfile); err == nil {
			_ = pprof.WriteHeapProfile(f)
			_ = f.Close()
		}
		if f, err := os.Create(memProfile + ".goroutine"); err == nil {
			_ = pprof.Lookup("goroutine").WriteTo(f, 1)
			_ = f.Close()
		}
	}
	if os.Getenv("MEMPROBE_DUMP") != "" {
		_ = syscall.Kill(os.Getpid(), syscall.SIGQUIT)
		time.Sleep(time.Minute)
	}
	if probeOnly {
		return r, nil
	}
	cpu0, t0 := cpuTime(), time.Now()
	time.Sleep(idle)
	r.idleCPU = float64(cpuTime()-cpu0) / float64(time.Since(t0))

	if r.joinP50, r.joinP99, r.joinMax, r.joinBytes, err = measureJoin(ctx, ws, st, tenant, cvlan, "joiner-delta"); err != nil {
		return nil, fmt.Errorf("join: %w", err)
	}
	time.Sleep(3*time.Second + time.Duration(n/1000)*time.Second)

	// Restart: the plane and its listener go away; a new one loads the store and the agents come
	// back with jittered backoff, resuming or resyncing.
	for _, w := range ws {
		if err := w.send(command{Cmd: "arm-reconnect"}); err != nil {
			return nil, err
		}
		if _, err := w.wait(ctx, "armed"); err != nil {
			return nil, err
		}
	}
	addr := c.addr
	c.close()
	t = time.Now()
	c, err = startController(ctx, st, ca, addr, true)
	if err != nil {
		return nil, fmt.Errorf("restart: %w", err)
	}
	var last time.Time
	for _, w := range ws {
		wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		ev, err := w.wait(wctx, "reconnected")
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reconnect: %w", err)
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

	// The restarted plane sends full maps: the same kind of join for comparison.
	if r.fullP50, r.fullP99, r.fullMax, r.fullBytes, err = measureJoin(ctx, ws, st, tenant, cvlan, "joiner-full"); err != nil {
		return nil, fmt.Errorf("full-map join: %w", err)
	}
	return r, nil
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
