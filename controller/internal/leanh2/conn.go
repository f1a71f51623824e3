package leanh2

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// errConnClosed is returned by writes on a connection that was closed.
var errConnClosed = errors.New("leanh2: connection closed")

// clientPreface is what every HTTP/2 client sends first (RFC 9113 section 3.4).
const clientPreface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// conn is one HTTP/2 connection. Its reader goroutine (serve) owns the framer's read side and
// lastStreamID's writes; the write side of the framer and the hpack encoder are used under wmu
// by whichever goroutine writes; mu guards the streams and the flow-control windows.
type conn struct {
	srv     *Server
	nc      *tls.Conn
	tls     *tls.ConnectionState
	remote  string
	handler http.Handler
	// base is the context requests derive from. The connection has no context of its own (one per
	// connection would be kept for hours): close cancels its streams one by one.
	base context.Context
	fr   *http2.Framer
	out  switchWriter // the framer's writer: a pooled buffer during a write, else nothing
	wg   sync.WaitGroup

	wmu  sync.Mutex
	enc  *hpack.Encoder
	encw switchWriter // the encoder's writer: the pooled header-block buffer during a write
	werr error        // the first write error: the connection is closed after it

	mu           sync.Mutex
	streams      map[uint32]*stream
	lastStreamID uint32 // the highest stream a client opened
	sendWindow   int64  // connection-level window for what the server sends
	peerInitial  int64  // the client's SETTINGS_INITIAL_WINDOW_SIZE for the server's sending
	peerMaxFrame uint32 // the largest frame the client accepts
	windowGrew   chan struct{}
	recvWindow   int64 // connection-level window the client has left
	recvUnacked  int64 // read bytes not yet returned to the client
	goingAway    bool  // the server sent GOAWAY
	closed       bool
}

func newConn(ctx context.Context, s *Server, tc *tls.Conn, h http.Handler) *conn {
	c := &conn{
		srv: s, nc: tc, remote: tc.RemoteAddr().String(), handler: h, streams: map[uint32]*stream{},
		sendWindow: initialWindow, peerInitial: initialWindow, peerMaxFrame: minMaxFrameSize, recvWindow: initialWindow,
	}
	cs := tc.ConnectionState()
	c.tls = &cs
	c.base = ctx
	c.fr = http2.NewFramer(&c.out, tc)
	c.fr.SetMaxReadFrameSize(s.maxReadFrame())
	c.fr.MaxHeaderListSize = s.maxHeaderList()
	c.fr.ReadMetaHeaders = hpack.NewDecoder(s.headerTable(), nil)
	c.enc = hpack.NewEncoder(&c.encw)
	// The encoder indexes nothing: its table would be kept per connection for a handful of
	// response headers. The size update is sent with the first header block.
	c.enc.SetMaxDynamicTableSizeLimit(0)
	return c
}

// switchWriter forwards writes to w, which is set only while a write is under way.
type switchWriter struct{ w io.Writer }

func (s *switchWriter) Write(p []byte) (int, error) {
	if s.w == nil {
		return 0, errors.New("leanh2: write outside a write batch")
	}
	return s.w.Write(p)
}

var (
	bufWriterPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}
	blockPool     = sync.Pool{New: func() any { return new(headerBlock) }}
)

type headerBlock struct{ b []byte }

func (h *headerBlock) Write(p []byte) (int, error) {
	h.b = append(h.b, p...)
	return len(p), nil
}

// batch is one write to the connection: frames are buffered and sent in one go.
type batch struct {
	c  *conn
	bw *bufio.Writer
}

// write runs fn with the connection's write side, then sends what fn wrote. A failed or timed out
// write closes the connection: part of a frame may have left.
func (c *conn) write(deadline time.Time, fn func(b *batch) error) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return errConnClosed
	}
	bw := bufWriterPool.Get().(*bufio.Writer)
	bw.Reset(c.nc)
	c.out.w = bw
	if deadline.IsZero() {
		deadline = time.Now().Add(c.srv.writeTimeout())
	}
	_ = c.nc.SetWriteDeadline(deadline)
	err := fn(&batch{c: c, bw: bw})
	if err == nil {
		err = bw.Flush()
	}
	c.out.w = nil
	bw.Reset(nil)
	bufWriterPool.Put(bw)
	if err != nil {
		c.werr = fmt.Errorf("leanh2: write: %w", err)
		go c.close(c.werr) // the reader may be the caller; close does not wait for it
		return c.werr
	}
	return nil
}

