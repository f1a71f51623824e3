package leanh2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// stream is one request. Fields after mu's comment are guarded by conn.mu.
type stream struct {
	c      *conn
	id     uint32
	ctx    context.Context
	cancel context.CancelCauseFunc

	// guarded by c.mu
	body        []byte // received, not yet read by the handler
	bodyEOF     bool   // the client ended its side
	bodyDone    bool   // the handler closed the body or returned: more data is dropped
	bodyWait    chan struct{}
	recvWindow  int64 // what the client may still send on this stream
	recvUnacked int64 // read by the handler, not yet returned in a WINDOW_UPDATE
	sendWindow  int64
	reset       bool  // RST_STREAM was sent or received
	declared    int64 // the request's content-length, -1 if none
	received    int64 // request body bytes received
}

// endBodyLocked records the end of the client's side; a body shorter than its declared
// content-length is malformed. c.mu is held.
func (st *stream) endBodyLocked() error {
	st.bodyEOF = true
	st.wakeReaderLocked()
	if st.declared >= 0 && st.received != st.declared {
		return fmt.Errorf("leanh2: request body of %d bytes, content-length %d", st.received, st.declared)
	}
	return nil
}

// abort ends the stream's handler context and wakes its waiters.
func (st *stream) abort(cause error) {
	c := st.c
	c.mu.Lock()
	st.reset = true
	st.wakeReaderLocked()
	c.wakeWritersLocked()
	c.mu.Unlock()
	st.cancel(cause)
}

func (st *stream) wakeReaderLocked() {
	if st.bodyWait != nil {
		close(st.bodyWait)
		st.bodyWait = nil
	}
}

// onHeaders opens a stream (or takes a request's trailers) and starts its handler.
func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return protocolErr("client opened even stream %d", id)
	}
	if f.HasPriority() && f.Priority.StreamDep == id {
		c.mu.Lock()
		c.lastStreamID = max(c.lastStreamID, id)
		c.mu.Unlock()
		c.resetStream(id, http2.ErrCodeProtocol) // a stream cannot depend on itself
		return nil
	}
	c.mu.Lock()
	if id <= c.lastStreamID {
		st := c.streams[id]
		if st == nil || st.bodyEOF || st.reset {
			// Closed, or the client's side of it is: no more HEADERS (RFC 9113 section 5.1).
			c.mu.Unlock()
			return connErr{code: http2.ErrCodeStreamClosed, reason: fmt.Sprintf("HEADERS on closed stream %d", id)}
		}
		// Request trailers: they must end the stream.
		if !f.StreamEnded() {
			c.mu.Unlock()
			return protocolErr("trailers without END_STREAM on stream %d", id)
		}
		if err := st.endBodyLocked(); err != nil {
			c.mu.Unlock()
			c.resetStream(id, http2.ErrCodeProtocol)
			return nil
		}
		c.mu.Unlock()
		return nil
	}
	c.lastStreamID = id
	refuse := c.goingAway || uint32(len(c.streams)) >= c.srv.maxStreams()
	c.mu.Unlock()
	if refuse {
		// The client may retry it elsewhere or later (RFC 9113 section 8.7).
		return c.write(time.Time{}, func(*batch) error { return c.fr.WriteRSTStream(id, http2.ErrCodeRefusedStream) })
	}
	if f.Truncated {
		return c.respondError(id, http.StatusRequestHeaderFieldsTooLarge)
	}
	req, ok := c.newRequest(f)
	if !ok {
		// Malformed (RFC 9113 section 8.1.1): a stream error.
		return c.write(time.Time{}, func(*batch) error { return c.fr.WriteRSTStream(id, http2.ErrCodeProtocol) })
	}

	st := &stream{c: c, id: id, recvWindow: initialWindow, declared: req.ContentLength}
	st.ctx, st.cancel = context.WithCancelCause(c.base)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		st.cancel(nil)
		return nil
	}
	st.sendWindow = c.peerInitial
	st.bodyEOF = f.StreamEnded()
	c.streams[id] = st
	c.mu.Unlock()
	req.Body = &requestBody{st: st}
	if st.bodyEOF {
		req.Body = http.NoBody
	}
	req = req.WithContext(st.ctx)
	c.wg.Add(1)
	go c.runHandler(st, req)
	return nil
}

