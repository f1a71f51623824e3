package nodeplane

import (
	"context"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	"github.com/cloudvlan/cloudvlan/controller/netmapstate"
	relayv1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
	"github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1/cloudvlanv1connect"
)

// TestRelayReportKeepsEtag: a relay report with unchanged addresses changes what the API shows
// (status, stats, last seen) but not the relay's etag, and records no relay event (map loaders
// and config streams do nothing); a report with new addresses is a configuration change (new
// etag, relay event) that reaches the nodes' relay maps; the offline sweep is a status write too.
func TestRelayReportKeepsEtag(t *testing.T) {
	// The offline sweep runs every OfflineAfter/3: 5 s. Reports in this test are well within 15 s
	// of each other, so only the test's backdated last-seen time makes the relay offline.
	e := newEnv(t, func(d *Deps) { d.OfflineAfter = 15 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	region := &domain.Region{Name: "frankfurt", Code: "eu-central"}
	if err := e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateRegion(ctx, region) }); err != nil {
		t.Fatal(err)
	}
	r := &domain.Relay{TenantID: e.tenant.ID, RegionID: region.ID, Name: "relay-1"}
	if err := e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error { return tx.CreateRelay(ctx, r) }); err != nil {
		t.Fatal(err)
	}
	node := e.enroll(t, e.token(t, nil), "alpha")
	nch, ncancel := node.watch(t, ctx, 0, "session-alpha")
	defer ncancel()
	var nst netmapstate.State
	applyAck(t, node, &nst, next(t, nch, 5*time.Second).msg)
	// waitRelayURL waits until the node's relay map lists the relay at url.
	waitRelayURL := func(url string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			rm := nst.Map().GetRelayMap()
			if len(rm.GetRegions()) == 1 && len(rm.GetRegions()[0].GetRelays()) == 1 && rm.GetRegions()[0].GetRelays()[0].GetUrl() == url {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("relay map %v, want the relay at %s", rm, url)
			}
			applyAck(t, node, &nst, next(t, nch, 10*time.Second).msg)
		}
	}

	relay, _ := e.enrollAs(t, e.token(t, func(j *domain.JoinToken) { j.Kind, j.TargetID = domain.NodeKindRelay, r.ID }), "relay")
	control := relayv1.NewRelayControlServiceClient(relay.cc)
	hc, url, cred := apiServer(t, e)
	relays := cloudvlanv1connect.NewRelayServiceClient(hc, url, cred)
	get := func() *v1.Relay {
		t.Helper()
		g, err := relays.GetRelay(ctx, connect.NewRequest(&v1.GetRelayRequest{Id: r.ID}))
		if err != nil {
			t.Fatal(err)
		}
		return g.Msg.GetRelay()
	}
	// events returns the counts of relay and relay_status events of r after head.
	events := func(head int64) (cfg, status int) {
		t.Helper()
		evs, err := e.st.ChangesSince(ctx, head, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			switch {
			case ev.ResourceID != r.ID:
			case ev.ResourceType == domain.ResourceRelay:
				cfg++
			case ev.ResourceType == domain.ResourceRelayStatus:
				status++
			default:
				t.Fatalf("report recorded a %s event", ev.ResourceType)
			}
		}
		return cfg, status
	}
	head := func() int64 {
		t.Helper()
		id, err := e.st.LatestChangeID(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	report := func(host, stun string, clients uint64, bytes uint64) {
		t.Helper()
		if _, err := control.ReportRelayStatus(ctx, &relayv1.ReportRelayStatusRequest{
			Urls: []string{"https://" + host + "/relay"}, StunAddress: stun, Version: "1.0.0",
			Counters: &relayv1.RelayCounters{ConnectedClients: clients, BytesForwarded: bytes},
		}); err != nil {
			t.Fatal(err)
		}
	}

	// The first report brings the relay's addresses: a configuration change.
	created := get()
	h := head()
	report("relay1.example:8443", "203.0.113.1:3478", 1, 100)
	first := get()
	if first.GetEtag() == created.GetEtag() || first.GetStatus() != v1.RelayStatus_RELAY_STATUS_ONLINE || first.GetAddresses()[0] != "relay1.example:8443" {
		t.Fatalf("after the first report: %v (created with etag %s)", first, created.GetEtag())
	}
	if n, _ := events(h); n != 1 {
		t.Fatalf("first report: %d relay events, want 1", n)
	}
	waitRelayURL("https://relay1.example:8443/relay")

	// Reports with the same addresses: new stats, same etag and update time, no events (the
	// status stays online).
	for i, bytes := range []uint64{5000, 9000} {
		h := head()
		report("relay1.example:8443", "203.0.113.1:3478", uint64(3+i), bytes)
		got := get()
		if got.GetEtag() != first.GetEtag() || !got.GetUpdateTime().AsTime().Equal(first.GetUpdateTime().AsTime()) {
			t.Fatalf("report %d: etag %s, update time %v; want %s, %v", i, got.GetEtag(), got.GetUpdateTime().AsTime(), first.GetEtag(), first.GetUpdateTime().AsTime())
		}
		if got.GetStats().GetBytesForwarded() != bytes || got.GetStats().GetConnectedClients() != int32(3+i) || got.GetStatus() != v1.RelayStatus_RELAY_STATUS_ONLINE ||
			got.GetVersion() != "1.0.0" || got.GetLastSeenTime() == nil {
			t.Fatalf("report %d: API shows %v", i, got)
		}
		if cfg, st := events(h); cfg != 0 || st != 0 {
			t.Fatalf("report %d: %d relay and %d relay_status events, want none", i, cfg, st)
		}
	}

	// The administrator's etag from before those reports is still current.
	upd, err := relays.UpdateRelay(ctx, connect.NewRequest(&v1.UpdateRelayRequest{Relay: &v1.Relay{Id: r.ID, Etag: first.GetEtag(), Description: "edited"},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}}}))
	if err != nil {
		t.Fatalf("update with the etag read before the reports: %v", err)
	}
	edited := upd.Msg.GetRelay()
	if edited.GetStats().GetBytesForwarded() != 9000 {
		t.Fatalf("updated relay lost the reported stats: %v", edited)
	}

	// New addresses are a configuration change: new etag, a relay event, new relay maps.
	h = head()
	report("relay1b.example:9443", "203.0.113.2:3478", 4, 10000)
	moved := get()
	if moved.GetEtag() == edited.GetEtag() || moved.GetAddresses()[0] != "relay1b.example:9443" || moved.GetStunAddress() != "203.0.113.2:3478" ||
		moved.GetDescription() != "edited" {
		t.Fatalf("after an address change: %v (etag before %s)", moved, edited.GetEtag())
	}
	if n, _ := events(h); n != 1 {
		t.Fatalf("address change: %d relay events, want 1", n)
	}
	waitRelayURL("https://relay1b.example:9443/relay")
	// A new STUN address alone is a configuration change too.
	h = head()
	report("relay1b.example:9443", "203.0.113.3:3478", 4, 11000)
	if g := get(); g.GetEtag() == moved.GetEtag() || g.GetStunAddress() != "203.0.113.3:3478" {
		t.Fatalf("after a STUN address change: %v (etag before %s)", g, moved.GetEtag())
	}
	if n, _ := events(h); n != 1 {
		t.Fatalf("STUN address change: %d relay events, want 1", n)
	}

	// A relay not heard from goes offline by a status write: same etag, one relay_status event.
	before := get()
	h = head()
	err = e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		cur, err := tx.GetRelay(ctx, r.ID)
		if err != nil {
			return err
		}
		cur.LastSeenTime = time.Now().Add(-time.Hour)
		return tx.UpdateRelayStatus(ctx, cur, false)
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for get().GetStatus() != v1.RelayStatus_RELAY_STATUS_OFFLINE {
		if time.Now().After(deadline) {
			t.Fatal("relay not marked offline")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if g := get(); g.GetEtag() != before.GetEtag() {
		t.Fatalf("offline marking changed the etag: %s, want %s", g.GetEtag(), before.GetEtag())
	}
	if cfg, st := events(h); cfg != 0 || st != 1 {
		t.Fatalf("offline marking: %d relay and %d relay_status events, want 0 and 1", cfg, st)
	}
	// Its next report brings it back online: one relay_status event, same etag.
	h = head()
	report("relay1b.example:9443", "203.0.113.3:3478", 4, 12000)
	if g := get(); g.GetEtag() != before.GetEtag() || g.GetStatus() != v1.RelayStatus_RELAY_STATUS_ONLINE {
		t.Fatalf("report after offline: %v", g)
	}
	if cfg, st := events(h); cfg != 0 || st != 1 {
		t.Fatalf("report after offline: %d relay and %d relay_status events, want 0 and 1", cfg, st)
	}
}
