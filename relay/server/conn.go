package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/bufpool"
	"github.com/cloudvlan/cloudvlan/relay/internal/identity"
	"github.com/cloudvlan/cloudvlan/relay/internal/pktq"
)

type role int

const (
	roleClient  role = iota // a node or vrouter, addressed by its WireGuard key
	roleMeshIn              // another relay of the region that dialed us
	roleMeshOut             // our link to another relay of the region
)

// typeCloseAfterFlush is an internal queue marker, never sent: the writer
// flushes what precedes it and closes the connection (graceful shutdown).
const typeCloseAfterFlush frame.Type = 0xff

// meshQueueLen bounds a mesh link's data queue; it carries many clients' traffic.
const meshQueueLen = 8192

// flushThreshold: below this many buffered bytes the writer yields once
// before flushing, to fill TLS records better under load.
const flushThreshold = 8 << 10

// backpressureDiv: above 1/backpressureDiv of a destination queue's bound a
// reader yields its processor once, giving the destination's writer a chance
// to drain before packets are dropped. It never blocks.
const backpressureDiv = 2

// Bounded backpressure. When a destination's queue is full but its writer is
// making progress (it wrote within stallAfter), the sender's reader waits up
// to maxSpaceWait for room instead of dropping: the sender's TCP connection
// then slows the sender, and the relay stops spending CPU decrypting
// packets it would drop. A stalled destination (a slow or dead reader) gets
// no waiting at all, and a sender that talks to several peers may spend at
// most waitBudget per second waiting, so that no receiver can hold its
// traffic to others back for long. A client that has only ever sent to one
// peer has no other traffic to protect and is not budgeted.
const (
	stallAfter   = 20 * time.Millisecond
	maxSpaceWait = 2 * time.Millisecond
	waitBudget   = 100 * time.Millisecond
)

// controlHeadroom is how many control entries may exceed a data queue's bound.
const controlHeadroom = 1 << 20

var (
	errReplaced = errors.New("replaced by a newer connection for the same key")
	errProtocol = errors.New("protocol violation")
)

// item is one queued outgoing frame. Packet payloads stay in the pooled
// buffer they were read into: no copy between reading and writing.
type item struct {
	typ        frame.Type
	reason     frame.PeerGoneReason
	src, dst   frame.Key
	buf        *bufpool.Buf
	off        int
	ping       [8]byte
	tenant     string
	restartIn  uint32
	restartFor uint32
}

// route says where a key is connected: to a local client, or (remote) to
// another relay of the region reached through an outbound mesh link.
type route struct {
	key    frame.Key
	tenant string
	via    *conn
	remote bool
	dead   atomic.Bool

	mu      sync.Mutex
	senders map[*conn]struct{} // who sent to key, told when it goes
}

func newRoute(key frame.Key, tenant string, via *conn, remote bool) *route {
	return &route{key: key, tenant: tenant, via: via, remote: remote, senders: make(map[*conn]struct{})}
}

// kill marks r dead and returns the senders to notify.
func (r *route) kill() map[*conn]struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dead.Store(true)
	s := r.senders
	r.senders = nil
	return s
}

// adopt moves the senders of a replaced route to r.
func (r *route) adopt(senders map[*conn]struct{}) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for c := range senders {
		r.senders[c] = struct{}{}
	}
}

// conn is one connection: a client, or a mesh link in either direction.
type conn struct {
	s       *Server
	role    role
	id      identity.Identity
	key     frame.Key
	tenant  string // client's tenant, or a mesh peer's tenant scope ("" = all)
	log     *slog.Logger
	nc      net.Conn
	br      *bufio.Reader
	q       *pktq.Queue[item]
	limiter *tokenBucket
	stats   counters
	route   *route

	closeOnce  sync.Once
	done       chan struct{}
	closeErr   error
	writerDone chan struct{}

	// Owned by the reader goroutine.
	lastRoute   *route
	sentTo      map[frame.Key]*route
	sweepAt     int
	nextRefresh time.Time
	ping        [8]byte
	spaceTimer  *time.Timer
	waitWindow  time.Time     // start of the current one-second wait budget window
	waited      time.Duration // waiting spent in the window

	// progress is when the writer last wrote (unix nanoseconds).
	progress atomic.Int64
}

