// Package client is the agent's side of cvlan-relay: it keeps one
// authenticated connection to a relay and sends and receives opaque
// WireGuard packets addressed by WireGuard public key.
//
// The API is stable across reconnects: a Client is created once and, until
// Close, redials by itself after any failure with jittered exponential
// backoff (MinBackoff doubling up to MaxBackoff, each wait drawn from
// [d/2, d]). When the relay announces a restart (Restarting frame) the client
// waits the announced time and then retries at MinBackoff for the announced
// window. Packets sent while disconnected wait in the bounded send queue.
//
// Send never blocks: when the send queue is full the oldest packet is
// dropped (counted in Stats). Received packets wait in a bounded receive
// queue for Recv or RecvBatch, again dropping the oldest when the caller
// falls behind. Both suit WireGuard, which tolerates loss and prefers fresh
// packets to late ones.
package client

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/bufpool"
	"github.com/cloudvlan/cloudvlan/relay/internal/pktq"
	"github.com/cloudvlan/cloudvlan/relay/internal/upgrade"
)

// Key is a WireGuard public key (32 bytes).
type Key = frame.Key

// PeerGoneReason says why a peer is no longer reachable through the relay.
type PeerGoneReason = frame.PeerGoneReason

// Reasons carried by peer-gone notices.
const (
	PeerGoneDisconnected = frame.PeerGoneDisconnected
	PeerGoneNotHere      = frame.PeerGoneNotHere
)

// MaxPacket is the largest packet Send accepts.
const MaxPacket = frame.MaxPacket

// Errors returned by the Client.
var (
	// ErrClosed: the Client was closed.
	ErrClosed = errors.New("relay client: closed")
	// ErrPacketTooLarge: the packet exceeds MaxPacket.
	ErrPacketTooLarge = errors.New("relay client: packet too large")
)

