// Command relaybench measures cvlan-relay on loopback against a plain TLS 1.3
// pipe between the same two client processes:
//
//	go run ./relay/cmd/relaybench            (from the repository root)
//
// The parent process only orchestrates. It re-executes itself for every
// role, so the relay, the sending client and the receiving client each run
// in their own process, as in production. Phases: pipe throughput, relay
// throughput (one pair), round-trip latency over both, memory per idle
// client connection (relay RSS), throughput with 100 concurrent pairs.
// Packets are 1,400 bytes. The whole run is bounded to about a minute.
package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/testpki"
	"github.com/cloudvlan/cloudvlan/relay/server"
)

const td = "bench.cloudvlan"

type opts struct {
	role    string
	dir     string
	addr    string
	size    int
	warm    time.Duration
	measure time.Duration
	pairs   int
	idle    int
	rtts    int
	base    int
	phases  string
	rounds  int
}

func main() {
	var o opts
	flag.StringVar(&o.role, "role", "", "internal: the role of a child process")
	flag.StringVar(&o.dir, "dir", "", "internal: directory with the benchmark CA")
	flag.StringVar(&o.addr, "addr", "", "internal: address or URL to reach")
	flag.IntVar(&o.size, "size", 1400, "packet size in bytes")
	flag.DurationVar(&o.warm, "warm", 500*time.Millisecond, "warm-up before each throughput measurement")
	flag.DurationVar(&o.measure, "measure", 2*time.Second, "length of each throughput measurement")
	flag.IntVar(&o.rounds, "rounds", 3, "alternating pipe/relay measurements")
	flag.IntVar(&o.pairs, "pairs", 100, "concurrent pairs in the many-pairs phase")
	flag.IntVar(&o.idle, "idle", 2000, "idle client connections for the memory phase")
	flag.IntVar(&o.rtts, "rtts", 2000, "round trips per latency measurement")
	flag.IntVar(&o.base, "base", 0, "internal: first key index of a child")
	flag.StringVar(&o.phases, "phases", "12345", "phases to run: 1 pipe, 2 relay pair, 3 latency, 4 idle memory, 5 many pairs")
	flag.Parse()
	log.SetFlags(0)
	var err error
	if o.role == "" {
		err = orchestrate(o)
	} else {
		err = child(o)
	}
	if err != nil {
		log.Fatalf("relaybench %s: %v", o.role, err)
	}
}

// result is what a measuring child prints as its last line.
type result struct {
	Packets uint64    `json:"packets"`
	Bytes   uint64    `json:"bytes"`
	Seconds float64   `json:"seconds"`
	RTTs    []float64 `json:"rtts_us,omitempty"`
	Dropped uint64    `json:"dropped,omitempty"`
	Total   uint64    `json:"total,omitempty"` // packets received over the child's whole life
	RxCPU   float64   `json:"-"`
	TxCPU   float64   `json:"-"`
}

func (r result) pps() float64  { return float64(r.Packets) / r.Seconds }
func (r result) gbps() float64 { return float64(r.Bytes) * 8 / r.Seconds / 1e9 }

// proc is a child process whose first stdout line is "READY <addr>".
type proc struct {
	cmd   *exec.Cmd
	out   *bufio.Scanner
	addr  string
	stats string // relay only: address of its stats endpoint
}

// relayUsage is the relay process's CPU seconds and forwarded packets so far.
func (p *proc) relayUsage() (cpu float64, forwarded uint64) {
	cpu = cpuSeconds(p.cmd.Process.Pid)
	resp, err := http.Get("http://" + p.stats + "/")
	if err != nil {
		return cpu, 0
	}
	defer resp.Body.Close()
	var st server.Stats
	_ = json.NewDecoder(resp.Body).Decode(&st)
	return cpu, st.PacketsForwarded
}

func usPer(cpu float64, n uint64) float64 {
	if n == 0 {
		return 0
	}
	return cpu / float64(n) * 1e6
}

