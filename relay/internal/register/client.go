// Package register holds what is relay-specific in cvlan-relay's talk with
// the controller: following the relay's configuration
// (RelayControlService.WatchRelayConfig) and reporting its status and
// counters (RelayControlService.ReportRelayStatus). Enrollment, the state
// directory and certificate renewal are controller/nodeclient's.
package register

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
)

// Client calls the relay's services over a nodeclient connection.
type Client struct {
	*nodeclient.Client
	relay relayv1.RelayControlServiceClient
}

// New returns a relay client over cl's connection.
func New(cl *nodeclient.Client) *Client {
	return &Client{Client: cl, relay: relayv1.NewRelayControlServiceClient(cl.Conn())}
}

// WatchConfig keeps the WatchRelayConfig stream open until ctx is done,
// reconnecting with jittered backoff, and calls fn with every configuration
// received. fn runs on the watching goroutine.
func (c *Client) WatchConfig(ctx context.Context, version string, fn func(*relayv1.WatchRelayConfigResponse)) {
	_ = c.Retry(ctx, "relay config stream", func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		s, err := c.relay.WatchRelayConfig(ctx, &relayv1.WatchRelayConfigRequest{Version: version})
		if err != nil {
			return err
		}
		for {
			m, err := s.Recv()
			if err != nil {
				return err
			}
			fn(m)
		}
	})
}

// Status is one report's content.
type Status struct {
	// URLs of the data path (https://host:port/relay).
	URLs []string
	// STUNAddress is host:port of the STUN responder, empty when none.
	STUNAddress string
	// Clients, MeshPeers, Packets, Bytes and Drops are the counters.
	Clients, MeshPeers uint64
	Packets, Bytes     uint64
	Drops              map[string]uint64
	// Started is when the relay started; Version its software version.
	Started time.Time
	Version string
}

// Report sends one status report and returns the interval the controller
// asks for (0 when it names none).
func (c *Client) Report(ctx context.Context, st Status) (time.Duration, error) {
	resp, err := c.relay.ReportRelayStatus(ctx, &relayv1.ReportRelayStatusRequest{
		Urls: st.URLs, StunAddress: st.STUNAddress, StartTime: timestamppb.New(st.Started), Version: st.Version,
		Counters: &relayv1.RelayCounters{
			ConnectedClients: st.Clients, ConnectedMeshPeers: st.MeshPeers,
			BytesForwarded: st.Bytes, PacketsForwarded: st.Packets, Drops: st.Drops,
		},
	})
	if err != nil {
		return 0, fmt.Errorf("register: report status: %w", err)
	}
	return resp.GetReportInterval().AsDuration(), nil
}
