package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"connectrpc.com/connect"
	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1/nodev1connect"
)

// Simulated-agent client implementations (-client). Both speak gRPC over HTTP/2 over mTLS with the
// agent's own certificate on its own TCP connection; they differ in what each agent costs the
// worker process, which is what bounds N on one machine (see limits.go).
const (
	// clientConnect is connect-go's generated client with connect.WithGRPC() over a per-agent
	// golang.org/x/net/http2.Transport: one connection, a read loop goroutine and one goroutine per
	// open stream.
	clientConnect = "connect"
	// clientGRPC is grpc-go (what cvlan-agent uses): a ClientConn per agent with its resolver,
	// balancer, reader and writer goroutines and buffers.
	clientGRPC = "grpc"
)

// agentClient is one simulated agent's connection to the node port.
type agentClient interface {
	// watch opens a WatchNetworkMap stream. It may return before the connection is up; failures
	// then surface from the stream's first recv.
	watch(ctx context.Context, req *nodev1.WatchNetworkMapRequest) (mapStream, error)
	ack(ctx context.Context, req *nodev1.AckNetworkMapRequest) error
	close()
}

// mapStream is an open WatchNetworkMap stream.
type mapStream interface {
	recv() (*nodev1.WatchNetworkMapResponse, error)
	// shed reports whether err (from recv) is the controller's ResourceExhausted refusal and the
	// retry-after-ms it asked for (0 when absent).
	shed(err error) (bool, time.Duration)
}

// agentDial is what every client needs to reach the node port as one agent.
type agentDial struct {
	target string
	dialer *net.Dialer
	tls    *tls.Config // the agent's own certificate, TLS 1.3, the CA's root
}

func newAgentClient(kind string, d agentDial) (agentClient, error) {
	switch kind {
	case clientConnect:
		return newConnectClient(d), nil
	case clientGRPC:
		return newGRPCClient(d)
	case clientLean:
		return newLeanClient(d), nil
	default:
		return nil, fmt.Errorf("unknown client %q (want %s, %s or %s)", kind, clientLean, clientConnect, clientGRPC)
	}
}

func parseRetryAfter(v string) time.Duration {
	ms, err := strconv.Atoi(v)
	if err != nil || ms < 0 {
		return 0
	}
	return time.Duration(ms) * time.Millisecond
}

// --- connect-go over x/net/http2 ---

type connectClient struct {
	tr     *http2.Transport
	watchc *connect.Client[nodev1.WatchNetworkMapRequest, nodev1.WatchNetworkMapResponse]
	ackc   *connect.Client[nodev1.AckNetworkMapRequest, nodev1.AckNetworkMapResponse]
}

func newConnectClient(d agentDial) *connectClient {
	tc := d.tls.Clone()
	tc.NextProtos = []string{http2.NextProtoTLS}
	tr := &http2.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
			c, err := d.dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			tlsConn := tls.Client(c, tc)
			if err := tlsConn.HandshakeContext(ctx); err != nil {
				_ = c.Close()
				return nil, err
			}
			return tlsConn, nil
		},
		// The controller sends small frames and few headers: keep the client's buffers and
		// HPACK tables as small as the node port's (server.NodeHTTP2).
		MaxReadFrameSize:          16 << 10,
		MaxDecoderHeaderTableSize: 1 << 10,
		MaxEncoderHeaderTableSize: 1 << 10,
	}
	hc := &http.Client{Transport: tr}
	base := "https://" + d.target
	opts := connect.WithClientOptions(
		connect.WithGRPC(),
		// Like grpc-go's clients (and cvlan-agent), accept no compression: a gzip reader per
		// stream would cost the agent 40 KiB and the controller CPU.
		connect.WithAcceptCompression("gzip", nil, nil),
	)
	// Only the two procedures the agents call: the generated NewControlServiceClient builds a
	// client for every method of the service (about 7 KiB per agent).
	return &connectClient{
		tr:     tr,
		watchc: connect.NewClient[nodev1.WatchNetworkMapRequest, nodev1.WatchNetworkMapResponse](hc, base+nodev1connect.ControlServiceWatchNetworkMapProcedure, opts),
		ackc:   connect.NewClient[nodev1.AckNetworkMapRequest, nodev1.AckNetworkMapResponse](hc, base+nodev1connect.ControlServiceAckNetworkMapProcedure, opts),
	}
}

