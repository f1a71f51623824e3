package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// arming is what the worker currently waits for: a peer name to appear in every agent's map, or a
// new stream after a controller restart.
type arming struct {
	seq       int64
	name      string
	reconnect bool
	want      int
	got       atomic.Int64
	refused   atomic.Int64
	mu        sync.Mutex
	recv      []int64
	bytes     int64
	done      chan struct{}
	doneOnce  sync.Once
}

func (a *arming) record(at int64, size int) {
	a.mu.Lock()
	a.recv = append(a.recv, at)
	a.bytes += int64(size)
	a.mu.Unlock()
	if a.got.Add(1) == int64(a.want) {
		a.doneOnce.Do(func() { close(a.done) })
	}
}

type simAgent struct {
	w       *worker
	ctl     agentClient
	session string
	st      netmapstate.State
	streams int64
	seen    int64 // seq of the last arming recorded
	ready   bool
}

type worker struct {
	out    *json.Encoder
	outMu  sync.Mutex
	armed  atomic.Pointer[arming]
	ready  atomic.Int64
	n      int
	readyC chan struct{}
}

func (w *worker) emit(ev event) {
	w.outMu.Lock()
	defer w.outMu.Unlock()
	_ = w.out.Encode(ev)
}

func runWorker(file string) error {
	// The agents' side is not what is measured: trade the worker's CPU for memory, so that more
	// simulated agents fit in the machine next to the controller replicas.
	debug.SetGCPercent(60)
	// The worker's own baseline: what the agents add to it (their credentials, clients and
	// connections) is reported per agent by "stats".
	baseHeap, baseRSS := heap(), rss()
	b, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	var in workerInput
	if err := json.Unmarshal(b, &in); err != nil {
		return err
	}
	if in.MemProfile != "" {
		runtime.MemProfileRate = 4096 // fine enough to attribute a few KiB per agent
	}
	rootDER, _ := base64.StdEncoding.DecodeString(in.Root)
	root, err := x509.ParseCertificate(rootDER)
	if err != nil {
		return fmt.Errorf("root: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	w := &worker{out: json.NewEncoder(os.Stdout), n: len(in.Agents), readyC: make(chan struct{})}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(in.Source)}, Timeout: 30 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for i, c := range in.Agents {
		kder, _ := base64.StdEncoding.DecodeString(c.Key)
		key, err := x509.ParsePKCS8PrivateKey(kder)
		if err != nil {
			return err
		}
		var chain [][]byte
		for _, s := range c.Chain {
			d, _ := base64.StdEncoding.DecodeString(s)
			chain = append(chain, d)
		}
		// No parsed Leaf: TLS does not need it to present the chain, and it would cost each
		// agent about 3 KiB.
		cert := &tls.Certificate{Certificate: chain, PrivateKey: key}
		tc := &tls.Config{RootCAs: pool, ServerName: "localhost", MinVersion: tls.VersionTLS13,
			GetClientCertificate: func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
				// Like real agents: the leaf alone when the controller names its intermediate.
				return identity.ClientCertificate(cri, cert), nil
			}}
		ac, err := newAgentClient(in.Client, agentDial{target: in.Target, dialer: dialer, tls: tc})
		if err != nil {
			return err
		}
		sid := make([]byte, 8)
		_, _ = rand.Read(sid)
		a := &simAgent{w: w, ctl: ac, session: hex.EncodeToString(sid)}
		wg.Add(1)
		// Agents start spread out (200 µs apart), as machines booting would.
		delay := time.Duration(i) * 200 * time.Microsecond
		go func() {
			defer wg.Done()
			defer ac.close()
			a.run(ctx, delay)
		}()
	}
	in.Agents = nil // the credentials now live in the agents' TLS configurations only
	go func() {
		<-w.readyC
		w.emit(event{Type: "ready"})
	}()
	go func() {
		for ctx.Err() == nil {
			time.Sleep(2 * time.Second)
			w.emit(event{Type: "progress", Count: int(w.ready.Load())})
		}
	}()
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		var c command
		if json.Unmarshal(sc.Bytes(), &c) != nil {
			continue
		}
		switch c.Cmd {
		case "stats":
			// RSS first: as the process runs, before heap() collects and returns memory.
			r := rss() - baseRSS
			h := heap() - baseHeap
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			if in.MemProfile != "" {
				if f, err := os.Create(in.MemProfile); err == nil {
					_ = pprof.WriteHeapProfile(f)
					_ = f.Close()
				}
			}
			w.emit(event{Type: "stats", RSS: r, Heap: h, Stacks: int64(ms.StackInuse), Goroutines: runtime.NumGoroutine(), Count: int(w.ready.Load())})
		case "quit":
			cancel()
			wg.Wait()
			return nil
		case "arm", "arm-reconnect":
			prev := w.armed.Load()
			ar := &arming{seq: 1, name: c.Name, reconnect: c.Cmd == "arm-reconnect", want: w.n, done: make(chan struct{})}
			if prev != nil {
				ar.seq = prev.seq + 1
			}
			w.armed.Store(ar)
			w.emit(event{Type: "armed"})
			go func() {
				typ := "result"
				if ar.reconnect {
					typ = "reconnected"
				}
				within := 3 * time.Minute
				if c.Within > 0 {
					within = time.Duration(c.Within)
				}
				select {
				case <-ar.done:
				case <-time.After(within):
				}
				ar.mu.Lock()
				ev := event{Type: typ, Name: ar.name, Recv: append([]int64(nil), ar.recv...), Bytes: ar.bytes, Refused: int(ar.refused.Load()), Missing: ar.want - len(ar.recv)}
				ar.mu.Unlock()
				w.emit(ev)
			}()
		}
	}
	cancel()
	wg.Wait()
	return nil
}