// Config configures a Client. Zero values take the documented defaults.
type Config struct {
	// URL of the relay, e.g. "https://relay1.example.com/relay" (path defaults to /relay).
	URL string
	// TLSConfig carries the node certificate (Certificates or
	// GetClientCertificate) and the roots (RootCAs). It is cloned; TLS 1.3 is enforced.
	TLSConfig *tls.Config
	// SendQueueLen and RecvQueueLen bound the queues in packets; default 1024.
	SendQueueLen, RecvQueueLen int
	// KeepAlive is the interval of keepalives on an idle connection; default 25 s.
	KeepAlive time.Duration
	// IdleTimeout drops a connection on which nothing arrived for this long
	// (the relay sends keepalives); default 90 s.
	IdleTimeout time.Duration
	// WriteTimeout drops a connection whose writes stall; default 10 s.
	WriteTimeout time.Duration
	// DialTimeout bounds one connection attempt; default 15 s.
	DialTimeout time.Duration
	// MinBackoff and MaxBackoff bound the redial delay; defaults 100 ms and 30 s.
	MinBackoff, MaxBackoff time.Duration
	// OnPeerGone, if set, is called when the relay says a peer this client
	// sent to is gone. It runs on the receive goroutine and must not block.
	OnPeerGone func(peer Key, reason PeerGoneReason)
	// OnConnState, if set, is called after each connect (connected true) and
	// disconnect (err says why). It runs on the connection goroutine and must not block.
	OnConnState func(connected bool, err error)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Stats are the client's counters.
type Stats struct {
	PacketsSent, BytesSent    uint64
	PacketsRecv, BytesRecv    uint64
	SendDrops, RecvDrops      uint64
	Connects, ConnectFailures uint64
}

type outItem struct {
	typ  frame.Type
	dst  Key
	buf  *bufpool.Buf
	ping [8]byte
}

type inItem struct {
	src Key
	buf *bufpool.Buf
}

// Client is a connection to one relay that survives reconnects.
type Client struct {
	cfg   Config
	log   *slog.Logger
	pool  *bufpool.Pool
	sendQ *pktq.Queue[outItem]
	recvQ *pktq.Queue[inItem]

	ctx    context.Context
	cancel context.CancelFunc
	done   chan struct{} // closed when the connection goroutine exits

	mu         sync.Mutex
	connected  bool
	stateCh    chan struct{} // closed and replaced on each state change
	lastErr    error
	self       Key
	nc         net.Conn
	pings      map[[8]byte]chan struct{}
	restartIn  time.Duration
	restartFor time.Duration

	closeOnce sync.Once
	closed    atomic.Bool

	packetsSent, bytesSent, packetsRecv, bytesRecv atomic.Uint64
	sendDrops, recvDrops, connects, connectFails   atomic.Uint64
}

// New validates cfg and starts connecting in the background.
func New(cfg Config) (*Client, error) {
	if cfg.URL == "" || cfg.TLSConfig == nil {
		return nil, errors.New("relay client: URL and TLSConfig are required")
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if cfg.SendQueueLen <= 0 {
		cfg.SendQueueLen = 1024
	}
	if cfg.RecvQueueLen <= 0 {
		cfg.RecvQueueLen = 1024
	}
	def(&cfg.KeepAlive, 25*time.Second)
	def(&cfg.IdleTimeout, 90*time.Second)
	def(&cfg.WriteTimeout, 10*time.Second)
	def(&cfg.DialTimeout, 15*time.Second)
	def(&cfg.MinBackoff, 100*time.Millisecond)
	def(&cfg.MaxBackoff, 30*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{
		cfg:     cfg,
		log:     cfg.Logger.With("relay_url", cfg.URL),
		pool:    bufpool.New(frame.MaxPayload),
		sendQ:   pktq.New[outItem](cfg.SendQueueLen, cfg.SendQueueLen+1024),
		recvQ:   pktq.New[inItem](cfg.RecvQueueLen, cfg.RecvQueueLen),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		stateCh: make(chan struct{}),
		pings:   make(map[[8]byte]chan struct{}),
	}
	go c.loop()
	return c, nil
}

// Dial creates a Client for url and waits until its first connection is up.
func Dial(ctx context.Context, url string, tlsConfig *tls.Config) (*Client, error) {
	c, err := New(Config{URL: url, TLSConfig: tlsConfig})
	if err != nil {
		return nil, err
	}
	if err := c.WaitConnected(ctx); err != nil {
		_ = c.Close()
		return nil, err
	}
	return c, nil
}

// WaitConnected blocks until the client is connected, ctx is done, or the
// client is closed. On ctx expiry the last connection error is included.
func (c *Client) WaitConnected(ctx context.Context) error {
	for {
		c.mu.Lock()
		ok, ch, last := c.connected, c.stateCh, c.lastErr
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ch:
		case <-c.done:
			return ErrClosed
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("relay client: not connected: %w (last error: %v)", ctx.Err(), last)
			}
			return fmt.Errorf("relay client: not connected: %w", ctx.Err())
		}
	}
}

// Connected reports whether a connection is currently up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

// SelfKey returns this client's key as the relay read it from the
// certificate (zero before the first connection).
func (c *Client) SelfKey() Key {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.self
}

// Stats returns the client's counters.
func (c *Client) Stats() Stats {
	return Stats{
		PacketsSent: c.packetsSent.Load(), BytesSent: c.bytesSent.Load(),
		PacketsRecv: c.packetsRecv.Load(), BytesRecv: c.bytesRecv.Load(),
		SendDrops: c.sendDrops.Load(), RecvDrops: c.recvDrops.Load(),
		Connects: c.connects.Load(), ConnectFailures: c.connectFails.Load(),
	}
}

// Pending returns the number of packets waiting in the send queue; a
// sender that prefers pacing to drops can wait while it is high.
func (c *Client) Pending() int { return c.sendQ.Len() }

// SendQueueLen returns the send queue's bound.
func (c *Client) SendQueueLen() int { return c.cfg.SendQueueLen }

// Send queues pkt for dst and returns at once; pkt is copied. When the queue
// is full the oldest queued packet is dropped.
func (c *Client) Send(dst Key, pkt []byte) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if len(pkt) > MaxPacket {
		return ErrPacketTooLarge
	}
	buf := c.pool.Get(len(pkt))
	copy(buf.B, pkt)
	dropped, res := c.sendQ.Push(outItem{typ: frame.TypeSendPacket, dst: dst, buf: buf})
	switch res {
	case pktq.Closed:
		c.pool.Put(buf)
		return ErrClosed
	case pktq.PushedDropped:
		c.sendDrops.Add(1)
		c.pool.Put(dropped.buf)
	}
	return nil
}

// SendWait is Send with backpressure: while the send queue is full it waits
// (until ctx is done) instead of dropping the oldest packet, like a
// blocking socket.
func (c *Client) SendWait(ctx context.Context, dst Key, pkt []byte) error {
	for c.sendQ.Full() {
		select {
		case <-c.sendQ.Space():
		case <-ctx.Done():
			return fmt.Errorf("relay send: %w", ctx.Err())
		case <-c.done:
			return ErrClosed
		}
	}
	return c.Send(dst, pkt)
}

// Recv blocks until a packet arrives, copies it into buf and returns its
// sender and length. A packet longer than buf is truncated to len(buf).
// Recv may be called from several goroutines.
func (c *Client) Recv(buf []byte) (Key, int, error) {
	for {
		if it, ok := c.recvQ.PopOne(); ok {
			n := copy(buf, it.buf.B)
			c.pool.Put(it.buf)
			return it.src, n, nil
		}
		select {
		case <-c.recvQ.Ready():
		case <-c.done:
			return Key{}, 0, ErrClosed
		}
	}
}