func (s *Server) newConn(r role, id identity.Identity) *conn {
	c := &conn{
		s: s, role: r, id: id, key: frame.Key(id.WGKey), tenant: id.Tenant,
		done: make(chan struct{}), writerDone: make(chan struct{}),
		sentTo: make(map[frame.Key]*route), sweepAt: 64,
	}
	num := s.nextConn.Add(1)
	switch r {
	case roleClient:
		c.q = pktq.New[item](s.cfg.SendQueueLen, s.cfg.SendQueueLen+controlHeadroom)
		if s.cfg.RateLimitBytes > 0 {
			c.limiter = newTokenBucket(s.cfg.RateLimitBytes, s.cfg.RateBurstBytes)
		}
		c.log = s.log.With("conn", num, "tenant", id.Tenant, "node", id.ID, "key", c.key.ShortString())
	default:
		c.q = pktq.New[item](meshQueueLen, meshQueueLen+controlHeadroom)
		c.log = s.log.With("conn", num, "mesh_peer", id.ID, "scope", id.Tenant, "outbound", r == roleMeshOut)
	}
	return c
}

func (c *conn) attach(nc net.Conn, br *bufio.Reader) { c.nc, c.br = nc, br }

// close ends the connection once; the reader and writer notice and exit.
func (c *conn) close(err error) {
	c.closeOnce.Do(func() {
		c.closeErr = err
		close(c.done)
		if c.nc != nil {
			_ = c.nc.Close()
		}
	})
}

// activate makes a client reachable, replacing an older connection of the same key.
func (s *Server) activate(c *conn) {
	if c.role != roleClient {
		c.log.Info("mesh peer connected")
		return
	}
	r := newRoute(c.key, c.tenant, c, false)
	s.mu.Lock()
	old := s.local[c.key]
	s.local[c.key] = r
	c.route = r
	s.notifyWatchersLocked(c.key, c.tenant, true)
	s.mu.Unlock()
	if old != nil {
		r.adopt(old.kill())
		old.via.close(errReplaced)
	}
	c.log.Debug("client connected")
}

func (s *Server) notifyWatchersLocked(key frame.Key, tenant string, present bool) {
	for w := range s.watchers {
		if w.tenant != "" && w.tenant != tenant {
			continue
		}
		it := item{typ: frame.TypePeerGone, dst: key, reason: frame.PeerGoneDisconnected}
		if present {
			it = item{typ: frame.TypePeerPresent, dst: key, tenant: tenant}
		}
		if w.q.PushControl(it) == pktq.Overflow {
			// The peer cannot keep up with presence changes: drop it so that it
			// reconnects and resynchronises from a fresh snapshot.
			go w.close(errors.New("mesh presence queue overflow"))
		}
	}
}

// addWatcher subscribes an inbound mesh peer: snapshot, then changes. Both
// happen under s.mu so that no change falls between them.
func (s *Server) addWatcher(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.watchers[c]; ok {
		return
	}
	s.watchers[c] = struct{}{}
	for k, r := range s.local {
		if c.tenant != "" && c.tenant != r.tenant {
			continue
		}
		if c.q.PushControl(item{typ: frame.TypePeerPresent, dst: k, tenant: r.tenant}) != pktq.Pushed {
			go c.close(errors.New("mesh presence queue overflow"))
			return
		}
	}
}

// run drives the connection until it ends, then cleans up.
func (c *conn) run() {
	go c.writeLoop()
	err := c.readLoop()
	c.close(err)
	<-c.writerDone
	c.s.finish(c)
	switch {
	case c.closeErr == nil, errors.Is(c.closeErr, net.ErrClosed), errors.Is(c.closeErr, io.EOF):
		c.log.Debug("connection closed")
	default:
		c.log.Info("connection closed", "err", c.closeErr)
	}
}

