// Package wg runs a wireguard-go device and applies peer sets to it through UAPI, touching only the
// peers that changed: an unrelated change must never re-handshake a working tunnel.
package wg

import (
	"bufio"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"
)

// PeerConfig is one peer as the device should have it.
type PeerConfig struct {
	// Key is the peer's public key; the UAPI endpoint is this key too (the Bind resolves it).
	Key [32]byte
	// AllowedIPs are the prefixes routed to the peer.
	AllowedIPs []netip.Prefix
	// Keepalive is the persistent keepalive interval (0 disables).
	Keepalive time.Duration
}

func (p PeerConfig) canonical() PeerConfig {
	p.AllowedIPs = slices.Clone(p.AllowedIPs)
	slices.SortFunc(p.AllowedIPs, func(a, b netip.Prefix) int { return strings.Compare(a.String(), b.String()) })
	p.AllowedIPs = slices.Compact(p.AllowedIPs)
	p.Keepalive = p.Keepalive.Truncate(time.Second)
	return p
}

func (p PeerConfig) equal(q PeerConfig) bool {
	return p.Key == q.Key && p.Keepalive == q.Keepalive && slices.Equal(p.AllowedIPs, q.AllowedIPs)
}

// PeerStats are a peer's counters as the device reports them.
type PeerStats struct {
	LastHandshake time.Time
	RxBytes       uint64
	TxBytes       uint64
}

// Device is a running wireguard-go device.
type Device struct {
	dev *device.Device
	log *slog.Logger

	mu      sync.Mutex
	applied map[[32]byte]PeerConfig
}

// New creates the device on t with bind and the private key, and brings it up.
func New(t tun.Device, bind conn.Bind, privateKey [32]byte, log *slog.Logger) (*Device, error) {
	if log == nil {
		log = slog.Default()
	}
	wlog := &device.Logger{
		Verbosef: func(format string, args ...any) { log.Debug(fmt.Sprintf(format, args...), "component", "wireguard") },
		Errorf:   func(format string, args ...any) { log.Warn(fmt.Sprintf(format, args...), "component", "wireguard") },
	}
	dev := device.NewDevice(t, bind, wlog)
	if err := dev.IpcSet("private_key=" + hex.EncodeToString(privateKey[:]) + "\nlisten_port=0\n"); err != nil {
		dev.Close()
		return nil, fmt.Errorf("wg: set private key: %w", err)
	}
	if err := dev.Up(); err != nil {
		dev.Close()
		return nil, fmt.Errorf("wg: bring device up: %w", err)
	}
	return &Device{dev: dev, log: log, applied: map[[32]byte]PeerConfig{}}, nil
}

// Close tears the device down (closing its TUN and Bind).
func (d *Device) Close() { d.dev.Close() }

// SetPeers makes the device's peers equal to peers. Peers whose configuration did not change are not
// mentioned in the UAPI update at all, so their sessions and handshake state stay untouched. It returns
// how many peers were added, changed and removed.
func (d *Device) SetPeers(peers []PeerConfig) (added, changed, removed int, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	want := make(map[[32]byte]PeerConfig, len(peers))
	for _, p := range peers {
		want[p.Key] = p.canonical()
	}
	var b strings.Builder
	for k := range d.applied {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(k[:]))
			removed++
		}
	}
	for k, p := range want {
		old, had := d.applied[k]
		switch {
		case !had:
			fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\nreplace_allowed_ips=true\n", hex.EncodeToString(k[:]), hex.EncodeToString(k[:]))
			added++
		case !old.equal(p):
			fmt.Fprintf(&b, "public_key=%s\nupdate_only=true\nreplace_allowed_ips=true\n", hex.EncodeToString(k[:]))
			changed++
		default:
			continue
		}
		for _, a := range p.AllowedIPs {
			fmt.Fprintf(&b, "allowed_ip=%s\n", a)
		}
		fmt.Fprintf(&b, "persistent_keepalive_interval=%d\n", int(p.Keepalive/time.Second))
	}
	if b.Len() == 0 {
		return 0, 0, 0, nil
	}
	if err := d.dev.IpcSet(b.String()); err != nil {
		// The device may hold part of the update; forget what we think it holds so the next SetPeers
		// rewrites every peer it names.
		d.applied = map[[32]byte]PeerConfig{}
		return 0, 0, 0, fmt.Errorf("wg: apply peers: %w", err)
	}
	d.applied = want
	d.log.Debug("wireguard peers applied", "added", added, "changed", changed, "removed", removed)
	return added, changed, removed, nil
}

// Stats reads every peer's counters from the device.
func (d *Device) Stats() (map[[32]byte]PeerStats, error) {
	s, err := d.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("wg: read device state: %w", err)
	}
	out := map[[32]byte]PeerStats{}
	var cur *[32]byte
	var st PeerStats
	var sec, nsec int64
	flush := func() {
		if cur != nil {
			if sec != 0 || nsec != 0 {
				st.LastHandshake = time.Unix(sec, nsec)
			}
			out[*cur] = st
		}
	}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		if !ok {
			continue
		}
		switch k {
		case "public_key":
			flush()
			var key [32]byte
			if _, err := hex.Decode(key[:], []byte(v)); err != nil {
				return nil, fmt.Errorf("wg: parse peer key %q: %w", v, err)
			}
			cur, st, sec, nsec = &key, PeerStats{}, 0, 0
		case "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case "rx_bytes":
			st.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case "tx_bytes":
			st.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		}
	}
	flush()
	return out, nil
}

// SetListenPort moves the device's UDP socket to port (0 picks one).
func (d *Device) SetListenPort(port uint16) error {
	if err := d.dev.IpcSet(fmt.Sprintf("listen_port=%d\n", port)); err != nil {
		return fmt.Errorf("wg: set listen port %d: %w", port, err)
	}
	return nil
}