// headers writes a header block for stream id.
func (b *batch) headers(id uint32, fields []hpack.HeaderField, endStream bool) error {
	c := b.c
	blk := blockPool.Get().(*headerBlock)
	defer func() {
		blk.b = blk.b[:0]
		if cap(blk.b) <= 4<<10 {
			blockPool.Put(blk)
		}
	}()
	c.encw.w = blk
	for _, f := range fields {
		if err := c.enc.WriteField(f); err != nil {
			c.encw.w = nil
			return err
		}
	}
	c.encw.w = nil
	c.mu.Lock()
	maxFrame := int(c.peerMaxFrame)
	c.mu.Unlock()
	frag := blk.b
	first := true
	for first || len(frag) > 0 {
		n := min(len(frag), maxFrame)
		end := n == len(frag)
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag[:n], EndStream: endStream, EndHeaders: end})
		} else {
			err = c.fr.WriteContinuation(id, end, frag[:n])
		}
		if err != nil {
			return err
		}
		frag, first = frag[n:], false
	}
	return nil
}

// data writes p as DATA frames no larger than the client accepts. It writes the frame headers
// itself rather than through the framer, whose buffer would keep the largest frame's size.
func (b *batch) data(id uint32, p []byte, endStream bool, maxFrame int) error {
	for first := true; first || len(p) > 0; first = false {
		n := min(len(p), maxFrame)
		var flags byte
		if endStream && n == len(p) {
			flags = byte(http2.FlagDataEndStream)
		}
		hdr := [9]byte{byte(n >> 16), byte(n >> 8), byte(n), byte(http2.FrameData), flags,
			byte(id >> 24 & 0x7f), byte(id >> 16), byte(id >> 8), byte(id)}
		if _, err := b.bw.Write(hdr[:]); err != nil {
			return err
		}
		if _, err := b.bw.Write(p[:n]); err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// serve reads frames until the connection ends.
func (c *conn) serve() error {
	defer c.finish()
	_ = c.nc.SetReadDeadline(time.Now().Add(c.srv.prefaceTimeout()))
	var preface [len(clientPreface)]byte
	if _, err := io.ReadFull(c.nc, preface[:]); err != nil {
		return c.fail(fmt.Errorf("leanh2: read preface: %w", err))
	}
	if string(preface[:]) != clientPreface {
		return c.fail(errors.New("leanh2: bad connection preface"))
	}
	_ = c.nc.SetReadDeadline(time.Time{})
	err := c.write(time.Time{}, func(b *batch) error {
		return c.fr.WriteSettings(
			http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.srv.maxStreams()},
			http2.Setting{ID: http2.SettingMaxFrameSize, Val: c.srv.maxReadFrame()},
			http2.Setting{ID: http2.SettingHeaderTableSize, Val: c.srv.headerTable()},
			http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: c.srv.maxHeaderList()},
		)
	})
	if err != nil {
		return c.fail(err)
	}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				// A refused request still opens its stream: later frames on it are not "idle".
				c.mu.Lock()
				if se.StreamID%2 == 1 && se.StreamID > c.lastStreamID {
					c.lastStreamID = se.StreamID
				}
				c.mu.Unlock()
				c.resetStream(se.StreamID, se.Code)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return c.connError(http2.ErrCode(ce), fmt.Errorf("leanh2: %w: %v", err, c.fr.ErrorDetail()))
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return c.connError(http2.ErrCodeFrameSize, err)
			}
			return c.fail(err)
		}
		if err := c.process(f); err != nil {
			var ce connErr
			if errors.As(err, &ce) {
				return c.connError(ce.code, err)
			}
			return c.fail(err)
		}
		if c.drained() {
			return c.fail(errors.New("leanh2: connection drained"))
		}
	}
}

// connErr is a connection error (RFC 9113 section 5.4.1): GOAWAY with code, then close.
type connErr struct {
	code   http2.ErrCode
	reason string
}