// connectionHeaders may not appear in HTTP/2 (RFC 9113 section 8.2.2); "te" only as "trailers".
var connectionHeaders = map[string]bool{"connection": true, "keep-alive": true, "proxy-connection": true, "transfer-encoding": true, "upgrade": true}

// newRequest builds the http.Request of a HEADERS frame; ok is false for a malformed request.
func (c *conn) newRequest(f *http2.MetaHeadersFrame) (req *http.Request, ok bool) {
	method, path := f.PseudoValue("method"), f.PseudoValue("path")
	authority, scheme := f.PseudoValue("authority"), f.PseudoValue("scheme")
	if method == "" || path == "" || scheme == "" || method == http.MethodConnect || f.PseudoValue("protocol") != "" {
		return nil, false
	}
	u, err := url.ParseRequestURI(path)
	if err != nil {
		return nil, false
	}
	regular := f.RegularFields()
	hdr := make(http.Header, len(regular))
	for _, hf := range regular {
		if connectionHeaders[hf.Name] || (hf.Name == "te" && hf.Value != "trailers") {
			return nil, false
		}
		k := http.CanonicalHeaderKey(hf.Name)
		hdr[k] = append(hdr[k], hf.Value)
	}
	if authority == "" {
		authority = hdr.Get("Host")
	}
	req = &http.Request{
		Method: method, URL: u, Proto: "HTTP/2.0", ProtoMajor: 2, Header: hdr, Host: authority,
		RemoteAddr: c.remote, RequestURI: path, TLS: c.tls, ContentLength: -1,
	}
	if cl := hdr.Get("Content-Length"); cl != "" {
		n, err := strconv.ParseInt(cl, 10, 64)
		if err != nil || n < 0 || (f.StreamEnded() && n != 0) {
			return nil, false
		}
		req.ContentLength = n
	}
	if f.StreamEnded() {
		req.ContentLength = 0
	}
	return req, true
}

// respondError answers a request that reaches no handler with a bare status.
func (c *conn) respondError(id uint32, status int) error {
	return c.write(time.Time{}, func(b *batch) error {
		return b.headers(id, []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}, true)
	})
}

func (c *conn) runHandler(st *stream, req *http.Request) {
	defer c.wg.Done()
	rw := &responseWriter{st: st, hdr: http.Header{}}
	handled := false
	path := req.URL.Path // not req: the handler's own copy is what should stay reachable
	defer func() {
		if !handled {
			if r := recover(); r != nil && r != http.ErrAbortHandler {
				c.srv.log().Error("http2 handler panic", "remote", c.remote, "path", path, "panic", r)
			}
			c.resetStream(st.id, http2.ErrCodeInternal)
		}
		c.endStream(st)
	}()
	c.handler.ServeHTTP(rw, req)
	handled = true
	if err := rw.finish(); err != nil && !st.isReset() {
		c.resetStream(st.id, http2.ErrCodeInternal)
	}
}

func (st *stream) isReset() bool {
	st.c.mu.Lock()
	defer st.c.mu.Unlock()
	return st.reset
}

// endStream forgets a stream whose handler returned. What the handler left unread is given back
// to the connection window; a client that has not ended its side is told to stop sending.
func (c *conn) endStream(st *stream) {
	c.mu.Lock()
	delete(c.streams, st.id)
	rstNoError := !st.bodyEOF && !st.reset
	st.bodyDone = true
	// Data the handler read is already counted in c.recvUnacked; what it left is given back now.
	c.recvUnacked += int64(len(st.body))
	st.body = nil
	update := c.takeConnUpdateLocked()
	drained := c.goingAway && len(c.streams) == 0
	c.mu.Unlock()
	st.cancel(context.Canceled)
	if rstNoError {
		_ = c.write(time.Time{}, func(*batch) error { return c.fr.WriteRSTStream(st.id, http2.ErrCodeNo) })
	}
	_ = c.sendUpdates(0, 0, update)
	if drained {
		c.close(errors.New("leanh2: connection drained"))
	}
}

