package register

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cloudvlan/cloudvlan/controller/nodeclient/nodeclienttest"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeRelayControl serves the relay's own calls.
type fakeRelayControl struct {
	relayv1.UnimplementedRelayControlServiceServer
	mu      sync.Mutex
	reports []*relayv1.ReportRelayStatusRequest
}

func (f *fakeRelayControl) WatchRelayConfig(req *relayv1.WatchRelayConfigRequest, s grpc.ServerStreamingServer[relayv1.WatchRelayConfigResponse]) error {
	if nodeclienttest.CallerURI(s.Context()) == "" {
		return errors.New("no client certificate")
	}
	if err := s.Send(&relayv1.WatchRelayConfigResponse{RegionId: "eu", MeshPeers: []*relayv1.MeshPeer{{RelayId: "r2", Url: "https://r2/relay"}}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

func (f *fakeRelayControl) ReportRelayStatus(ctx context.Context, req *relayv1.ReportRelayStatusRequest) (*relayv1.ReportRelayStatusResponse, error) {
	if nodeclienttest.CallerURI(ctx) == "" {
		return nil, errors.New("no client certificate")
	}
	f.mu.Lock()
	f.reports = append(f.reports, req)
	f.mu.Unlock()
	return &relayv1.ReportRelayStatusResponse{ReportInterval: durationpb.New(7 * time.Second)}, nil
}

func TestWatchAndReport(t *testing.T) {
	rc := &fakeRelayControl{}
	f := nodeclienttest.Start(t, time.Hour, &nodev1.NodeIdentity{Kind: nodev1.IdentityKind_IDENTITY_KIND_RELAY, ResourceId: "r1", SpiffeId: "spiffe://td/relay/r1"},
		func(s *grpc.Server) { relayv1.RegisterRelayControlServiceServer(s, rc) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cl := New(f.Client(t, nodev1.IdentityKind_IDENTITY_KIND_RELAY))

	got := make(chan *relayv1.WatchRelayConfigResponse, 1)
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl.WatchConfig(wctx, "v", func(m *relayv1.WatchRelayConfigResponse) { got <- m })
	}()
	select {
	case m := <-got:
		if m.GetRegionId() != "eu" || len(m.GetMeshPeers()) != 1 {
			t.Fatalf("config %v", m)
		}
	case <-ctx.Done():
		t.Fatal("no config")
	}
	wcancel()
	<-done

	iv, err := cl.Report(ctx, Status{URLs: []string{"https://127.0.0.1:443/relay"}, Clients: 3, Packets: 10, Drops: map[string]uint64{"queue_full": 2}, Started: time.Now()})
	if err != nil || iv != 7*time.Second {
		t.Fatalf("report: %v %v", iv, err)
	}
	rc.mu.Lock()
	r := rc.reports[0]
	rc.mu.Unlock()
	if r.GetCounters().GetConnectedClients() != 3 || r.GetCounters().GetDrops()["queue_full"] != 2 {
		t.Fatalf("report %v", r)
	}
}