func (e connErr) Error() string {
	return fmt.Sprintf("leanh2: connection error %v: %s", e.code, e.reason)
}

func protocolErr(format string, args ...any) error {
	return connErr{code: http2.ErrCodeProtocol, reason: fmt.Sprintf(format, args...)}
}

func (c *conn) process(f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		return c.onSettings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		return c.write(time.Time{}, func(*batch) error { return c.fr.WritePing(true, f.Data) })
	case *http2.WindowUpdateFrame:
		return c.onWindowUpdate(f)
	case *http2.MetaHeadersFrame:
		return c.onHeaders(f)
	case *http2.DataFrame:
		return c.onData(f)
	case *http2.RSTStreamFrame:
		if c.isIdle(f.StreamID) {
			return protocolErr("RST_STREAM on idle stream %d", f.StreamID)
		}
		if st := c.stream(f.StreamID); st != nil {
			st.abort(fmt.Errorf("leanh2: stream reset by client (%v)", f.ErrCode))
		}
		return nil
	case *http2.GoAwayFrame:
		// The client opens nothing more and closes the connection when it is done.
		return nil
	case *http2.PushPromiseFrame:
		return protocolErr("client sent PUSH_PROMISE")
	case *http2.PriorityFrame:
		if f.StreamDep == f.StreamID {
			c.resetStream(f.StreamID, http2.ErrCodeProtocol) // a stream cannot depend on itself
		}
		return nil
	default:
		// PRIORITY, unknown extension frames: nothing to do.
		return nil
	}
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connErr{code: http2.ErrCode(ce), reason: "invalid setting " + s.String()}
			}
			return err
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		switch s.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(s.Val) - c.peerInitial
			c.peerInitial = int64(s.Val)
			for _, st := range c.streams {
				st.sendWindow += delta
				if st.sendWindow > 1<<31-1 {
					return connErr{code: http2.ErrCodeFlowControl, reason: "initial window size overflows a stream window"}
				}
			}
			if delta > 0 {
				c.wakeWritersLocked()
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = s.Val
		}
		return nil
	})
	if err != nil {
		return err
	}
	return c.write(time.Time{}, func(*batch) error { return c.fr.WriteSettingsAck() })
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		c.sendWindow += int64(f.Increment)
		if c.sendWindow > 1<<31-1 {
			return connErr{code: http2.ErrCodeFlowControl, reason: "connection window overflow"}
		}
		c.wakeWritersLocked()
		return nil
	}
	if f.StreamID > c.lastStreamID {
		return protocolErr("WINDOW_UPDATE on idle stream %d", f.StreamID)
	}
	st := c.streams[f.StreamID]
	if st == nil {
		return nil // closed: late updates are allowed
	}
	st.sendWindow += int64(f.Increment)
	if st.sendWindow > 1<<31-1 {
		go c.resetStream(st.id, http2.ErrCodeFlowControl)
		return nil
	}
	c.wakeWritersLocked()
	return nil
}

// wakeWritersLocked wakes every handler waiting for a send window. c.mu is held.
func (c *conn) wakeWritersLocked() {
	if c.windowGrew != nil {
		close(c.windowGrew)
		c.windowGrew = nil
	}
}

func (c *conn) isIdle(id uint32) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return id > c.lastStreamID
}

func (c *conn) stream(id uint32) *stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	n := int64(f.Length) // padding counts against flow control too
	data := f.Data()
	c.mu.Lock()
	if id > c.lastStreamID {
		c.mu.Unlock()
		return protocolErr("DATA on idle stream %d", id)
	}
	if n > c.recvWindow {
		c.mu.Unlock()
		return connErr{code: http2.ErrCodeFlowControl, reason: "client overran the connection window"}
	}
	c.recvWindow -= n
	st := c.streams[id]
	if st == nil || st.bodyEOF || st.reset {
		// Closed, or the client's side of it is (RFC 9113 section 5.1): a stream error; the data
		// is dropped and its window given back.
		c.recvUnacked += n
		update := c.takeConnUpdateLocked()
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeStreamClosed)
		return c.sendUpdates(0, 0, update)
	}
	if st.bodyDone {
		// The handler no longer reads the body: dropped, its window given back.
		c.recvUnacked += n
		update := c.takeConnUpdateLocked()
		c.mu.Unlock()
		return c.sendUpdates(0, 0, update)
	}
	if n > st.recvWindow {
		c.recvUnacked += n
		update := c.takeConnUpdateLocked()
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeFlowControl)
		return c.sendUpdates(0, 0, update)
	}
	st.recvWindow -= n
	// Padding is consumed at once; the data when the handler reads it.
	pad := n - int64(len(data))
	c.recvUnacked += pad
	st.recvUnacked += pad
	st.body = append(st.body, data...)
	st.received += int64(len(data))
	malformed := st.declared >= 0 && st.received > st.declared
	if f.StreamEnded() && st.endBodyLocked() != nil {
		malformed = true
	}
	st.wakeReaderLocked()
	update := c.takeConnUpdateLocked()
	c.mu.Unlock()
	if malformed {
		c.resetStream(id, http2.ErrCodeProtocol) // content-length and DATA disagree
	}
	return c.sendUpdates(0, 0, update)
}

