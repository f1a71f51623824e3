package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"connectrpc.com/connect"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1/nodev1connect"
)

// fakeControl is a connect-go ControlService (gRPC over HTTP/2 over TLS, as the node port serves
// it): WatchNetworkMap sends snapshots, waits until each was acknowledged and ends with
// RESOURCE_EXHAUSTED and a retry-after-ms trailer, or refuses at once (a trailers-only response).
type fakeControl struct {
	nodev1connect.UnimplementedControlServiceHandler
	msgs, peers int
	refuse      bool
	// wantAcked is the version the stream waits to see acknowledged before it ends (default msgs).
	wantAcked uint64
	acked     atomic.Uint64 // highest acknowledged version
	acks      atomic.Int64
}

func (f *fakeControl) WatchNetworkMap(ctx context.Context, req *connect.Request[nodev1.WatchNetworkMapRequest], s *connect.ServerStream[nodev1.WatchNetworkMapResponse]) error {
	shed := connect.NewError(connect.CodeResourceExhausted, errors.New("busy"))
	shed.Meta().Set("retry-after-ms", "1500")
	if f.refuse {
		return shed
	}
	for v := 1; v <= f.msgs; v++ {
		m := &nodev1.NetworkMap{Version: uint64(v)}
		for i := range f.peers {
			m.Peers = append(m.Peers, &nodev1.Peer{NodeId: fmt.Sprintf("node-%d", i), Name: fmt.Sprintf("peer-%d-%s", i, strings.Repeat("x", 40))})
		}
		if err := s.Send(&nodev1.WatchNetworkMapResponse{Message: &nodev1.WatchNetworkMapResponse_Snapshot{Snapshot: m}}); err != nil {
			return err
		}
	}
	want := f.wantAcked
	if want == 0 {
		want = uint64(f.msgs)
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.acked.Load() < want && time.Now().Before(deadline) && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	return shed
}

func (f *fakeControl) AckNetworkMap(_ context.Context, req *connect.Request[nodev1.AckNetworkMapRequest]) (*connect.Response[nodev1.AckNetworkMapResponse], error) {
	f.acks.Add(1)
	for {
		cur := f.acked.Load()
		if req.Msg.GetVersion() <= cur || f.acked.CompareAndSwap(cur, req.Msg.GetVersion()) {
			break
		}
	}
	return connect.NewResponse(&nodev1.AckNetworkMapResponse{}), nil
}

// TestAgentClients runs every simulated-agent client against a connect-go gRPC server: messages
// arrive whole and in order (more than the 64 KiB HTTP/2 windows in total, so flow-control credit
// must be returned), acknowledgements reach the server, and the controller's refusal is seen as
// shed with its retry-after-ms, after a stream and as a trailers-only response.
func TestAgentClients(t *testing.T) {
	for _, kind := range []string{clientLean, clientConnect, clientGRPC} {
		for _, refuse := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/refuse=%v", kind, refuse), func(t *testing.T) {
				f := &fakeControl{msgs: 40, peers: 60, refuse: refuse}
				path, h := nodev1connect.NewControlServiceHandler(f)
				if !strings.HasPrefix(path, "/cloudvlan.node.v1.ControlService/") {
					t.Fatalf("unexpected handler path %q", path)
				}
				srv := httptest.NewUnstartedServer(h)
				srv.EnableHTTP2 = true
				srv.StartTLS()
				defer srv.Close()
				pool := x509.NewCertPool()
				pool.AddCert(srv.Certificate())
				c, err := newAgentClient(kind, agentDial{
					target: strings.TrimPrefix(srv.URL, "https://"),
					dialer: &net.Dialer{Timeout: 5 * time.Second},
					tls:    &tls.Config{RootCAs: pool, ServerName: "example.com", MinVersion: tls.VersionTLS13},
				})
				if err != nil {
					t.Fatal(err)
				}
				defer c.close()
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				defer cancel()

				s, err := c.watch(ctx, &nodev1.WatchNetworkMapRequest{SessionId: "s"})
				if err != nil {
					t.Fatalf("watch: %v", err)
				}
				got := 0
				for {
					m, err := s.recv()
					if err != nil {
						shed, after := s.shed(err)
						if !shed || after != 1500*time.Millisecond {
							t.Fatalf("stream ended with %v: shed %v, retry after %s; want shed, 1.5s", err, shed, after)
						}
						break
					}
					got++
					if v := m.GetSnapshot().GetVersion(); v != uint64(got) || len(m.GetSnapshot().GetPeers()) != f.peers {
						t.Fatalf("message %d: version %d with %d peers", got, v, len(m.GetSnapshot().GetPeers()))
					}
					if err := c.ack(ctx, &nodev1.AckNetworkMapRequest{Version: uint64(got)}); err != nil {
						t.Fatalf("ack %d: %v", got, err)
					}
				}
				want := f.msgs
				if refuse {
					want = 0
				}
				if got != want {
					t.Fatalf("received %d messages, want %d", got, want)
				}
				if int(f.acks.Load()) != want {
					t.Fatalf("server saw %d acknowledgements, want %d", f.acks.Load(), want)
				}
				// A stream error other than the refusal is not shed.
				if shed, _ := s.shed(io.ErrUnexpectedEOF); shed {
					t.Fatal("io.ErrUnexpectedEOF reported as shed")
				}
			})
		}
	}
}

// TestAgentClientsManyAcks sends more acknowledgement bytes on one connection than the initial
// 64 KiB HTTP/2 connection window while the stream stays open: the clients must respect and regain
// the window (the server answers FLOW_CONTROL_ERROR otherwise).
func TestAgentClientsManyAcks(t *testing.T) {
	const acks = 2500 // about 50 bytes each on the wire: about 125 KB
	for _, kind := range []string{clientLean, clientConnect, clientGRPC} {
		t.Run(kind, func(t *testing.T) {
			f := &fakeControl{msgs: 1, peers: 1, wantAcked: acks}
			_, h := nodev1connect.NewControlServiceHandler(f)
			srv := httptest.NewUnstartedServer(h)
			srv.EnableHTTP2 = true
			srv.StartTLS()
			defer srv.Close()
			pool := x509.NewCertPool()
			pool.AddCert(srv.Certificate())
			c, err := newAgentClient(kind, agentDial{
				target: strings.TrimPrefix(srv.URL, "https://"),
				dialer: &net.Dialer{Timeout: 5 * time.Second},
				tls:    &tls.Config{RootCAs: pool, ServerName: "example.com", MinVersion: tls.VersionTLS13},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := c.watch(ctx, &nodev1.WatchNetworkMapRequest{SessionId: "s"})
			if err != nil {
				t.Fatalf("watch: %v", err)
			}
			if _, err := s.recv(); err != nil {
				t.Fatalf("first message: %v", err)
			}
			hash := strings.Repeat("h", 32)
			for v := uint64(1); v <= acks; v++ {
				if err := c.ack(ctx, &nodev1.AckNetworkMapRequest{Version: v, StateHash: hash}); err != nil {
					t.Fatalf("ack %d: %v", v, err)
				}
			}
			_, err = s.recv()
			if shed, _ := s.shed(err); !shed {
				t.Fatalf("stream ended with %v, want the server's RESOURCE_EXHAUSTED after all acknowledgements", err)
			}
			if n := f.acks.Load(); n != acks {
				t.Fatalf("server saw %d acknowledgements, want %d", n, acks)
			}
		})
	}
}
