package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/client"
	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/testpki"
	"github.com/cloudvlan/cloudvlan/relay/internal/upgrade"
)

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// meter measures the receive rate over a window that starts warm after the
// first packet, so that connection set-up is not counted.
type meter struct {
	packets, bytes atomic.Uint64
}

func (m *meter) add(p, b int) {
	m.packets.Add(uint64(p))
	m.bytes.Add(uint64(b))
}

func (m *meter) run(o opts) (result, error) {
	deadline := time.Now().Add(30 * time.Second)
	for m.packets.Load() == 0 {
		if time.Now().After(deadline) {
			return result{}, errors.New("no packets received")
		}
		time.Sleep(time.Millisecond)
	}
	time.Sleep(o.warm)
	p0, b0, t0 := m.packets.Load(), m.bytes.Load(), time.Now()
	time.Sleep(o.measure)
	p1, b1, t1 := m.packets.Load(), m.bytes.Load(), time.Now()
	return result{Packets: p1 - p0, Bytes: b1 - b0, Seconds: t1.Sub(t0).Seconds(), Total: p1}, nil
}

func sendFor(o opts) time.Duration { return o.warm + o.measure + 2*time.Second }

// pipeServer is the receiving (or echoing) end of the plain TLS pipe: the
// same framing as the relay, without the relay.
func pipeServer(o opts, ca *testpki.CA) error {
	cert, err := ca.Relay("", "pipe")
	if err != nil {
		return err
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: ca.Roots(),
		DynamicRecordSizingDisabled: true,
	})
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Println("READY", ln.Addr().String())
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	if tc, ok := nc.(*tls.Conn).NetConn().(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	fr := frame.NewReader(bufio.NewReaderSize(nc, 16<<10))
	buf := make([]byte, frame.MaxPayload)
	if o.role == "pipe-echo" {
		fw := frame.NewWriter(bufio.NewWriterSize(nc, 16<<10))
		for {
			_, p, err := fr.ReadFrame(buf)
			if err != nil {
				printJSON(result{})
				return nil
			}
			k, pkt, _ := frame.ParseKeyPacket(p)
			if err := fw.WriteKeyPacket(frame.TypeRecvPacket, k, pkt); err != nil {
				return err
			}
			if err := fw.Flush(); err != nil {
				return err
			}
		}
	}
	var m meter
	go func() {
		for {
			_, p, err := fr.ReadFrame(buf)
			if err != nil {
				return
			}
			m.add(1, len(p)-frame.KeyLen)
		}
	}()
	r, err := m.run(o)
	if err != nil {
		return err
	}
	printJSON(r)
	return nil
}

