package bind

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/cloudvlan/cloudvlan/relay/stun"
)

// STUN (relay/stun encodes and parses) runs on the WireGuard socket itself, because the mapping a NAT
// gives that socket is the endpoint peers must use; responses are told from WireGuard packets by
// stun.IsMessage in the receive loop.

func (b *Bind) handleSTUN(p []byte) {
	tx, ap, err := stun.ParseResponse(p)
	if err != nil {
		return
	}
	b.mu.Lock()
	ch := b.stunWait[tx]
	delete(b.stunWait, tx)
	b.mu.Unlock()
	if ch != nil {
		ch <- netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
}

// STUN asks each server (host:port, UDP) for this socket's public endpoint and returns the first answer.
func (b *Bind) STUN(ctx context.Context, servers []string) (netip.AddrPort, error) {
	ch := make(chan netip.AddrPort, len(servers))
	var ids []stun.TxID
	b.mu.Lock()
	u := b.udp
	b.mu.Unlock()
	if u == nil {
		return netip.AddrPort{}, net.ErrClosed
	}
	var lastErr error
	for _, s := range servers {
		ua, err := net.ResolveUDPAddr("udp", s)
		if err != nil {
			lastErr = err
			continue
		}
		tx := stun.NewTxID()
		b.mu.Lock()
		b.stunWait[tx] = ch
		b.mu.Unlock()
		ids = append(ids, tx)
		if _, err := u.WriteToUDPAddrPort(stun.AppendRequest(nil, tx), unmap(ua.AddrPort())); err != nil {
			lastErr = err
		}
	}
	defer func() {
		b.mu.Lock()
		for _, id := range ids {
			delete(b.stunWait, id)
		}
		b.mu.Unlock()
	}()
	if len(ids) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%w: %v", ErrNoSTUN, lastErr)
	}
	select {
	case ap := <-ch:
		return ap, nil
	case <-ctx.Done():
		return netip.AddrPort{}, fmt.Errorf("%w: %w (last error %v)", ErrNoSTUN, ctx.Err(), lastErr)
	}
}