// finish removes the connection from every table and tells whoever sent to
// it that it is gone.
func (s *Server) finish(c *conn) {
	type notice struct {
		key     frame.Key
		senders map[*conn]struct{}
	}
	var notices []notice
	s.mu.Lock()
	switch c.role {
	case roleClient:
		if c.route != nil && s.local[c.key] == c.route {
			delete(s.local, c.key)
			senders := c.route.kill()
			if _, elsewhere := s.remote[c.key]; !elsewhere {
				notices = append(notices, notice{c.key, senders})
			}
			s.notifyWatchersLocked(c.key, c.tenant, false)
		}
	case roleMeshIn:
		delete(s.watchers, c)
	case roleMeshOut:
		for k, r := range s.remote {
			if r.via != c {
				continue
			}
			delete(s.remote, k)
			senders := r.kill()
			if _, here := s.local[k]; !here {
				notices = append(notices, notice{k, senders})
			}
		}
	}
	s.dropConnLocked(c)
	s.mu.Unlock()

	for _, n := range notices {
		for sc := range n.senders {
			sc.q.PushControl(item{typ: frame.TypePeerGone, dst: n.key, reason: frame.PeerGoneDisconnected})
		}
	}
	for _, r := range c.sentTo {
		r.mu.Lock()
		delete(r.senders, c)
		r.mu.Unlock()
	}
	for _, it := range c.q.Close() {
		s.pool.Put(it.buf)
	}
	s.connWG.Done()
}

// refreshDeadline pushes the idle deadline forward, at most every quarter
// of the idle timeout: setting a deadline per frame would cost a timer update.
func (c *conn) refreshDeadline(now time.Time) {
	if now.Before(c.nextRefresh) {
		return
	}
	idle := c.s.cfg.IdleTimeout
	_ = c.nc.SetReadDeadline(now.Add(idle))
	c.nextRefresh = now.Add(idle / 4)
}

func (c *conn) readLoop() error {
	s := c.s
	fr := frame.NewReader(c.br)
	var (
		now    time.Time
		frames uint
	)
	for {
		// Read the clock when the next read may block (nothing buffered)
		// and every 32 frames: a clock read per packet is measurable, and
		// within a burst time barely moves for the rate limit and deadline.
		if frames++; c.br.Buffered() == 0 || frames&31 == 0 {
			now = time.Now()
			c.refreshDeadline(now)
		}
		typ, n, err := fr.ReadHeader()
		if err != nil {
			return c.readErr(err)
		}
		switch {
		case typ == frame.TypeSendPacket && c.role == roleClient:
			if n < frame.KeyLen {
				s.reject(RejectProtocol)
				return fmt.Errorf("%w: SendPacket of %d bytes", errProtocol, n)
			}
			buf := s.pool.Get(n)
			if err := fr.ReadPayload(buf.B); err != nil {
				s.pool.Put(buf)
				return c.readErr(err)
			}
			c.forward(now, frame.Key(buf.B[:frame.KeyLen]), buf, n-frame.KeyLen)
		case typ == frame.TypeForwardPacket && c.role == roleMeshIn:
			if n < 2*frame.KeyLen {
				s.reject(RejectProtocol)
				return fmt.Errorf("%w: ForwardPacket of %d bytes", errProtocol, n)
			}
			buf := s.pool.Get(n)
			if err := fr.ReadPayload(buf.B); err != nil {
				s.pool.Put(buf)
				return c.readErr(err)
			}
			c.deliverForwarded(buf, n-2*frame.KeyLen)
		case typ == frame.TypePing:
			if n != 8 {
				s.reject(RejectProtocol)
				return fmt.Errorf("%w: Ping of %d bytes", errProtocol, n)
			}
			if err := fr.ReadPayload(c.ping[:]); err != nil {
				return c.readErr(err)
			}
			if _, res := c.q.Push(item{typ: frame.TypePong, ping: c.ping}); res == pktq.PushedDropped {
				c.stats.drops[DropQueueFull].Add(1)
			}
		case typ == frame.TypeWatchConns && c.role == roleMeshIn:
			if err := fr.Discard(n); err != nil {
				return c.readErr(err)
			}
			s.addWatcher(c)
		case (typ == frame.TypePeerPresent || typ == frame.TypePeerGone) && c.role == roleMeshOut:
			if err := c.readPresence(fr, typ, n); err != nil {
				return err
			}
		case typ == frame.TypeSendPacket, typ == frame.TypeForwardPacket, typ == frame.TypeWatchConns:
			// A frame this peer has no right to send: a client posing as a relay.
			s.reject(RejectProtocol)
			return fmt.Errorf("%w: %v not allowed from %s", errProtocol, typ, c.id.Kind)
		default:
			// KeepAlive, Pong and unknown types: skip, so that the protocol can grow.
			if err := fr.Discard(n); err != nil {
				return c.readErr(err)
			}
		}
	}
}

