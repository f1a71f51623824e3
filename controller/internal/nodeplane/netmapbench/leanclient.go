package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1/nodev1connect"
)

// clientLean speaks gRPC over HTTP/2 itself, on x/net/http2's Framer and HPACK over the agent's own
// mTLS connection, with no goroutine of its own: the agent's goroutine writes its requests and
// reads every frame of the connection (its stream's messages, the acknowledgements' responses,
// SETTINGS, PING, WINDOW_UPDATE, GOAWAY). It is what keeps a simulated agent cheapest: one
// goroutine, the TLS connection and a few small buffers. It implements what a gRPC client must for
// these two methods (HTTP/2 preface and settings, flow-control credit both ways, the server's
// concurrent-stream limit, trailers and trailers-only responses, grpc-status and the
// retry-after-ms trailer), not a general client.
const clientLean = "lean"

const (
	// leanTableSize is the HPACK table this client's decoder keeps (advertised in SETTINGS).
	leanTableSize = 1 << 10
	// leanCredit is how much received DATA is acknowledged at once with WINDOW_UPDATE (the
	// initial windows are 64 KiB).
	leanCredit = 16 << 10
	// grpcResourceExhausted is gRPC's RESOURCE_EXHAUSTED status code.
	grpcResourceExhausted = 8
)

// grpcStatusError is a gRPC status other than OK, from a trailer or a trailers-only response.
type grpcStatusError struct {
	code       int
	msg        string
	retryAfter time.Duration
}

func (e *grpcStatusError) Error() string { return fmt.Sprintf("grpc status %d: %s", e.code, e.msg) }

type leanClient struct {
	d         agentDial
	tls       *tls.Config
	authority string

	// The current connection (nil when there is none).
	conn      *tls.Conn
	stopConn  func() bool // detaches the context hook that closes conn
	bw        *bufio.Writer
	fr        *http2.Framer
	enc       *hpack.Encoder
	encBuf    bytes.Buffer
	nextID    uint32
	goingAway bool
	connDebt  uint32 // DATA received on the connection not yet credited back
	// sendWindow is the connection's flow-control window for DATA this client sends. Stream
	// windows are not tracked: each stream carries one request of under 100 bytes.
	sendWindow int64
	// open are the streams not yet ended by the server (the watch and acknowledgements in
	// flight); maxStreams is the server's SETTINGS_MAX_CONCURRENT_STREAMS.
	open       []uint32
	maxStreams uint32

	// The open WatchNetworkMap stream.
	watchID uint32
	msgBuf  []byte // received bytes of the stream not yet returned as messages
	debt    uint32 // DATA received on the stream not yet credited back
	// watchErr is how the stream ended when that was read while sending (waiting for window).
	watchErr error
}

func newLeanClient(d agentDial) *leanClient {
	tc := d.tls.Clone()
	tc.NextProtos = []string{http2.NextProtoTLS}
	return &leanClient{d: d, tls: tc, authority: d.target}
}

// dial opens the connection: TCP from the worker's source address, the mTLS handshake, the
// HTTP/2 preface and this client's SETTINGS.
func (c *leanClient) dial(ctx context.Context) error {
	hctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	raw, err := c.d.dialer.DialContext(hctx, "tcp", c.d.target)
	if err != nil {
		return err
	}
	tc := tls.Client(raw, c.tls)
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		return err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != http2.NextProtoTLS {
		_ = raw.Close()
		return fmt.Errorf("server negotiated %q, not h2", p)
	}
	c.conn = tc
	c.stopConn = context.AfterFunc(ctx, func() { _ = tc.Close() })
	c.bw = bufio.NewWriterSize(tc, 512)
	c.fr = http2.NewFramer(c.bw, tc)
	c.fr.ReadMetaHeaders = hpack.NewDecoder(leanTableSize, nil)
	c.fr.MaxHeaderListSize = 16 << 10
	c.fr.SetReuseFrames()
	c.enc = hpack.NewEncoder(&c.encBuf)
	// RFC 9113's initial send window; 100 concurrent streams is x/net's assumption until the
	// server's SETTINGS arrive.
	c.nextID, c.goingAway, c.connDebt, c.sendWindow = 1, false, 0, 65535
	c.open, c.maxStreams = c.open[:0], 100
	if _, err := io.WriteString(c.bw, http2.ClientPreface); err != nil {
		c.drop()
		return err
	}
	if err := c.fr.WriteSettings(http2.Setting{ID: http2.SettingEnablePush, Val: 0}, http2.Setting{ID: http2.SettingHeaderTableSize, Val: leanTableSize}); err != nil {
		c.drop()
		return err
	}
	return nil
}