func (c *connectClient) watch(ctx context.Context, req *nodev1.WatchNetworkMapRequest) (mapStream, error) {
	s, err := c.watchc.CallServerStream(ctx, connect.NewRequest(req))
	if err != nil {
		return nil, err
	}
	return connectStream{s}, nil
}

func (c *connectClient) ack(ctx context.Context, req *nodev1.AckNetworkMapRequest) error {
	_, err := c.ackc.CallUnary(ctx, connect.NewRequest(req))
	return err
}

func (c *connectClient) close() { c.tr.CloseIdleConnections() }

type connectStream struct {
	s *connect.ServerStreamForClient[nodev1.WatchNetworkMapResponse]
}

func (s connectStream) recv() (*nodev1.WatchNetworkMapResponse, error) {
	if s.s.Receive() {
		return s.s.Msg(), nil
	}
	err := s.s.Err()
	_ = s.s.Close()
	if err == nil {
		err = errors.New("stream ended")
	}
	return nil, err
}

func (s connectStream) shed(err error) (bool, time.Duration) {
	if connect.CodeOf(err) != connect.CodeResourceExhausted {
		return false, 0
	}
	v := ""
	var ce *connect.Error
	if errors.As(err, &ce) {
		v = ce.Meta().Get("retry-after-ms")
	}
	if v == "" {
		v = s.s.ResponseTrailer().Get("retry-after-ms")
	}
	return true, parseRetryAfter(v)
}

// --- grpc-go ---

type grpcClient struct {
	cc  *grpc.ClientConn
	ctl nodev1.ControlServiceClient
}

func newGRPCClient(d agentDial) (*grpcClient, error) {
	cc, err := grpc.NewClient("passthrough:///"+d.target,
		grpc.WithTransportCredentials(credentials.NewTLS(d.tls)),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.dialer.DialContext(ctx, "tcp", addr)
		}),
		grpc.WithWriteBufferSize(8<<10), grpc.WithReadBufferSize(8<<10), grpc.WithSharedWriteBuffer(true),
		// grpc's own reconnect backoff (default 1 s growing to 120 s) would dominate the
		// restart measurement; agents should reconnect as fast as the controller admits them.
		// A connection attempt gets 30 s: on two loaded cores a TLS handshake in a storm of
		// thousands can take seconds, and abandoning it at 5 s wastes the work done so far
		// (the connect storm collapsed into retries that way at 10,000 agents, load 20+).
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second}, MinConnectTimeout: 30 * time.Second}),
	)
	if err != nil {
		return nil, err
	}
	return &grpcClient{cc: cc, ctl: nodev1.NewControlServiceClient(cc)}, nil
}

func (c *grpcClient) watch(ctx context.Context, req *nodev1.WatchNetworkMapRequest) (mapStream, error) {
	s := &grpcStream{}
	var err error
	s.s, err = c.ctl.WatchNetworkMap(ctx, req, grpc.Trailer(&s.trailer), grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	return s, nil
}

func (c *grpcClient) ack(ctx context.Context, req *nodev1.AckNetworkMapRequest) error {
	_, err := c.ctl.AckNetworkMap(ctx, req)
	return err
}

func (c *grpcClient) close() { _ = c.cc.Close() }

type grpcStream struct {
	s       grpc.ServerStreamingClient[nodev1.WatchNetworkMapResponse]
	trailer metadata.MD
}

func (s *grpcStream) recv() (*nodev1.WatchNetworkMapResponse, error) { return s.s.Recv() }

func (s *grpcStream) shed(err error) (bool, time.Duration) {
	if status.Code(err) != codes.ResourceExhausted {
		return false, 0
	}
	if v := s.trailer.Get("retry-after-ms"); len(v) > 0 {
		return true, parseRetryAfter(v[0])
	}
	return true, 0
}