func (c *conn) readErr(err error) error {
	var ne net.Error
	switch {
	case errors.Is(err, frame.ErrFrameTooLarge):
		c.s.reject(RejectProtocol)
	case errors.As(err, &ne) && ne.Timeout():
		c.s.reject(RejectIdle)
		return fmt.Errorf("idle for %v: %w", c.s.cfg.IdleTimeout, err)
	}
	return err
}

// forward routes a client's packet: rate limit, lookup (cached per
// destination), tenant check, enqueue on the destination's connection.
func (c *conn) forward(now time.Time, dst frame.Key, buf *bufpool.Buf, plen int) {
	s := c.s
	if c.limiter != nil && !c.limiter.allow(now, len(buf.B)) {
		c.stats.drops[DropRateLimited].Add(1)
		s.pool.Put(buf)
		return
	}
	r := c.lastRoute
	if r == nil || r.key != dst || r.dead.Load() {
		var reason DropReason
		r, reason = c.lookup(dst)
		if r == nil {
			c.stats.drops[reason].Add(1)
			s.pool.Put(buf)
			return
		}
		c.lastRoute = r
	}
	it := item{typ: frame.TypeRecvPacket, src: c.key, buf: buf, off: frame.KeyLen}
	if r.remote {
		it.typ, it.dst = frame.TypeForwardPacket, dst
	}
	c.push(now, r.via, it, plen)
}

// push queues it on dst: a full queue first gets a bounded wait (see
// maxSpaceWait), then loses its oldest packet.
func (c *conn) push(now time.Time, dst *conn, it item, plen int) {
	s := c.s
	res, n := dst.q.TryPush(it)
	if res == pktq.Full {
		c.waitForSpace(now, dst)
		var dropped item
		dropped, res = dst.q.Push(it)
		if res == pktq.PushedDropped {
			c.stats.drops[DropQueueFull].Add(1)
			s.pool.Put(dropped.buf)
		}
	} else if n > dst.q.Max()/backpressureDiv {
		runtime.Gosched()
	}
	switch res {
	case pktq.Closed:
		c.stats.drops[DropDestClosed].Add(1)
		s.pool.Put(it.buf)
		return
	}
	c.stats.packets.Add(1)
	c.stats.bytes.Add(uint64(plen))
}