// drop closes the connection; the next call dials a new one.
func (c *leanClient) drop() {
	if c.conn == nil {
		return
	}
	c.stopConn()
	_ = c.conn.Close()
	c.conn, c.bw, c.fr, c.enc = nil, nil, nil, nil
	c.encBuf = bytes.Buffer{}
	c.msgBuf = nil
}

// call starts a stream for a unary or server-streaming method: HEADERS, then the request message
// as one DATA frame that ends the stream.
func (c *leanClient) call(ctx context.Context, procedure string, req proto.Message) (uint32, error) {
	if c.conn != nil && (c.goingAway || c.nextID > 1<<30) {
		c.drop()
	}
	if c.conn == nil {
		if err := c.dial(ctx); err != nil {
			return 0, err
		}
	}
	body, err := proto.Marshal(req)
	if err != nil {
		return 0, err
	}
	msg := make([]byte, 5+len(body))
	binary.BigEndian.PutUint32(msg[1:5], uint32(len(body)))
	copy(msg[5:], body)
	for c.sendWindow < int64(len(msg)) || len(c.open) >= int(c.maxStreams) {
		if err := c.pump(); err != nil {
			return 0, err
		}
	}
	c.sendWindow -= int64(len(msg))
	id := c.nextID
	c.nextID += 2
	c.open = append(c.open, id)
	c.encBuf.Reset()
	for _, f := range [...]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "https"},
		{Name: ":authority", Value: c.authority}, {Name: ":path", Value: procedure},
		{Name: "content-type", Value: "application/grpc+proto"}, {Name: "te", Value: "trailers"},
	} {
		if err := c.enc.WriteField(f); err != nil {
			return 0, err
		}
	}
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: c.encBuf.Bytes(), EndHeaders: true}); err != nil {
		c.drop()
		return 0, err
	}
	if err := c.fr.WriteData(id, true, msg); err != nil {
		c.drop()
		return 0, err
	}
	if err := c.bw.Flush(); err != nil {
		c.drop()
		return 0, err
	}
	return id, nil
}

func (c *leanClient) watch(ctx context.Context, req *nodev1.WatchNetworkMapRequest) (mapStream, error) {
	id, err := c.call(ctx, nodev1connect.ControlServiceWatchNetworkMapProcedure, req)
	if err != nil {
		return nil, err
	}
	c.watchID, c.msgBuf, c.debt, c.watchErr = id, c.msgBuf[:0], 0, nil
	return c, nil
}

// ack sends the acknowledgement without waiting for its response: recv reads and discards it.
func (c *leanClient) ack(ctx context.Context, req *nodev1.AckNetworkMapRequest) error {
	_, err := c.call(ctx, nodev1connect.ControlServiceAckNetworkMapProcedure, req)
	return err
}

func (c *leanClient) close() { c.drop() }

// recv returns the watch stream's next message, reading and answering every frame of the
// connection until one is complete or the stream ends.
func (c *leanClient) recv() (*nodev1.WatchNetworkMapResponse, error) {
	for {
		if m, ok, err := c.nextMessage(); err != nil || ok {
			return m, err
		}
		if err := c.watchErr; err != nil {
			c.watchErr = nil
			return nil, err
		}
		if c.conn == nil {
			return nil, errors.New("connection closed")
		}
		f, err := c.fr.ReadFrame()
		if err != nil {
			c.drop()
			return nil, err
		}
		if err := c.handle(f); err != nil {
			c.abandon()
			return nil, err
		}
	}
}

// abandon drops the connection if the watch stream failed while the server still has it open (an
// HTTP error status, say): its stream slot would never be freed.
func (c *leanClient) abandon() {
	for _, o := range c.open {
		if o == c.watchID {
			c.drop()
			return
		}
	}
}

// pump reads and handles one frame while a request waits for flow-control window; how the watch
// stream ended, if it did, is kept for recv.
func (c *leanClient) pump() error {
	if err := c.bw.Flush(); err != nil {
		c.drop()
		return err
	}
	f, err := c.fr.ReadFrame()
	if err != nil {
		c.drop()
		return err
	}
	if err := c.handle(f); err != nil {
		if c.watchErr == nil {
			c.watchErr = err
		}
		c.abandon()
		if c.conn == nil {
			return err
		}
	}
	return nil
}