func spawn(o opts, role string, args ...string) (*proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	all := append([]string{"-role", role, "-dir", o.dir, "-size", strconv.Itoa(o.size),
		"-warm", o.warm.String(), "-measure", o.measure.String(), "-rtts", strconv.Itoa(o.rtts)}, args...)
	cmd := exec.Command(exe, all...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{cmd: cmd, out: bufio.NewScanner(stdout)}
	p.out.Buffer(make([]byte, 1<<20), 16<<20)
	if !p.out.Scan() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s: exited before READY", role)
	}
	line := p.out.Text()
	if !strings.HasPrefix(line, "READY") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%s: unexpected %q", role, line)
	}
	f := strings.Fields(strings.TrimPrefix(line, "READY"))
	if len(f) > 0 {
		p.addr = f[0]
	}
	if len(f) > 1 {
		p.stats = f[1]
	}
	return p, nil
}

// result waits for the child's JSON line and its exit.
func (p *proc) result() (result, error) {
	var r result
	if !p.out.Scan() {
		_ = p.cmd.Wait()
		return r, fmt.Errorf("%v: no result", p.cmd.Args[2])
	}
	if err := json.Unmarshal(p.out.Bytes(), &r); err != nil {
		_ = p.cmd.Wait()
		return r, err
	}
	return r, p.cmd.Wait()
}

// cpu is the exited child's user+system CPU time.
func (p *proc) cpu() float64 {
	if p.cmd.ProcessState == nil {
		return 0
	}
	return p.cmd.ProcessState.UserTime().Seconds() + p.cmd.ProcessState.SystemTime().Seconds()
}

func (p *proc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	done := make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = p.cmd.Process.Kill()
		<-done
	}
}

func fmtList(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(parts, " ")
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// cpuSeconds returns a running process's user+system CPU time.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (u + st) / 100 // USER_HZ is 100 on Linux
}

func rssKiB(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			return strconv.Atoi(f[1])
		}
	}
	return 0, errors.New("no VmRSS")
}