func jitter(d time.Duration) time.Duration {
	n, _ := rand.Int(rand.Reader, big.NewInt(int64(d/2)+1))
	return d/2 + time.Duration(n.Int64())
}

// run keeps one agent's stream up like cvlan-agent does: resume from the held version, jittered
// exponential backoff, the controller's retry-after-ms honoured, every version acknowledged.
func (a *simAgent) run(ctx context.Context, delay time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(delay):
	}
	backoff := 500 * time.Millisecond
	for ctx.Err() == nil {
		wait, progressed := a.once(ctx)
		if ctx.Err() != nil {
			return
		}
		if progressed {
			backoff = 500 * time.Millisecond
		}
		d := jitter(backoff)
		if wait > 0 {
			d = wait + jitter(500*time.Millisecond)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
		backoff = min(backoff*2, 10*time.Second)
	}
}

func (a *simAgent) once(ctx context.Context) (retryAfter time.Duration, progressed bool) {
	s, err := a.ctl.watch(ctx, &nodev1.WatchNetworkMapRequest{KnownVersion: a.st.Version(), SessionId: a.session})
	if err != nil {
		return 0, false
	}
	a.streams++
	first := true
	for {
		m, err := s.recv()
		if err != nil {
			if shed, after := s.shed(err); shed {
				if ar := a.w.armed.Load(); ar != nil && ar.reconnect {
					ar.refused.Add(1)
				}
				retryAfter = after
			}
			return retryAfter, progressed
		}
		now := time.Now().UnixNano()
		progressed = true
		size := proto.Size(m) + 5
		switch {
		case m.GetSnapshot() != nil:
			a.st.ApplySnapshot(m.GetSnapshot())
		case m.GetDelta() != nil:
			if err := a.st.ApplyDelta(m.GetDelta()); err != nil {
				return 0, progressed
			}
		default:
			continue
		}
		if !a.ready {
			a.ready = true
			if a.w.ready.Add(1) == int64(a.w.n) {
				close(a.w.readyC)
			}
		}
		if ar := a.w.armed.Load(); ar != nil && a.seen < ar.seq {
			hit := false
			if ar.reconnect {
				hit = first
			} else {
				hit = hasPeerNamed(m, ar.name)
			}
			if hit {
				a.seen = ar.seq
				ar.record(now, size)
			}
		}
		first = false
		_ = a.ctl.ack(ctx, &nodev1.AckNetworkMapRequest{Version: a.st.Version(), StateHash: a.st.Hash()})
	}
}

func hasPeerNamed(m *nodev1.WatchNetworkMapResponse, name string) bool {
	peers := m.GetDelta().GetPeersUpserted()
	if s := m.GetSnapshot(); s != nil {
		peers = s.GetPeers()
	}
	for _, p := range peers {
		if p.GetName() == name {
			return true
		}
	}
	return false
}
