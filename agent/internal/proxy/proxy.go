// Package proxy offers SOCKS5 (RFC 1928, CONNECT, no authentication) and HTTP proxying (CONNECT and
// absolute-URI requests) into the mesh for userspace (netstack) mode, where the host's own sockets
// cannot reach overlay addresses. Listen on loopback only: the proxies carry no authentication.
package proxy

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"time"
)

// Dialer opens TCP connections inside the mesh (netstack.Net fits).
type Dialer interface {
	DialContextTCPAddrPort(ctx context.Context, addr netip.AddrPort) (net.Conn, error)
}

// Resolver resolves names (the agent's resolver fits).
type Resolver interface {
	LookupNetIP(ctx context.Context, host string) ([]netip.Addr, error)
}

// Proxy dials through the mesh on behalf of local clients.
type Proxy struct {
	Dialer   Dialer
	Resolver Resolver
	Log      *slog.Logger

	wg sync.WaitGroup
}

// Dial resolves host:port and connects to the first address that answers.
func (p *Proxy) Dial(ctx context.Context, hostport string) (net.Conn, error) {
	host, portS, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("proxy: address %q: %w", hostport, err)
	}
	port, err := strconv.ParseUint(portS, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("proxy: port %q: %w", portS, err)
	}
	addrs, err := p.Resolver.LookupNetIP(ctx, host)
	if err != nil {
		return nil, err
	}
	var lastErr error
	for _, a := range addrs {
		ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := p.Dialer.DialContextTCPAddrPort(ctx, netip.AddrPortFrom(a, uint16(port)))
		cancel()
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, fmt.Errorf("proxy: dial %s: %w", hostport, lastErr)
}

// ServeSOCKS5 accepts SOCKS5 clients on ln until it is closed.
func (p *Proxy) ServeSOCKS5(ctx context.Context, ln net.Listener) error {
	return p.serve(ctx, ln, p.handleSOCKS5)
}

// ServeHTTP accepts HTTP proxy clients on ln until it is closed.
func (p *Proxy) ServeHTTP(ctx context.Context, ln net.Listener) error {
	return p.serve(ctx, ln, p.handleHTTP)
}

func (p *Proxy) serve(ctx context.Context, ln net.Listener, h func(context.Context, net.Conn)) error {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	defer p.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("proxy: accept: %w", err)
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer c.Close()
			h(ctx, c)
		}()
	}
}

func (p *Proxy) log() *slog.Logger {
	if p.Log == nil {
		return slog.Default()
	}
	return p.Log
}

// SOCKS5 reply codes.
const (
	socksOK          = 0
	socksFailure     = 1
	socksHostUnreach = 4
	socksCmdUnsupp   = 7
	socksAddrUnsupp  = 8
)

func (p *Proxy) handleSOCKS5(ctx context.Context, c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	hdr := make([]byte, 2)
	if _, err := io.ReadFull(br, hdr); err != nil || hdr[0] != 5 {
		return
	}
	methods := make([]byte, hdr[1])
	if _, err := io.ReadFull(br, methods); err != nil {
		return
	}
	noAuth := false
	for _, m := range methods {
		noAuth = noAuth || m == 0
	}
	if !noAuth {
		_, _ = c.Write([]byte{5, 0xff})
		return
	}
	if _, err := c.Write([]byte{5, 0}); err != nil {
		return
	}
	req := make([]byte, 4)
	if _, err := io.ReadFull(br, req); err != nil || req[0] != 5 {
		return
	}
	reply := func(code byte) { _, _ = c.Write([]byte{5, code, 0, 1, 0, 0, 0, 0, 0, 0}) }
	if req[1] != 1 { // CONNECT only
		reply(socksCmdUnsupp)
		return
	}
	var host string
	switch req[3] {
	case 1, 4:
		b := make([]byte, map[byte]int{1: 4, 4: 16}[req[3]])
		if _, err := io.ReadFull(br, b); err != nil {
			return
		}
		a, _ := netip.AddrFromSlice(b)
		host = a.String()
	case 3:
		l, err := br.ReadByte()
		if err != nil {
			return
		}
		b := make([]byte, l)
		if _, err := io.ReadFull(br, b); err != nil {
			return
		}
		host = string(b)
	default:
		reply(socksAddrUnsupp)
		return
	}
	pb := make([]byte, 2)
	if _, err := io.ReadFull(br, pb); err != nil {
		return
	}
	target := net.JoinHostPort(host, strconv.Itoa(int(binary.BigEndian.Uint16(pb))))
	up, err := p.Dial(ctx, target)
	if err != nil {
		p.log().Debug("socks5 dial", "target", target, "err", err)
		reply(socksHostUnreach)
		return
	}
	defer up.Close()
	reply(socksOK)
	_ = c.SetDeadline(time.Time{})
	pipe(c, br, up)
}

func (p *Proxy) handleHTTP(ctx context.Context, c net.Conn) {
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(c)
	req, err := http.ReadRequest(br)
	if err != nil {
		return
	}
	if req.Method == http.MethodConnect {
		up, err := p.Dial(ctx, req.Host)
		if err != nil {
			_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
			return
		}
		defer up.Close()
		if _, err := io.WriteString(c, "HTTP/1.1 200 Connection Established\r\n\r\n"); err != nil {
			return
		}
		_ = c.SetDeadline(time.Time{})
		pipe(c, br, up)
		return
	}
	// An absolute-URI request: forward it on one upstream connection.
	if req.URL.Host == "" {
		_, _ = io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
		return
	}
	hostport := req.URL.Host
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		hostport = net.JoinHostPort(hostport, "80")
	}
	up, err := p.Dial(ctx, hostport)
	if err != nil {
		_, _ = io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
		return
	}
	defer up.Close()
	req.Header.Del("Proxy-Connection")
	req.Header.Set("Connection", "close")
	req.Close = true
	if err := req.Write(up); err != nil {
		return
	}
	_ = c.SetDeadline(time.Time{})
	_, _ = io.Copy(c, up)
}

// pipe copies both ways until either side ends; r holds what was buffered from the client.
func pipe(client net.Conn, r io.Reader, up net.Conn) {
	done := make(chan struct{})
	go func() {
		_, _ = io.Copy(up, r)
		if cw, ok := up.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		close(done)
	}()
	_, _ = io.Copy(client, up)
	_ = client.Close()
	<-done
}