// waitForSpace waits briefly for room in dst's queue (see maxSpaceWait).
func (c *conn) waitForSpace(now time.Time, dst *conn) {
	if now.UnixNano()-dst.progress.Load() > int64(stallAfter) {
		return // stalled destination: drop instead
	}
	if now.Sub(c.waitWindow) > time.Second {
		c.waitWindow, c.waited = now, 0
	}
	// The budget protects this sender's traffic to others from one slow
	// receiver. A sender that has only ever sent to dst (a single flow)
	// hurts nobody else by waiting, so it gets TCP-like backpressure instead
	// of drops. (Mesh links carry many flows: always budgeted.)
	if c.waited >= waitBudget && (c.role != roleClient || len(c.sentTo) > 1) {
		return
	}
	if c.spaceTimer == nil {
		c.spaceTimer = time.NewTimer(maxSpaceWait)
	} else {
		c.spaceTimer.Reset(maxSpaceWait)
	}
	defer func() {
		c.spaceTimer.Stop()
		c.waited += time.Since(now)
	}()
	for dst.q.Full() {
		select {
		case <-dst.q.Space():
		case <-c.spaceTimer.C:
			return
		case <-dst.done:
			return
		case <-c.done:
			return
		}
	}
}

// lookup finds a live route to dst within c's tenant and records c as a
// sender so that it hears when dst goes. Another tenant's key is reported
// as unknown to the caller's peer (only the counter differs).
func (c *conn) lookup(dst frame.Key) (*route, DropReason) {
	if r, ok := c.sentTo[dst]; ok && !r.dead.Load() {
		return r, 0
	}
	s := c.s
	for range 3 {
		s.mu.RLock()
		r := s.local[dst]
		if r == nil {
			r = s.remote[dst]
		}
		s.mu.RUnlock()
		if r == nil {
			return nil, DropUnknownDest
		}
		if r.tenant != c.tenant {
			return nil, DropCrossTenant
		}
		r.mu.Lock()
		if r.dead.Load() {
			r.mu.Unlock()
			continue
		}
		r.senders[c] = struct{}{}
		r.mu.Unlock()
		if len(c.sentTo) >= c.sweepAt {
			for k, old := range c.sentTo {
				if old.dead.Load() {
					delete(c.sentTo, k)
				}
			}
			c.sweepAt = 2*len(c.sentTo) + 64
		}
		c.sentTo[dst] = r
		return r, 0
	}
	return nil, DropDestClosed
}

// deliverForwarded hands a packet from a mesh peer to a local client. It is
// never forwarded again: the mesh is one hop.
func (c *conn) deliverForwarded(buf *bufpool.Buf, plen int) {
	s := c.s
	src := frame.Key(buf.B[:frame.KeyLen])
	dst := frame.Key(buf.B[frame.KeyLen : 2*frame.KeyLen])
	r := c.lastRoute
	if r == nil || r.key != dst || r.dead.Load() {
		s.mu.RLock()
		r = s.local[dst]
		s.mu.RUnlock()
		if r == nil {
			c.stats.drops[DropMeshNoRoute].Add(1)
			s.pool.Put(buf)
			return
		}
		if c.tenant != "" && r.tenant != c.tenant {
			c.stats.drops[DropCrossTenant].Add(1)
			s.pool.Put(buf)
			return
		}
		c.lastRoute = r
	}
	c.push(time.Now(), r.via, item{typ: frame.TypeRecvPacket, src: src, buf: buf, off: 2 * frame.KeyLen}, plen)
}

// readPresence applies a mesh peer's PeerPresent or PeerGone.
func (c *conn) readPresence(fr *frame.Reader, typ frame.Type, n int) error {
	if n > frame.KeyLen+frame.MaxTenantLen {
		c.s.reject(RejectProtocol)
		return fmt.Errorf("%w: %v of %d bytes", errProtocol, typ, n)
	}
	var b [frame.KeyLen + frame.MaxTenantLen]byte
	if err := fr.ReadPayload(b[:n]); err != nil {
		return c.readErr(err)
	}
	if typ == frame.TypePeerGone {
		key, _, err := frame.ParsePeerGone(b[:n])
		if err != nil {
			return err
		}
		c.s.removeRemote(key, c)
		return nil
	}
	key, tenant, err := frame.ParsePeerPresent(b[:n])
	if err != nil {
		return err
	}
	if c.tenant != "" && tenant != c.tenant {
		// A tenant's own relay may only announce that tenant's keys.
		return nil
	}
	c.s.addRemote(key, tenant, c)
	return nil
}

