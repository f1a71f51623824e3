package frame

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
)

// Reader reads frames from a buffered stream. It does not allocate per frame:
// payloads are read into buffers supplied by the caller.
type Reader struct {
	br  *bufio.Reader
	hdr [HeaderLen]byte
}

// NewReader returns a Reader over br.
func NewReader(br *bufio.Reader) *Reader { return &Reader{br: br} }

// ReadHeader reads the next frame header. A payload above MaxPayload is an error
// (ErrFrameTooLarge) and the stream cannot be used afterwards.
func (r *Reader) ReadHeader() (Type, int, error) {
	if _, err := io.ReadFull(r.br, r.hdr[:]); err != nil {
		return 0, 0, err
	}
	return ParseHeader(r.hdr[:])
}

// ReadPayload reads exactly len(p) payload bytes.
func (r *Reader) ReadPayload(p []byte) error {
	if _, err := io.ReadFull(r.br, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	return nil
}

// Discard skips n payload bytes (an unknown or unwanted frame).
func (r *Reader) Discard(n int) error {
	_, err := r.br.Discard(n)
	return err
}

// ReadFrame reads a whole frame into buf and returns its type and payload
// (aliasing buf). buf must be able to hold the payload; ErrShortBuffer otherwise.
func (r *Reader) ReadFrame(buf []byte) (Type, []byte, error) {
	t, n, err := r.ReadHeader()
	if err != nil {
		return t, nil, err
	}
	if n > len(buf) {
		return t, nil, fmt.Errorf("%w: %d > %d", ErrShortBuffer, n, len(buf))
	}
	if err := r.ReadPayload(buf[:n]); err != nil {
		return t, nil, err
	}
	return t, buf[:n], nil
}

// Writer writes frames into a bufio.Writer. Writes are buffered: call Flush
// when nothing more is waiting to be sent, so that many small frames go out in
// one TLS record and one system call.
type Writer struct {
	bw *bufio.Writer
	// scratch holds the fixed part of a frame; a field avoids a per-call
	// heap allocation that passing a local array to an io.Writer would cause.
	scratch [HeaderLen + 2*KeyLen + 1 + MaxTenantLen]byte
}

// NewWriter returns a Writer over bw.
func NewWriter(bw *bufio.Writer) *Writer { return &Writer{bw: bw} }

// Reset switches the Writer to bw (for pooled bufio.Writers).
func (w *Writer) Reset(bw *bufio.Writer) { w.bw = bw }

// Buffered returns the number of bytes waiting in the buffer.
func (w *Writer) Buffered() int { return w.bw.Buffered() }

// Flush writes buffered frames to the underlying stream.
func (w *Writer) Flush() error { return w.bw.Flush() }

func (w *Writer) write(fixed int, body []byte) error {
	if _, err := w.bw.Write(w.scratch[:fixed]); err != nil {
		return err
	}
	if len(body) == 0 {
		return nil
	}
	_, err := w.bw.Write(body)
	return err
}

// WriteServerHello writes a ServerHello telling the client its own key.
func (w *Writer) WriteServerHello(self Key) error {
	PutHeader(w.scratch[:], TypeServerHello, 1+KeyLen)
	w.scratch[HeaderLen] = ProtocolVersion
	copy(w.scratch[HeaderLen+1:], self[:])
	return w.write(HeaderLen+1+KeyLen, nil)
}

// WriteKeyPacket writes a SendPacket or RecvPacket frame.
func (w *Writer) WriteKeyPacket(t Type, key Key, pkt []byte) error {
	if len(pkt) > MaxPacket {
		return fmt.Errorf("%w: packet of %d bytes", ErrFrameTooLarge, len(pkt))
	}
	PutHeader(w.scratch[:], t, KeyLen+len(pkt))
	copy(w.scratch[HeaderLen:], key[:])
	return w.write(HeaderLen+KeyLen, pkt)
}

// WriteForwardPacket writes a ForwardPacket frame.
func (w *Writer) WriteForwardPacket(src, dst Key, pkt []byte) error {
	if len(pkt) > MaxForwardPacket {
		return fmt.Errorf("%w: packet of %d bytes", ErrFrameTooLarge, len(pkt))
	}
	PutHeader(w.scratch[:], TypeForwardPacket, 2*KeyLen+len(pkt))
	copy(w.scratch[HeaderLen:], src[:])
	copy(w.scratch[HeaderLen+KeyLen:], dst[:])
	return w.write(HeaderLen+2*KeyLen, pkt)
}

// WriteEmpty writes a frame without payload (KeepAlive, WatchConns).
func (w *Writer) WriteEmpty(t Type) error {
	PutHeader(w.scratch[:], t, 0)
	return w.write(HeaderLen, nil)
}

// WritePeerGone writes a PeerGone frame.
func (w *Writer) WritePeerGone(key Key, reason PeerGoneReason) error {
	PutHeader(w.scratch[:], TypePeerGone, KeyLen+1)
	copy(w.scratch[HeaderLen:], key[:])
	w.scratch[HeaderLen+KeyLen] = byte(reason)
	return w.write(HeaderLen+KeyLen+1, nil)
}

// WritePeerPresent writes a PeerPresent frame (mesh).
func (w *Writer) WritePeerPresent(key Key, tenant string) error {
	if len(tenant) > MaxTenantLen {
		return fmt.Errorf("%w: tenant id of %d bytes", ErrMalformed, len(tenant))
	}
	PutHeader(w.scratch[:], TypePeerPresent, KeyLen+len(tenant))
	copy(w.scratch[HeaderLen:], key[:])
	copy(w.scratch[HeaderLen+KeyLen:], tenant)
	return w.write(HeaderLen+KeyLen+len(tenant), nil)
}

// WritePing writes a Ping or Pong frame.
func (w *Writer) WritePing(t Type, data [8]byte) error {
	PutHeader(w.scratch[:], t, 8)
	copy(w.scratch[HeaderLen:], data[:])
	return w.write(HeaderLen+8, nil)
}

// WriteRestarting writes a Restarting frame (values in milliseconds).
func (w *Writer) WriteRestarting(reconnectInMs, tryForMs uint32) error {
	PutHeader(w.scratch[:], TypeRestarting, 8)
	binary.BigEndian.PutUint32(w.scratch[HeaderLen:], reconnectInMs)
	binary.BigEndian.PutUint32(w.scratch[HeaderLen+4:], tryForMs)
	return w.write(HeaderLen+8, nil)
}
