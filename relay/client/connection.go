package client

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/pktq"
)

// connection is one TLS connection of a Client: a reader (the Client's
// connection goroutine) and a writer goroutine.
type connection struct {
	c          *Client
	nc         net.Conn
	br         *bufio.Reader
	once       sync.Once
	done       chan struct{}
	writerDone chan struct{}
}

func (k *connection) close() {
	k.once.Do(func() {
		close(k.done)
		_ = k.nc.Close()
	})
}

func (k *connection) readLoop() error {
	c := k.c
	fr := frame.NewReader(k.br)
	var small [frame.KeyLen + 1 + 8]byte
	var (
		nextRefresh time.Time
		frames      uint
	)
	for {
		// The clock is read only when the next read may block.
		if frames++; k.br.Buffered() == 0 || frames&31 == 0 {
			if now := time.Now(); !now.Before(nextRefresh) {
				_ = k.nc.SetReadDeadline(now.Add(c.cfg.IdleTimeout))
				nextRefresh = now.Add(c.cfg.IdleTimeout / 4)
			}
		}
		typ, n, err := fr.ReadHeader()
		if err != nil {
			return fmt.Errorf("relay read: %w", err)
		}
		switch typ {
		case frame.TypeRecvPacket:
			if n < frame.KeyLen {
				return fmt.Errorf("relay sent RecvPacket of %d bytes", n)
			}
			var src Key
			if err := fr.ReadPayload(src[:]); err != nil {
				return fmt.Errorf("relay read: %w", err)
			}
			buf := c.pool.Get(n - frame.KeyLen)
			if err := fr.ReadPayload(buf.B); err != nil {
				c.pool.Put(buf)
				return fmt.Errorf("relay read: %w", err)
			}
			c.packetsRecv.Add(1)
			c.bytesRecv.Add(uint64(len(buf.B)))
			dropped, res := c.recvQ.Push(inItem{src: src, buf: buf})
			switch res {
			case pktq.Closed:
				c.pool.Put(buf)
				return errors.New("relay client closed")
			case pktq.PushedDropped:
				c.recvDrops.Add(1)
				c.pool.Put(dropped.buf)
			}
		case frame.TypePeerGone, frame.TypePing, frame.TypePong, frame.TypeRestarting:
			if n > len(small) {
				return fmt.Errorf("relay sent %v of %d bytes", typ, n)
			}
			if err := fr.ReadPayload(small[:n]); err != nil {
				return fmt.Errorf("relay read: %w", err)
			}
			if err := k.control(typ, small[:n]); err != nil {
				return err
			}
		default:
			if err := fr.Discard(n); err != nil {
				return fmt.Errorf("relay read: %w", err)
			}
		}
	}
}

func (k *connection) control(typ frame.Type, p []byte) error {
	c := k.c
	switch typ {
	case frame.TypePeerGone:
		key, reason, err := frame.ParsePeerGone(p)
		if err != nil {
			return err
		}
		if c.cfg.OnPeerGone != nil {
			c.cfg.OnPeerGone(key, reason)
		}
	case frame.TypePing:
		d, err := frame.ParsePing(p)
		if err != nil {
			return err
		}
		c.sendQ.PushControl(outItem{typ: frame.TypePong, ping: d})
	case frame.TypePong:
		d, err := frame.ParsePing(p)
		if err != nil {
			return err
		}
		c.mu.Lock()
		ch := c.pings[d]
		c.mu.Unlock()
		if ch != nil {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	case frame.TypeRestarting:
		in, tryFor, err := frame.ParseRestarting(p)
		if err != nil {
			return err
		}
		c.mu.Lock()
		c.restartIn = time.Duration(in) * time.Millisecond
		c.restartFor = time.Duration(tryFor) * time.Millisecond
		c.mu.Unlock()
	}
	return nil
}

// writeLoop drains the send queue; it flushes only when the queue is empty
// so that bursts leave in full TLS records.
func (k *connection) writeLoop() {
	defer close(k.writerDone)
	c := k.c
	bw := bufio.NewWriterSize(k.nc, 16<<10)
	fw := frame.NewWriter(bw)
	tick := time.NewTicker(time.Duration(float64(c.cfg.KeepAlive) * (0.8 + 0.4*rand.Float64())))
	defer tick.Stop()
	var (
		batch        []outItem
		wrote        bool
		nextDeadline time.Time
	)
	for {
		select {
		case <-k.done:
			return
		case <-tick.C:
			if !wrote {
				c.sendQ.PushControl(outItem{typ: frame.TypeKeepAlive})
			}
			wrote = false
			continue
		case <-c.sendQ.Ready():
		}
		if now := time.Now(); !now.Before(nextDeadline) {
			_ = k.nc.SetWriteDeadline(now.Add(c.cfg.WriteTimeout))
			nextDeadline = now.Add(c.cfg.WriteTimeout / 4)
		}
		var err error
		yielded := false
		for err == nil {
			batch = c.sendQ.Pop(batch[:0], 256)
			if len(batch) == 0 {
				// Let the application queue more before flushing a part-filled
				// TLS record: fewer records and system calls under load.
				if !yielded && bw.Buffered() > 0 && bw.Buffered() < 8<<10 {
					yielded = true
					runtime.Gosched()
					continue
				}
				break
			}
			yielded = false
			for i := range batch {
				it := &batch[i]
				if err == nil {
					switch it.typ {
					case frame.TypeSendPacket:
						err = fw.WriteKeyPacket(frame.TypeSendPacket, it.dst, it.buf.B)
						if err == nil {
							c.packetsSent.Add(1)
							c.bytesSent.Add(uint64(len(it.buf.B)))
						}
					case frame.TypePing, frame.TypePong:
						err = fw.WritePing(it.typ, it.ping)
					default:
						err = fw.WriteEmpty(it.typ)
					}
				}
				c.pool.Put(it.buf)
				*it = outItem{}
			}
		}
		if err == nil {
			err = fw.Flush()
		}
		wrote = true
		if err != nil {
			k.close()
			return
		}
	}
}
