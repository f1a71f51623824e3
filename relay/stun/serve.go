package stun

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"
)

// Serve answers Binding requests on pc until ctx is done. Anything else is
// ignored: no response is ever larger than a fixed 48 bytes, so the
// responder cannot be used to amplify traffic much.
func Serve(ctx context.Context, pc *net.UDPConn, log *slog.Logger) error {
	stop := context.AfterFunc(ctx, func() { _ = pc.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	buf := make([]byte, 1500)
	out := make([]byte, 0, 64)
	for {
		n, addr, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("stun read: %w", err)
		}
		tx, err := ParseRequest(buf[:n])
		if err != nil {
			continue
		}
		out = AppendResponse(out[:0], tx, netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()))
		if _, err := pc.WriteToUDPAddrPort(out, addr); err != nil && log != nil {
			log.Debug("stun write", "to", addr.String(), "err", err)
		}
	}
}

// Query asks the STUN server for this socket's public address, retrying
// with doubling intervals (250 ms, 500 ms, ...) until ctx is done. It reads
// from pc, so use it on a socket nobody else reads from at the same time;
// on a socket shared with WireGuard use AppendRequest, IsMessage and
// ParseResponse instead.
func Query(ctx context.Context, pc net.PacketConn, server netip.AddrPort) (netip.AddrPort, error) {
	tx := NewTxID()
	req := AppendRequest(nil, tx)
	dst := net.UDPAddrFromAddrPort(server)
	buf := make([]byte, 1500)
	wait := 250 * time.Millisecond
	defer func() { _ = pc.SetReadDeadline(time.Time{}) }()
	for {
		if _, err := pc.WriteTo(req, dst); err != nil {
			return netip.AddrPort{}, fmt.Errorf("stun query %v: %w", server, err)
		}
		until := time.Now().Add(wait)
		if d, ok := ctx.Deadline(); ok && d.Before(until) {
			until = d
		}
		_ = pc.SetReadDeadline(until)
		for {
			n, _, err := pc.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return netip.AddrPort{}, fmt.Errorf("stun query %v: %w", server, err)
			}
			got, ap, err := ParseResponse(buf[:n])
			if err == nil && got == tx {
				return ap, nil
			}
		}
		if ctx.Err() != nil {
			return netip.AddrPort{}, fmt.Errorf("stun query %v: %w", server, ctx.Err())
		}
		wait = min(2*wait, 4*time.Second)
	}
}
