// Package bufpool recycles packet buffers so that the relay's hot path does
// not allocate per packet.
package bufpool

import "sync"

// SmallSize covers a WireGuard packet at the usual MTU plus the frame's keys.
const SmallSize = 2048

// Buf is a pooled buffer. B has the requested length; its capacity is the
// size class.
type Buf struct {
	B     []byte
	large bool
}

// Pool hands out Bufs of two size classes: small (most WireGuard packets)
// and large (up to the maximum frame payload).
type Pool struct {
	small, large sync.Pool
	largeSize    int
}

// New returns a Pool whose large class holds largeSize bytes.
func New(largeSize int) *Pool {
	p := &Pool{largeSize: largeSize}
	p.small.New = func() any { return &Buf{B: make([]byte, SmallSize)} }
	p.large.New = func() any { return &Buf{B: make([]byte, largeSize), large: true} }
	return p
}

// Get returns a buffer of length n (n <= the large size).
func (p *Pool) Get(n int) *Buf {
	var b *Buf
	if n <= SmallSize {
		b = p.small.Get().(*Buf)
	} else {
		b = p.large.Get().(*Buf)
	}
	b.B = b.B[:n]
	return b
}

// Put returns b to the pool. b must not be used afterwards.
func (p *Pool) Put(b *Buf) {
	if b == nil {
		return
	}
	b.B = b.B[:cap(b.B)]
	if b.large {
		p.large.Put(b)
	} else {
		p.small.Put(b)
	}
}