// requestBody is a request's body: what the reader received, returned to the client's window as
// the handler reads it.
type requestBody struct{ st *stream }

func (b *requestBody) Read(p []byte) (int, error) {
	st := b.st
	c := st.c
	for {
		c.mu.Lock()
		switch {
		case len(st.body) > 0:
			n := copy(p, st.body)
			st.body = st.body[n:]
			if len(st.body) == 0 {
				st.body = nil // an idle stream keeps no buffer
			}
			var streamInc uint32
			st.recvUnacked += int64(n)
			if !st.bodyEOF && st.recvUnacked >= windowUpdateAt {
				streamInc = uint32(st.recvUnacked)
				st.recvWindow += st.recvUnacked
				st.recvUnacked = 0
			}
			c.recvUnacked += int64(n)
			connInc := c.takeConnUpdateLocked()
			c.mu.Unlock()
			if err := c.sendUpdates(st.id, streamInc, connInc); err != nil {
				return n, err
			}
			return n, nil
		case st.bodyEOF:
			c.mu.Unlock()
			return 0, io.EOF
		case st.reset || st.bodyDone || c.closed:
			c.mu.Unlock()
			return 0, fmt.Errorf("leanh2: request body: %w", context.Cause(st.ctx))
		}
		if st.bodyWait == nil {
			st.bodyWait = make(chan struct{})
		}
		wait := st.bodyWait
		c.mu.Unlock()
		select {
		case <-wait:
		case <-st.ctx.Done():
		}
	}
}

func (b *requestBody) Close() error {
	st := b.st
	c := st.c
	c.mu.Lock()
	st.bodyDone = true
	c.recvUnacked += int64(len(st.body))
	st.body = nil
	update := c.takeConnUpdateLocked()
	st.wakeReaderLocked()
	c.mu.Unlock()
	return c.sendUpdates(0, 0, update)
}

// responseWriter is a stream's http.ResponseWriter. It supports http.Flusher and, through
// http.ResponseController, write deadlines and full duplex (which HTTP/2 always is); trailers are
// declared with the Trailer header or set with http.TrailerPrefix, as with net/http.
type responseWriter struct {
	st       *stream
	hdr      http.Header
	status   int      // written with WriteHeader
	sent     []string // trailer names declared in the Trailer header at WriteHeader
	header   []hpack.HeaderField
	sentHdr  bool
	buf      []byte
	deadline time.Time
}

var hopHeaders = map[string]bool{"Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Transfer-Encoding": true, "Upgrade": true, "Trailer": true}

func (w *responseWriter) Header() http.Header { return w.hdr }

func (w *responseWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 {
		return // informational responses are not sent
	}
	w.status = code
	w.header = append(w.header, hpack.HeaderField{Name: ":status", Value: strconv.Itoa(code)})
	for k, vs := range w.hdr {
		if k == "Trailer" {
			for _, v := range vs {
				for n := range strings.SplitSeq(v, ",") {
					if n = strings.TrimSpace(n); n != "" {
						w.sent = append(w.sent, http.CanonicalHeaderKey(n))
					}
				}
			}
		}
		if hopHeaders[k] || strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		lk := strings.ToLower(k)
		for _, v := range vs {
			w.header = append(w.header, hpack.HeaderField{Name: lk, Value: v})
		}
	}
}

