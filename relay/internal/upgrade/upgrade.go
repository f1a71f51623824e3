// Package upgrade dials a relay: TLS 1.3, then an HTTP/1.1 request that
// switches the connection to the relay framing (Upgrade: cloudvlan-relay-v1).
// Speaking HTTP first lets the connection pass HTTP proxies and share port 443.
package upgrade

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
)

// BufSize is the size of the buffered reader returned by Dial; it matches a
// full TLS record.
const BufSize = 16 << 10

// TLSConfig returns a copy of base prepared for the relay protocol: TLS 1.3
// only, HTTP/1.1 (the upgrade needs it), full-size records from the start.
func TLSConfig(base *tls.Config) *tls.Config {
	c := base.Clone()
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = []string{"http/1.1"}
	c.DynamicRecordSizingDisabled = true
	return c
}

// Dial connects to the relay at rawURL (https://host[:port][/relay]) and
// performs the upgrade. The returned reader holds any bytes that followed the
// 101 response and must be used for all further reads.
func Dial(ctx context.Context, rawURL string, base *tls.Config) (*tls.Conn, *bufio.Reader, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, nil, fmt.Errorf("relay url %q: %w", rawURL, err)
	}
	if u.Scheme != "https" {
		return nil, nil, fmt.Errorf("relay url %q: scheme must be https", rawURL)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "443")
	}
	path := u.Path
	if path == "" {
		path = frame.Path
	}
	cfg := TLSConfig(base)
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, nil, fmt.Errorf("dial relay %s: %w", host, err)
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	tc := tls.Client(raw, cfg)
	stop := context.AfterFunc(ctx, func() { _ = raw.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = raw.Close()
		return nil, nil, fmt.Errorf("tls handshake with relay %s: %w", host, err)
	}
	req := "GET " + path + " HTTP/1.1\r\nHost: " + u.Host + "\r\nConnection: Upgrade\r\nUpgrade: " +
		frame.UpgradeProtocol + "\r\nUser-Agent: cloudvlan-relay-client\r\n\r\n"
	if _, err := tc.Write([]byte(req)); err != nil {
		_ = tc.Close()
		return nil, nil, fmt.Errorf("upgrade request to %s: %w", host, err)
	}
	br := bufio.NewReaderSize(tc, BufSize)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		_ = tc.Close()
		return nil, nil, fmt.Errorf("upgrade response from %s: %w", host, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols ||
		!strings.EqualFold(resp.Header.Get("Upgrade"), frame.UpgradeProtocol) {
		_ = tc.Close()
		return nil, nil, fmt.Errorf("relay %s refused upgrade: %s", host, resp.Status)
	}
	if ctx.Err() != nil {
		_ = tc.Close()
		return nil, nil, ctx.Err()
	}
	return tc, br, nil
}