// RecvBatch blocks until at least one packet arrives, then fills up to
// len(bufs) packets without blocking again: packet i is copied into
// bufs[i], its length stored in sizes[i] and its sender in srcs[i]. It
// returns the number of packets. The shape matches wireguard-go's
// conn.ReceiveFunc.
func (c *Client) RecvBatch(bufs [][]byte, sizes []int, srcs []Key) (int, error) {
	n := min(len(bufs), len(sizes), len(srcs))
	if n == 0 {
		return 0, nil
	}
	// Pop in chunks under one lock each, into a stack array.
	var tmp [64]inItem
	for {
		got := 0
		for got < n {
			items := c.recvQ.Pop(tmp[:0], min(n-got, len(tmp)))
			if len(items) == 0 {
				break
			}
			for i := range items {
				sizes[got] = copy(bufs[got], items[i].buf.B)
				srcs[got] = items[i].src
				c.pool.Put(items[i].buf)
				items[i] = inItem{}
				got++
			}
		}
		if got > 0 {
			return got, nil
		}
		select {
		case <-c.recvQ.Ready():
		case <-c.done:
			return 0, ErrClosed
		}
	}
}

// Ping measures the round-trip time to the relay. It needs a connection; it
// waits for one until ctx is done.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	var data [8]byte
	_, _ = rand.Read(data[:])
	ch := make(chan struct{}, 1)
	c.mu.Lock()
	c.pings[data] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pings, data)
		c.mu.Unlock()
	}()
	start := time.Now()
	if c.sendQ.PushControl(outItem{typ: frame.TypePing, ping: data}) != pktq.Pushed {
		return 0, ErrClosed
	}
	select {
	case <-ch:
		return time.Since(start), nil
	case <-ctx.Done():
		return 0, fmt.Errorf("relay ping: %w", ctx.Err())
	case <-c.done:
		return 0, ErrClosed
	}
}

// Close ends the client, its connection and goroutines. Queued packets are discarded.
func (c *Client) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.cancel()
		c.mu.Lock()
		if c.nc != nil {
			_ = c.nc.Close()
		}
		c.mu.Unlock()
		<-c.done
		for _, it := range c.sendQ.Close() {
			c.pool.Put(it.buf)
		}
		for _, it := range c.recvQ.Close() {
			c.pool.Put(it.buf)
		}
	})
	return nil
}

func (c *Client) setState(connected bool, nc net.Conn, self Key, err error) {
	c.mu.Lock()
	c.connected = connected
	c.nc = nc
	if connected {
		c.self = self
	}
	if err != nil {
		c.lastErr = err
	}
	close(c.stateCh)
	c.stateCh = make(chan struct{})
	c.mu.Unlock()
	if c.cfg.OnConnState != nil {
		c.cfg.OnConnState(connected, err)
	}
}

// loop connects, serves and redials until Close.
func (c *Client) loop() {
	defer close(c.done)
	backoff := c.cfg.MinBackoff
	var fastUntil time.Time
	for c.ctx.Err() == nil {
		start := time.Now()
		err := c.connectAndServe()
		if c.ctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*time.Second {
			backoff = c.cfg.MinBackoff
		}
		wait := backoff/2 + time.Duration(mrand.Int64N(int64(backoff/2)+1))
		c.mu.Lock()
		if c.restartFor > 0 {
			// The relay announced a restart: come back when it said, then keep
			// trying quickly for the window it gave.
			wait = c.restartIn
			fastUntil = time.Now().Add(c.restartIn + c.restartFor)
			c.restartIn, c.restartFor = 0, 0
		}
		c.mu.Unlock()
		if time.Now().Before(fastUntil) {
			backoff = c.cfg.MinBackoff
		} else {
			backoff = min(2*backoff, c.cfg.MaxBackoff)
		}
		c.log.Debug("relay connection down", "err", err, "retry_in", wait)
		t := time.NewTimer(wait)
		select {
		case <-c.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (c *Client) connectAndServe() error {
	dctx, cancel := context.WithTimeout(c.ctx, c.cfg.DialTimeout)
	nc, br, err := upgrade.Dial(dctx, c.cfg.URL, c.cfg.TLSConfig)
	var self Key
	if err == nil {
		self, err = readHello(nc, br, c.cfg.DialTimeout)
	}
	cancel()
	if err != nil {
		if nc != nil {
			_ = nc.Close()
		}
		c.connectFails.Add(1)
		c.setState(false, nil, Key{}, err)
		return err
	}
	c.connects.Add(1)
	c.setState(true, nc, self, nil)
	if c.ctx.Err() != nil { // closed while connecting
		_ = nc.Close()
	}
	conn := &connection{c: c, nc: nc, br: br, done: make(chan struct{}), writerDone: make(chan struct{})}
	go conn.writeLoop()
	err = conn.readLoop()
	conn.close()
	<-conn.writerDone
	c.setState(false, nil, Key{}, err)
	return err
}

func readHello(nc net.Conn, br *bufio.Reader, timeout time.Duration) (Key, error) {
	_ = nc.SetReadDeadline(time.Now().Add(timeout))
	var b [64]byte
	typ, p, err := frame.NewReader(br).ReadFrame(b[:])
	if err != nil {
		return Key{}, fmt.Errorf("relay hello: %w", err)
	}
	if typ != frame.TypeServerHello {
		return Key{}, fmt.Errorf("relay hello: got %v", typ)
	}
	_, self, err := frame.ParseServerHello(p)
	return self, err
}