func (w *responseWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	w.buf = append(w.buf, p...)
	if len(w.buf) >= 16<<10 {
		if err := w.send(false); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (w *responseWriter) Flush() { _ = w.FlushError() }

// FlushError sends the headers and what was written so far.
func (w *responseWriter) FlushError() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.send(false)
}

// SetWriteDeadline bounds the writes that follow, including waits for the client's window. A
// write past the deadline fails and closes the connection if part of it left.
func (w *responseWriter) SetWriteDeadline(t time.Time) error {
	w.deadline = t
	return nil
}

// SetReadDeadline is not supported: a handler's read ends with its context.
func (w *responseWriter) SetReadDeadline(time.Time) error { return http.ErrNotSupported }

// EnableFullDuplex is a no-op: HTTP/2 streams are full duplex.
func (w *responseWriter) EnableFullDuplex() error { return nil }

// finish ends the response: headers if not yet sent, the rest of the body, trailers.
func (w *responseWriter) finish() error {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	return w.send(true)
}

func (w *responseWriter) trailers() []hpack.HeaderField {
	var out []hpack.HeaderField
	add := func(k string, vs []string) {
		lk := strings.ToLower(k)
		for _, v := range vs {
			out = append(out, hpack.HeaderField{Name: lk, Value: v})
		}
	}
	for _, k := range w.sent {
		add(k, w.hdr[k])
	}
	for k, vs := range w.hdr {
		if name, ok := strings.CutPrefix(k, http.TrailerPrefix); ok {
			add(name, vs)
		}
	}
	return out
}

// send writes the pending headers and body; end also sends the trailers and ends the stream.
func (w *responseWriter) send(end bool) error {
	st := w.st
	c := st.c
	var trailers []hpack.HeaderField
	if end {
		trailers = w.trailers()
	}
	data := w.buf
	// The buffer goes with the message: an idle stream keeps none.
	defer func() { w.buf = nil }()
	if !end && len(data) == 0 && w.sentHdr {
		return nil
	}
	for {
		c.mu.Lock()
		if st.reset || c.closed {
			c.mu.Unlock()
			return fmt.Errorf("leanh2: write: %w", context.Cause(st.ctx))
		}
		n := int64(len(data))
		n = min(n, c.sendWindow, st.sendWindow)
		maxFrame := int(c.peerMaxFrame)
		if n <= 0 && len(data) > 0 && w.sentHdr {
			if c.windowGrew == nil {
				c.windowGrew = make(chan struct{})
			}
			grew := c.windowGrew
			c.mu.Unlock()
			if err := w.wait(grew); err != nil {
				return err
			}
			continue
		}
		n = max(n, 0)
		c.sendWindow -= n
		st.sendWindow -= n
		c.mu.Unlock()

		chunk := data[:n]
		last := int(n) == len(data)
		err := c.write(w.deadline, func(b *batch) error {
			if !w.sentHdr {
				onlyHeaders := end && last && len(chunk) == 0 && len(trailers) == 0
				if err := b.headers(st.id, w.header, onlyHeaders); err != nil {
					return err
				}
				if onlyHeaders {
					return nil
				}
			}
			if len(chunk) > 0 || (end && last && len(trailers) == 0 && w.sentHdr) {
				if err := b.data(st.id, chunk, end && last && len(trailers) == 0, maxFrame); err != nil {
					return err
				}
			}
			if end && last && len(trailers) > 0 {
				return b.headers(st.id, trailers, true)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if !w.sentHdr {
			w.sentHdr, w.header = true, nil
		}
		data = data[n:]
		if last {
			return nil
		}
	}
}

// wait blocks until the send window grows, the stream ends or the write deadline passes.
func (w *responseWriter) wait(grew <-chan struct{}) error {
	var timeout <-chan time.Time
	if !w.deadline.IsZero() {
		d := time.Until(w.deadline)
		if d <= 0 {
			return w.deadlineExceeded()
		}
		t := time.NewTimer(d)
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-grew:
		return nil
	case <-w.st.ctx.Done():
		return fmt.Errorf("leanh2: write: %w", context.Cause(w.st.ctx))
	case <-timeout:
		return w.deadlineExceeded()
	}
}

func (w *responseWriter) deadlineExceeded() error {
	w.st.c.resetStream(w.st.id, http2.ErrCodeCancel)
	return fmt.Errorf("leanh2: waiting for the client's flow-control window: %w", os.ErrDeadlineExceeded)
}