func pct(v []float64, p float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// pair runs a receiver and a sender child and returns the receiver's result.
func pair(o opts, recvRole, sendRole, target string, extra ...string) (result, error) {
	rx, err := spawn(o, recvRole, append([]string{"-addr", target}, extra...)...)
	if err != nil {
		return result{}, err
	}
	addr := target
	if rx.addr != "" {
		addr = rx.addr
	}
	tx, err := spawn(o, sendRole, append([]string{"-addr", addr}, extra...)...)
	if err != nil {
		rx.stop()
		return result{}, err
	}
	r, err := rx.result()
	if err != nil {
		tx.stop()
		return r, err
	}
	stopped := false
	if sendRole == "pipe-send" || sendRole == "relay-send" || sendRole == "raw-send" {
		// The receiver has measured; stop the sender so that it does not
		// load the machine during the next phase.
		_ = tx.cmd.Process.Signal(os.Interrupt)
		stopped = true
	}
	t, err := tx.result()
	if err != nil && !stopped { // a stopped sender's exit status says nothing
		return r, err
	}
	r.RxCPU, r.TxCPU = rx.cpu(), tx.cpu()
	t.RxCPU, t.TxCPU = r.RxCPU, r.TxCPU
	if len(t.RTTs) > 0 { // latency: the pinging side measures
		return t, nil
	}
	return r, nil
}

func orchestrate(o opts) error {
	dir, err := os.MkdirTemp("", "relaybench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	o.dir = dir
	ca, err := testpki.New(td)
	if err != nil {
		return err
	}
	if err := ca.Save(dir); err != nil {
		return err
	}
	start := time.Now()
	fmt.Printf("relaybench: %d-byte packets on loopback, GOMAXPROCS=%d, %d CPUs, %s\n",
		o.size, runtime.GOMAXPROCS(0), runtime.NumCPU(), runtime.Version())
	fmt.Printf("load average at start: %s (other work on this machine skews every figure)\n", loadAvg())
	fmt.Println("processes: orchestrator (idle) | relay (own process) | sender client | receiver client; all TLS 1.3, ECDSA P-256 certificates")

	on := func(p string) bool { return strings.Contains(o.phases, p) }
	relay, err := spawn(o, "relay")
	if err != nil {
		return err
	}
	defer relay.stop()
	url := "https://" + relay.addr + frame.Path

	// Phases 1 and 2 alternate for several rounds: load from other work on
	// the machine changes by the second, and a ratio of neighbouring
	// measurements (and its median) is steadier than one of distant ones.
	if on("1") || on("2") {
		fmt.Printf("\n[1] plain TLS 1.3 pipe: sender process -> receiver process\n" +
			"[2] the same two endpoint programs through cvlan-relay: sender process -> relay process -> receiver process\n")
		var ratios, pipes, relays, effs []float64
		for round := 1; round <= o.rounds; round++ {
			var pipe, one result
			if on("1") {
				if pipe, err = pair(o, "pipe-recv", "pipe-send", ""); err != nil {
					return fmt.Errorf("pipe throughput: %w", err)
				}
				pipes = append(pipes, pipe.pps())
				fmt.Printf("  round %d [1] pipe:  %9.0f packets/s %6.2f Gbit/s   CPU s: sender %.1f receiver %.1f   (load %s)\n",
					round, pipe.pps(), pipe.gbps(), pipe.TxCPU, pipe.RxCPU, loadAvg())
			}
			var relayCPU float64
			if on("2") {
				cpu0, _ := relay.relayUsage()
				if one, err = pair(o, "raw-recv", "raw-send", url, "-base", strconv.Itoa(round*10)); err != nil {
					return fmt.Errorf("relay throughput: %w", err)
				}
				cpu1, _ := relay.relayUsage()
				relayCPU = cpu1 - cpu0
				relays = append(relays, one.pps())
				fmt.Printf("  round %d [2] relay: %9.0f packets/s %6.2f Gbit/s   CPU s: sender %.1f relay %.1f receiver %.1f\n",
					round, one.pps(), one.gbps(), one.TxCPU, relayCPU, one.RxCPU)
			}
			if on("1") && on("2") {
				ratios = append(ratios, one.pps()/pipe.pps())
				pipeUs := usPer(pipe.TxCPU+pipe.RxCPU, pipe.Total)
				relayUs := usPer(one.TxCPU+relayCPU+one.RxCPU, one.Total)
				effs = append(effs, pipeUs/relayUs)
				fmt.Printf("          CPU per delivered packet: pipe %.2f us (sender+receiver) | relay path %.2f us (sender %.2f + relay %.2f + receiver %.2f)\n",
					pipeUs, relayUs, usPer(one.TxCPU, one.Total), usPer(relayCPU, one.Total), usPer(one.RxCPU, one.Total))
			}
		}
		if len(ratios) > 0 {
			fmt.Printf("  median: pipe %.0f packets/s, relay %.0f packets/s (%.2f Gbit/s); ratio relay/pipe per round %s, median %.2f\n",
				pct(pipes, .5), pct(relays, .5), pct(relays, .5)*float64(o.size)*8/1e9, fmtList(ratios), pct(ratios, .5))
			fmt.Printf("  CPU efficiency, pipe CPU per packet / relay-path CPU per packet (independent of other load on the machine): per round %s, median %.2f\n",
				fmtList(effs), pct(effs, .5))
			fmt.Println("  (target ratio >= 0.40; Tailscale derper BenchmarkSendRecv, in-process, no TLS, 1,000-byte packets: ~395,000 packets/s)")
		}
	}
	if on("2") {
		relayCPU0 := cpuSeconds(relay.cmd.Process.Pid)
		one, err := pair(o, "relay-recv", "relay-send", url, "-pairs", "1", "-base", "0")
		if err != nil {
			return fmt.Errorf("relay throughput (client package): %w", err)
		}
		fmt.Printf("[2b] the same through the relay/client package (queues, reconnect, Recv/Send as the agent uses them): %9.0f packets/s %6.2f Gbit/s\n"+
			"     CPU s: sender %.1f relay %.1f receiver %.1f; receiver queue drops %d\n",
			one.pps(), one.gbps(), one.TxCPU, cpuSeconds(relay.cmd.Process.Pid)-relayCPU0, one.RxCPU, one.Dropped)
	}

	if on("3") {
		pl, err := pair(o, "pipe-echo", "pipe-ping", "")
		if err != nil {
			return fmt.Errorf("pipe latency: %w", err)
		}
		rl, err := pair(o, "relay-echo", "relay-ping", url, "-base", "10")
		if err != nil {
			return fmt.Errorf("relay latency: %w", err)
		}
		fmt.Printf("[3] round trip, %d pings of %d bytes: pipe p50 %.0f us p99 %.0f us | relay p50 %.0f us p99 %.0f us | added by relay p50 %.0f us p99 %.0f us\n",
			o.rtts, o.size, pct(pl.RTTs, .5), pct(pl.RTTs, .99), pct(rl.RTTs, .5), pct(rl.RTTs, .99),
			pct(rl.RTTs, .5)-pct(pl.RTTs, .5), pct(rl.RTTs, .99)-pct(pl.RTTs, .99))
	}

	if on("4") {
		before, err := rssKiB(relay.cmd.Process.Pid)
		if err != nil {
			return err
		}
		idle, err := spawn(o, "idle", "-addr", url, "-idle", strconv.Itoa(o.idle))
		if err != nil {
			return fmt.Errorf("idle clients: %w", err)
		}
		time.Sleep(time.Second)
		after, _ := rssKiB(relay.cmd.Process.Pid)
		idle.stop()
		fmt.Printf("[4] %d idle client connections (client process separate): relay RSS %d KiB -> %d KiB, %.1f KiB per connection\n",
			o.idle, before, after, float64(after-before)/float64(o.idle))
	}

	if on("5") {
		relayCPU0 := cpuSeconds(relay.cmd.Process.Pid)
		many, err := pair(o, "relay-recv", "relay-send", url, "-pairs", strconv.Itoa(o.pairs), "-base", "100000")
		if err != nil {
			return fmt.Errorf("many pairs: %w", err)
		}
		fmt.Printf("[5] %d concurrent pairs through the relay, relay/client package (%d sender clients in one process, %d receivers in another): %9.0f packets/s  %6.2f Gbit/s\n"+
			"     CPU s: senders %.1f relay %.1f receivers %.1f\n",
			o.pairs, o.pairs, o.pairs, many.pps(), many.gbps(), many.TxCPU, cpuSeconds(relay.cmd.Process.Pid)-relayCPU0, many.RxCPU)
	}
	fmt.Printf("\ntotal run time %v, load average at end: %s\n", time.Since(start).Round(time.Millisecond), loadAvg())
	return nil
}

func child(o opts) error {
	if dir := os.Getenv("RELAYBENCH_PROFILE_DIR"); dir != "" {
		// For tuning: every child writes a CPU profile named after its role.
		f, err := os.Create(filepath.Join(dir, o.role+".prof"))
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	ca, err := testpki.Load(o.dir, td)
	if err != nil {
		return err
	}
	switch o.role {
	case "relay":
		return runRelay(ca)
	case "pipe-recv", "pipe-echo":
		return pipeServer(o, ca)
	case "pipe-send", "pipe-ping":
		return pipeClient(o, ca)
	case "relay-recv", "relay-send", "relay-echo", "relay-ping":
		return relayRole(o, ca)
	case "raw-recv", "raw-send":
		return rawRole(o, ca)
	case "idle":
		return idleClients(o, ca)
	}
	return fmt.Errorf("unknown role %q", o.role)
}

func printJSON(r result) {
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
}

func keyOf(i int) frame.Key {
	var k frame.Key
	copy(k[:], fmt.Sprintf("bench-key-%022d", i))
	return k
}

func nodeTLS(ca *testpki.CA, i int) (*tls.Config, frame.Key, error) {
	k := keyOf(i)
	cert, err := ca.Node("bench", "n"+strconv.Itoa(i), k)
	if err != nil {
		return nil, k, err
	}
	return ca.ClientTLS(cert), k, nil
}

func runRelay(ca *testpki.CA) error {
	cert, err := ca.Relay("", "bench-relay")
	if err != nil {
		return err
	}
	srv, err := server.New(server.Config{
		TrustDomain: td, Certificate: server.StaticCertificate{Cert: &cert}, Roots: ca.Roots(),
		RelayID: "bench-relay", MaxClients: 15000,
		RateLimitBytes: 10e9, // the limiter runs, but does not bind
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	// A loopback stats endpoint lets the orchestrator count what the relay
	// forwarded in each phase.
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() {
		_ = http.Serve(sln, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			_ = json.NewEncoder(w).Encode(srv.Stats())
		}))
	}()
	fmt.Println("READY", ln.Addr().String(), sln.Addr().String())
	ctx, cancel := signalContext()
	defer cancel()
	err = srv.Run(ctx, ln)
	_ = sln.Close()
	st := srv.Stats()
	fmt.Fprintf(os.Stderr, "relay process (all phases): forwarded %d packets, drops %v, rejects %v\n", st.PacketsForwarded, st.Drops, st.Rejects)
	return err
}