func (s *Server) addRemote(key frame.Key, tenant string, via *conn) {
	r := newRoute(key, tenant, via, true)
	s.mu.Lock()
	old := s.remote[key]
	s.remote[key] = r
	s.mu.Unlock()
	if old != nil {
		r.adopt(old.kill())
	}
}

func (s *Server) removeRemote(key frame.Key, via *conn) {
	s.mu.Lock()
	r := s.remote[key]
	if r == nil || r.via != via {
		s.mu.Unlock()
		return
	}
	delete(s.remote, key)
	_, here := s.local[key]
	senders := r.kill()
	s.mu.Unlock()
	if here {
		return
	}
	for sc := range senders {
		sc.q.PushControl(item{typ: frame.TypePeerGone, dst: key, reason: frame.PeerGoneDisconnected})
	}
}

func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// writeLoop drains the send queue into a pooled buffered writer and flushes
// only when the queue is empty, so that bursts leave in full TLS records.
func (c *conn) writeLoop() {
	defer close(c.writerDone)
	s := c.s
	tick := time.NewTicker(jitter(s.cfg.KeepAlive))
	defer tick.Stop()
	var (
		batch        []item
		fw           = frame.NewWriter(nil)
		wrote        bool
		nextDeadline time.Time
	)
	for {
		select {
		case <-c.done:
			return
		case <-tick.C:
			if !wrote {
				c.q.PushControl(item{typ: frame.TypeKeepAlive})
			}
			wrote = false
			continue
		case <-c.q.Ready():
		}
		if now := time.Now(); !now.Before(nextDeadline) {
			_ = c.nc.SetWriteDeadline(now.Add(s.cfg.WriteTimeout))
			nextDeadline = now.Add(s.cfg.WriteTimeout / 4)
		}
		bw := s.bwPool.Get().(*bufio.Writer)
		bw.Reset(c.nc)
		fw.Reset(bw)
		var err error
		closeAfter := false
		yielded := false
		for err == nil && !closeAfter {
			batch = c.q.Pop(batch[:0], 256)
			if len(batch) == 0 {
				// Before flushing a part-filled record, let the producers run
				// once: what they queue meanwhile leaves in the same record
				// and the same system call.
				if !yielded && bw.Buffered() > 0 && bw.Buffered() < flushThreshold {
					yielded = true
					runtime.Gosched()
					continue
				}
				break
			}
			yielded = false
			for i := range batch {
				if err == nil && !closeAfter {
					closeAfter, err = writeItem(fw, &batch[i])
				}
				s.pool.Put(batch[i].buf)
				batch[i] = item{}
			}
			c.progress.Store(time.Now().UnixNano())
		}
		if err == nil {
			err = bw.Flush()
		}
		bw.Reset(nil)
		s.bwPool.Put(bw)
		wrote = true
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				s.reject(RejectWriteTimeout)
			}
			c.close(fmt.Errorf("write: %w", err))
			return
		}
		if closeAfter {
			c.close(nil)
			return
		}
	}
}

func writeItem(fw *frame.Writer, it *item) (closeAfter bool, err error) {
	switch it.typ {
	case frame.TypeRecvPacket:
		return false, fw.WriteKeyPacket(frame.TypeRecvPacket, it.src, it.buf.B[it.off:])
	case frame.TypeForwardPacket:
		return false, fw.WriteForwardPacket(it.src, it.dst, it.buf.B[it.off:])
	case frame.TypePeerGone:
		return false, fw.WritePeerGone(it.dst, it.reason)
	case frame.TypePeerPresent:
		return false, fw.WritePeerPresent(it.dst, it.tenant)
	case frame.TypePing, frame.TypePong:
		return false, fw.WritePing(it.typ, it.ping)
	case frame.TypeRestarting:
		return false, fw.WriteRestarting(it.restartIn, it.restartFor)
	case typeCloseAfterFlush:
		return true, nil
	default:
		return false, fw.WriteEmpty(it.typ)
	}
}