// nextMessage takes one complete gRPC message off msgBuf.
func (c *leanClient) nextMessage() (*nodev1.WatchNetworkMapResponse, bool, error) {
	if len(c.msgBuf) < 5 {
		return nil, false, nil
	}
	if c.msgBuf[0] != 0 {
		c.drop()
		return nil, false, errors.New("compressed message (no compression was offered)")
	}
	n := int(binary.BigEndian.Uint32(c.msgBuf[1:5]))
	if len(c.msgBuf) < 5+n {
		return nil, false, nil
	}
	m := &nodev1.WatchNetworkMapResponse{}
	if err := proto.Unmarshal(c.msgBuf[5:5+n], m); err != nil {
		c.drop()
		return nil, false, err
	}
	rest := copy(c.msgBuf, c.msgBuf[5+n:])
	c.msgBuf = c.msgBuf[:rest]
	if cap(c.msgBuf) > 4<<10 && rest == 0 {
		c.msgBuf = nil // a large snapshot's buffer is not kept for the stream's life
	}
	return m, true, nil
}

// handle processes one frame; an error ends the watch stream (and drops the connection if the
// connection itself failed).
func (c *leanClient) handle(f http2.Frame) error {
	if h := f.Header(); h.StreamID != 0 && (h.Flags.Has(http2.FlagDataEndStream) && (h.Type == http2.FrameData || h.Type == http2.FrameHeaders) || h.Type == http2.FrameRSTStream) {
		c.ended(h.StreamID)
	}
	switch f := f.(type) {
	case *http2.DataFrame:
		if n := f.Length; n > 0 {
			c.connDebt += n
			if c.connDebt >= leanCredit {
				if err := c.fr.WriteWindowUpdate(0, c.connDebt); err != nil {
					c.drop()
					return err
				}
				c.connDebt = 0
				if err := c.bw.Flush(); err != nil {
					c.drop()
					return err
				}
			}
		}
		if f.StreamID != c.watchID {
			return nil // an acknowledgement's response
		}
		c.msgBuf = append(c.msgBuf, f.Data()...)
		c.debt += f.Length
		if c.debt >= leanCredit && !f.StreamEnded() {
			if err := c.fr.WriteWindowUpdate(c.watchID, c.debt); err != nil {
				c.drop()
				return err
			}
			c.debt = 0
			if err := c.bw.Flush(); err != nil {
				c.drop()
				return err
			}
		}
		if f.StreamEnded() {
			return errors.New("stream ended without trailers")
		}
	case *http2.MetaHeadersFrame:
		if f.StreamID != c.watchID {
			return nil
		}
		if s := f.PseudoValue("status"); s != "" && s != "200" {
			return fmt.Errorf("HTTP status %s", s)
		}
		if !f.StreamEnded() {
			return nil // response headers
		}
		return trailerStatus(f) // trailers, or a trailers-only response
	case *http2.RSTStreamFrame:
		if f.StreamID == c.watchID {
			return fmt.Errorf("stream reset: %v", f.ErrCode)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
			c.enc.SetMaxDynamicTableSize(v)
		}
		if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
			c.maxStreams = max(v, 1)
		}
		return c.flushAfter(c.fr.WriteSettingsAck())
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			c.sendWindow += int64(f.Increment)
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			return c.flushAfter(c.fr.WritePing(true, f.Data))
		}
	case *http2.GoAwayFrame:
		c.goingAway = true
		if c.watchID > f.LastStreamID {
			c.drop()
			return fmt.Errorf("server going away: %v", f.ErrCode)
		}
	}
	return nil
}

// ended forgets a stream the server has ended.
func (c *leanClient) ended(id uint32) {
	for i, o := range c.open {
		if o == id {
			c.open = append(c.open[:i], c.open[i+1:]...)
			return
		}
	}
}

func (c *leanClient) flushAfter(err error) error {
	if err == nil {
		err = c.bw.Flush()
	}
	if err != nil {
		c.drop()
	}
	return err
}

// trailerStatus turns the stream's final header block into its result: io.EOF for grpc-status 0.
func trailerStatus(f *http2.MetaHeadersFrame) error {
	e := &grpcStatusError{code: -1}
	for _, hf := range f.RegularFields() {
		switch hf.Name {
		case "grpc-status":
			code, err := strconv.Atoi(hf.Value)
			if err != nil {
				return fmt.Errorf("bad grpc-status %q", hf.Value)
			}
			e.code = code
		case "grpc-message":
			e.msg, _ = url.PathUnescape(hf.Value)
		case "retry-after-ms":
			e.retryAfter = parseRetryAfter(hf.Value)
		}
	}
	switch e.code {
	case 0:
		return io.EOF
	case -1:
		return errors.New("stream ended without grpc-status")
	}
	return e
}

func (c *leanClient) shed(err error) (bool, time.Duration) {
	var e *grpcStatusError
	if errors.As(err, &e) && e.code == grpcResourceExhausted {
		return true, e.retryAfter
	}
	return false, 0
}