// takeConnUpdateLocked returns the connection window to give back now, if enough has been read.
func (c *conn) takeConnUpdateLocked() uint32 {
	if c.recvUnacked < windowUpdateAt {
		return 0
	}
	n := c.recvUnacked
	c.recvUnacked = 0
	c.recvWindow += n
	return uint32(n)
}

// sendUpdates writes WINDOW_UPDATE frames for a stream and the connection (zero: none).
func (c *conn) sendUpdates(streamID, streamInc, connInc uint32) error {
	if streamInc == 0 && connInc == 0 {
		return nil
	}
	return c.write(time.Time{}, func(*batch) error {
		if streamInc > 0 {
			if err := c.fr.WriteWindowUpdate(streamID, streamInc); err != nil {
				return err
			}
		}
		if connInc > 0 {
			return c.fr.WriteWindowUpdate(0, connInc)
		}
		return nil
	})
}

// resetStream sends RST_STREAM and ends the stream's handler context.
func (c *conn) resetStream(id uint32, code http2.ErrCode) {
	if st := c.stream(id); st != nil {
		st.abort(fmt.Errorf("leanh2: stream reset by server (%v)", code))
	}
	_ = c.write(time.Time{}, func(*batch) error { return c.fr.WriteRSTStream(id, code) })
}

// connError sends GOAWAY with code and closes the connection.
func (c *conn) connError(code http2.ErrCode, err error) error {
	c.mu.Lock()
	last := c.lastStreamID
	c.mu.Unlock()
	_ = c.write(time.Now().Add(time.Second), func(*batch) error { return c.fr.WriteGoAway(last, code, nil) })
	return c.fail(err)
}

// fail closes the connection with err and returns it.
func (c *conn) fail(err error) error {
	c.srv.log().Debug("http2 connection ended", "remote", c.remote, "err", err)
	c.close(err)
	return err
}

// close closes the connection: handlers' contexts are canceled and waiting writers wake.
func (c *conn) close(cause error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.wakeWritersLocked()
	streams := make([]*stream, 0, len(c.streams))
	for _, st := range c.streams {
		streams = append(streams, st)
	}
	c.mu.Unlock()
	// The connection first: handlers that wake up must find nothing to write to (a frame after
	// GOAWAY would be a lie).
	_ = c.nc.Close()
	for _, st := range streams {
		st.cancel(cause)
	}
}

// finish runs when the reader stops: it waits for the handlers.
func (c *conn) finish() {
	c.close(errors.New("leanh2: connection closed"))
	c.wg.Wait()
}

// goAway starts a graceful close: no new streams; the connection closes once the open ones end.
func (c *conn) goAway() {
	c.mu.Lock()
	if c.goingAway || c.closed {
		c.mu.Unlock()
		return
	}
	c.goingAway = true
	last := c.lastStreamID
	idle := len(c.streams) == 0
	c.mu.Unlock()
	_ = c.write(time.Time{}, func(*batch) error { return c.fr.WriteGoAway(last, http2.ErrCodeNo, nil) })
	if idle {
		c.close(errors.New("leanh2: connection drained"))
	}
}

// drained reports whether a going-away connection has no open streams left.
func (c *conn) drained() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.goingAway && len(c.streams) == 0
}