func pipeClient(o opts, ca *testpki.CA) error {
	cert, err := ca.Node("bench", "pipe-client", keyOf(-1))
	if err != nil {
		return err
	}
	cfg := ca.ClientTLS(cert)
	cfg.DynamicRecordSizingDisabled = true
	nc, err := tls.Dial("tcp", o.addr, cfg)
	if err != nil {
		return err
	}
	defer nc.Close()
	if tc, ok := nc.NetConn().(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	fmt.Println("READY")
	fw := frame.NewWriter(bufio.NewWriterSize(nc, 16<<10))
	pkt := make([]byte, o.size)
	dst := keyOf(-2)
	if o.role == "pipe-ping" {
		fr := frame.NewReader(bufio.NewReaderSize(nc, 16<<10))
		buf := make([]byte, frame.MaxPayload)
		rtts, err := pingLoop(o, func() error {
			if err := fw.WriteKeyPacket(frame.TypeSendPacket, dst, pkt); err != nil {
				return err
			}
			if err := fw.Flush(); err != nil {
				return err
			}
			_, _, err := fr.ReadFrame(buf)
			return err
		})
		if err != nil {
			return err
		}
		printJSON(result{RTTs: rtts})
		return nil
	}
	ctx, cancel := signalContext()
	defer cancel()
	end := time.Now().Add(sendFor(o))
	for i := 0; ; i++ {
		if i%1024 == 0 && (time.Now().After(end) || ctx.Err() != nil) {
			break
		}
		if err := fw.WriteKeyPacket(frame.TypeSendPacket, dst, pkt); err != nil {
			break // the receiver finished and closed
		}
	}
	printJSON(result{})
	return nil
}

func pingLoop(o opts, once func() error) ([]float64, error) {
	for i := 0; i < 100; i++ { // warm-up
		if err := once(); err != nil {
			return nil, err
		}
	}
	rtts := make([]float64, 0, o.rtts)
	for i := 0; i < o.rtts; i++ {
		t := time.Now()
		if err := once(); err != nil {
			return nil, err
		}
		rtts = append(rtts, float64(time.Since(t).Nanoseconds())/1e3)
	}
	return rtts, nil
}

// connectClients opens n relay clients with keys base+2i+off, in parallel.
func connectClients(o opts, ca *testpki.CA, n, off int) ([]*client.Client, error) {
	cs := make([]*client.Client, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			cfg, _, err := nodeTLS(ca, o.base+2*i+off)
			if err != nil {
				errs[i] = err
				return
			}
			c, err := client.New(client.Config{URL: o.addr, TLSConfig: cfg, SendQueueLen: 1024, RecvQueueLen: 4096})
			if err != nil {
				errs[i] = err
				return
			}
			cs[i] = c
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			errs[i] = c.WaitConnected(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		closeAll(cs)
		return nil, err
	}
	return cs, nil
}

func closeAll(cs []*client.Client) {
	for _, c := range cs {
		if c != nil {
			_ = c.Close()
		}
	}
}

// relayRole: senders have keys base+2i, receivers base+2i+1; pair i talks
// only to pair i.
func relayRole(o opts, ca *testpki.CA) error {
	pairs := max(o.pairs, 1)
	if o.role == "relay-echo" || o.role == "relay-ping" {
		pairs = 1
	}
	off := 0
	if o.role == "relay-recv" || o.role == "relay-echo" {
		off = 1
	}
	cs, err := connectClients(o, ca, pairs, off)
	if err != nil {
		return err
	}
	defer closeAll(cs)
	fmt.Println("READY")
	pkt := make([]byte, o.size)
	switch o.role {
	case "relay-recv":
		var m meter
		for _, c := range cs {
			go func() {
				bufs := make([][]byte, 64)
				for i := range bufs {
					bufs[i] = make([]byte, 2048)
				}
				sizes := make([]int, 64)
				srcs := make([]client.Key, 64)
				for {
					n, err := c.RecvBatch(bufs, sizes, srcs)
					if err != nil {
						return
					}
					b := 0
					for _, s := range sizes[:n] {
						b += s
					}
					m.add(n, b)
				}
			}()
		}
		r, err := m.run(o)
		if err != nil {
			return err
		}
		for _, c := range cs {
			r.Dropped += c.Stats().RecvDrops
		}
		printJSON(r)
	case "relay-send":
		ctx, cancel := signalContext()
		defer cancel()
		end := time.Now().Add(sendFor(o))
		var wg sync.WaitGroup
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				dst := keyOf(o.base + 2*i + 1)
				for j := 0; ; j++ {
					if j%256 == 0 && (time.Now().After(end) || ctx.Err() != nil) {
						return
					}
					// Backpressure rather than drops at the sender's own
					// queue: this measures the relay path, not drop rates.
					if err := c.SendWait(ctx, dst, pkt); err != nil {
						return
					}
				}
			}()
		}
		wg.Wait()
		printJSON(result{})
	case "relay-echo":
		c := cs[0]
		buf := make([]byte, 2048)
		for {
			src, n, err := c.Recv(buf)
			if err != nil {
				return nil
			}
			if n == 1 { // end marker
				printJSON(result{})
				return nil
			}
			_ = c.Send(src, buf[:n])
		}
	case "relay-ping":
		c := cs[0]
		dst := keyOf(o.base + 1)
		buf := make([]byte, 2048)
		rtts, err := pingLoop(o, func() error {
			if err := c.Send(dst, pkt); err != nil {
				return err
			}
			_, _, err := c.Recv(buf)
			return err
		})
		if err != nil {
			return err
		}
		_ = c.Send(dst, []byte{0})
		time.Sleep(100 * time.Millisecond)
		printJSON(result{RTTs: rtts})
	}
	return nil
}

func idleClients(o opts, ca *testpki.CA) error {
	o.base = 1_000_000
	cs, err := connectClients(o, ca, o.idle, 0)
	if err != nil {
		return err
	}
	defer closeAll(cs)
	fmt.Println("READY")
	ctx, cancel := signalContext()
	defer cancel()
	<-ctx.Done()
	return nil
}

// rawRole speaks the relay protocol directly, with exactly the loops of the
// pipe endpoints (one goroutine, 16 KiB buffers), so that the only
// difference between the pipe and relay measurements is the relay.
func rawRole(o opts, ca *testpki.CA) error {
	idx := o.base
	if o.role == "raw-recv" {
		idx = o.base + 1
	}
	cfg, _, err := nodeTLS(ca, idx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	nc, br, err := upgrade.Dial(ctx, o.addr, cfg)
	cancel()
	if err != nil {
		return err
	}
	defer nc.Close()
	fr := frame.NewReader(br)
	buf := make([]byte, frame.MaxPayload)
	if _, _, err := fr.ReadFrame(buf); err != nil { // ServerHello
		return err
	}
	fmt.Println("READY")
	if o.role == "raw-recv" {
		var m meter
		go func() {
			for {
				typ, p, err := fr.ReadFrame(buf)
				if err != nil {
					return
				}
				if typ == frame.TypeRecvPacket {
					m.add(1, len(p)-frame.KeyLen)
				}
			}
		}()
		r, err := m.run(o)
		if err != nil {
			return err
		}
		printJSON(r)
		return nil
	}
	sctx, scancel := signalContext()
	defer scancel()
	go func() { // drain keepalives and the like
		for {
			if _, _, err := fr.ReadFrame(buf); err != nil {
				return
			}
		}
	}()
	fw := frame.NewWriter(bufio.NewWriterSize(nc, 16<<10))
	pkt := make([]byte, o.size)
	dst := keyOf(o.base + 1)
	end := time.Now().Add(sendFor(o))
	for i := 0; ; i++ {
		if i%1024 == 0 && (time.Now().After(end) || sctx.Err() != nil) {
			break
		}
		if err := fw.WriteKeyPacket(frame.TypeSendPacket, dst, pkt); err != nil {
			break
		}
	}
	printJSON(result{})
	return nil
}
