package nodeplane

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

func fastEnroll(d *Deps) { d.EnrollRate, d.EnrollBurst, d.EnrollGlobalRate = 10000, 10000, 10000 }

func (e *env) nodeCount(t testing.TB) int {
	t.Helper()
	ctx := context.Background()
	var n int
	err := e.st.ReadTx(ctx, store.AllTenants(), func(tx store.Tx) error {
		p, err := tx.ListNodes(ctx, store.NodeFilter{}, store.ListOptions{PageSize: 1000})
		if err != nil {
			return err
		}
		n = len(p.Items)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (e *env) tokenUses(t testing.TB, secret string) int32 {
	t.Helper()
	ctx := context.Background()
	var uses int32
	err := e.st.ReadTx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error {
		p, err := tx.ListJoinTokens(ctx, store.JoinTokenFilter{IncludeRevoked: true}, store.ListOptions{PageSize: 1000})
		if err != nil {
			return err
		}
		for _, jt := range p.Items {
			if strings.HasPrefix(secret, jt.Prefix) {
				uses = jt.UseCount
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return uses
}

func TestEnrollSingleUseTokenUnderConcurrency(t *testing.T) {
	e := newEnv(t, fastEnroll)
	secret := e.token(t, nil)
	cc := e.dial(t, nil)
	client := nodev1.NewEnrollmentServiceClient(cc)
	const n = 50
	reqs := make([]*nodev1.EnrollRequest, n)
	for i := range reqs {
		reqs[i] = e.enrollReq(t, secret, newKey(t), randWG(t), "host")
	}
	var (
		wg     sync.WaitGroup
		mu     sync.Mutex
		ok     int
		denied int
		other  []error
	)
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := client.Enroll(context.Background(), reqs[i])
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case status.Code(err) == codes.PermissionDenied && strings.Contains(status.Convert(err).Message(), "already used"):
				denied++
			default:
				other = append(other, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if ok != 1 || denied != n-1 || len(other) > 0 {
		t.Fatalf("successes %d, used-token denials %d, other errors %v; want 1, %d, none", ok, denied, other, n-1)
	}
	if got := e.nodeCount(t); got != 1 {
		t.Fatalf("%d nodes exist, want 1", got)
	}
	if got := e.tokenUses(t, secret); got != 1 {
		t.Fatalf("token use count %d, want 1", got)
	}
}

func TestEnrollRefusals(t *testing.T) {
	e := newEnv(t, fastEnroll)
	cc := e.dial(t, nil)
	client := nodev1.NewEnrollmentServiceClient(cc)
	valid := e.token(t, nil)
	tests := []struct {
		name    string
		secret  string
		mutate  func(*nodev1.EnrollRequest)
		header  string
		code    codes.Code
		message string
	}{
		{name: "unknown", secret: "cvj_" + strings.Repeat("A", 43), code: codes.Unauthenticated, message: "unknown join token"},
		{name: "expired", secret: e.token(t, func(j *domain.JoinToken) { j.ExpireTime = time.Now().Add(-time.Minute) }), code: codes.PermissionDenied, message: "expired"},
		{name: "revoked", secret: e.token(t, func(j *domain.JoinToken) { j.Revoked, j.RevokeTime = true, time.Now() }), code: codes.PermissionDenied, message: "revoked"},
		{name: "used", secret: e.token(t, func(j *domain.JoinToken) { j.Reusable, j.MaxUses = true, 1 }), code: codes.OK},
		{name: "wrong kind (static peer token)", secret: e.token(t, func(j *domain.JoinToken) { j.Kind = domain.NodeKindStaticPeer }), code: codes.PermissionDenied, message: "cannot enroll"},
		{name: "wrong kind (client expects a relay)", secret: valid, header: "relay", code: codes.PermissionDenied, message: "not a relay"},
		{name: "malformed token", secret: "not-a-token", code: codes.InvalidArgument, message: "join_token"},
		{name: "malformed key", secret: valid, mutate: func(r *nodev1.EnrollRequest) { r.WireguardPublicKey = r.WireguardPublicKey[:31] }, code: codes.InvalidArgument, message: "wireguard_public_key"},
		{name: "malformed CSR", secret: valid, mutate: func(r *nodev1.EnrollRequest) { r.CsrDer = append([]byte{0x30, 0x82}, make([]byte, 100)...) }, code: codes.InvalidArgument, message: "certificate request"},
		{name: "CSR with a bad signature", secret: valid, mutate: func(r *nodev1.EnrollRequest) { r.CsrDer[len(r.CsrDer)-3] ^= 0xff }, code: codes.InvalidArgument, message: "certificate request"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nodesBefore := e.nodeCount(t)
			usesBefore := e.tokenUses(t, tc.secret)
			req := e.enrollReq(t, tc.secret, newKey(t), randWG(t), "refused")
			if tc.mutate != nil {
				tc.mutate(req)
			}
			ctx := context.Background()
			if tc.header != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, strings.ToLower(IdentityKindHeader), tc.header)
			}
			_, err := client.Enroll(ctx, req)
			if tc.code == codes.OK {
				// A reusable token with one use: the first succeeds, the second says used.
				if err != nil {
					t.Fatalf("first use: %v", err)
				}
				_, err = client.Enroll(ctx, e.enrollReq(t, tc.secret, newKey(t), randWG(t), "second"))
				tc.code, tc.message = codes.PermissionDenied, "already used"
				nodesBefore++
				usesBefore++
			}
			if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.message) {
				t.Fatalf("got %v, want %s containing %q", err, tc.code, tc.message)
			}
			if got := e.nodeCount(t); got != nodesBefore {
				t.Fatalf("nodes %d -> %d: a refused enrollment created a node", nodesBefore, got)
			}
			if got := e.tokenUses(t, tc.secret); got != usesBefore {
				t.Fatalf("token uses %d -> %d: a refused enrollment consumed a use", usesBefore, got)
			}
		})
	}
	// The valid token was never consumed by the refusals above.
	if _, err := client.Enroll(context.Background(), e.enrollReq(t, valid, newKey(t), randWG(t), "finally")); err != nil {
		t.Fatalf("valid token after refusals: %v", err)
	}
}

func TestEnrollRateLimit(t *testing.T) {
	e := newEnv(t, func(d *Deps) { d.EnrollRate, d.EnrollBurst = 1, 3 })
	client := nodev1.NewEnrollmentServiceClient(e.dial(t, nil))
	var exhausted int
	var trailer metadata.MD
	for i := 0; i < 10; i++ {
		_, err := client.Enroll(context.Background(), e.enrollReq(t, "cvj_"+strings.Repeat("B", 43), newKey(t), randWG(t), "x"), grpc.Trailer(&trailer))
		if status.Code(err) == codes.ResourceExhausted {
			exhausted++
			if len(trailer.Get("retry-after-ms")) == 0 {
				t.Fatalf("ResourceExhausted without retry-after-ms trailer: %v", trailer)
			}
		}
	}
	if exhausted < 5 {
		t.Fatalf("%d of 10 rapid attempts were rate limited, want at least 5", exhausted)
	}
}

func TestEnrollResponse(t *testing.T) {
	e := newEnv(t)
	a := e.enroll(t, e.token(t, func(j *domain.JoinToken) { j.Tags = []string{"web"}; j.Ephemeral = true }), "Laptop.example.com")
	if a.id.GetTenantId() != e.tenant.ID || a.id.GetCvlanId() != e.cvlan.ID || a.id.GetName() != "laptop" || a.id.GetIpv4Address() == "" {
		t.Fatalf("identity %+v", a.id)
	}
	leaf := a.cert.Load().Leaf
	want := "spiffe://cloudvlan.internal/tenant/" + e.tenant.ID + "/node/" + a.id.GetNodeId()
	if a.id.GetSpiffeId() != want || len(leaf.URIs) == 0 || leaf.URIs[0].String() != want {
		t.Fatalf("spiffe id %q, cert %v, want %q", a.id.GetSpiffeId(), leaf.URIs, want)
	}
	n := e.getNode(t, a.id.GetNodeId())
	if !n.Ephemeral || len(n.Tags) != 1 || n.CertSerial != leaf.SerialNumber.String() {
		t.Fatalf("stored node %+v", n)
	}
	ctx := context.Background()
	var audit int
	_ = e.st.ReadTx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error {
		p, err := tx.ListAudit(ctx, store.AuditFilter{Action: "Enroll"}, store.ListOptions{})
		if err == nil {
			audit = len(p.Items)
		}
		return err
	})
	if audit != 1 {
		t.Fatalf("%d Enroll audit rows, want 1", audit)
	}
	// A second node with the same host name gets a free name.
	b := e.enroll(t, e.token(t, nil), "laptop")
	if b.id.GetName() != "laptop-2" {
		t.Fatalf("second name %q, want laptop-2", b.id.GetName())
	}
}

// More nodes of one host name than a page of names holds still get free names.
func TestEnrollSameHostnameBeyondOnePage(t *testing.T) {
	e := newEnv(t, fastEnroll)
	ctx := context.Background()
	taken := map[string]bool{}
	err := e.st.Tx(ctx, store.TenantScope(e.tenant.ID), func(tx store.Tx) error {
		for i := 1; i <= store.MaxPageSize+1; i++ {
			name := "web"
			if i > 1 {
				name = fmt.Sprintf("web-%d", i)
			}
			wg := randWG(t)
			n := &domain.Node{TenantID: e.tenant.ID, CvlanID: e.cvlan.ID, Name: name, Kind: domain.NodeKindNode,
				WireGuardPublicKey: base64.StdEncoding.EncodeToString(wg[:]), Status: domain.NodePending}
			if err := tx.CreateNode(ctx, n); err != nil {
				return err
			}
			taken[name] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		a := e.enroll(t, e.token(t, nil), "web")
		name := a.id.GetName()
		if taken[name] || !strings.HasPrefix(name, "web-") {
			t.Fatalf("enrolled as %q: taken or not derived from the host name", name)
		}
		taken[name] = true
	}
}
