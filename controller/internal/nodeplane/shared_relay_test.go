package nodeplane

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
	nodev1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
)

// sharedToken stores a join token that belongs to no tenant (super_admin work) and returns its secret.
func (e *env) sharedToken(t *testing.T, kind domain.NodeKind, target string) string {
	t.Helper()
	secret, label, hash, err := auth.NewSecret(auth.JoinTokenPrefix)
	if err != nil {
		t.Fatal(err)
	}
	jt := &domain.JoinToken{Prefix: label, Hash: hash, Kind: kind, TargetID: target, ExpireTime: time.Now().Add(time.Hour)}
	ctx := context.Background()
	if err := e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateJoinToken(ctx, jt) }); err != nil {
		t.Fatal(err)
	}
	return secret
}

// TestSharedRelayEnrollment: a relay run by the operator for every tenant enrolls with a token of no
// tenant, gets a tenant-less relay identity, and is audited in the system tenant; a node token of no
// tenant is refused.
func TestSharedRelayEnrollment(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// The env already holds a tenant, so Bootstrap would not run: create the system tenant as it does.
	sys := &domain.Tenant{Name: auth.SystemTenantName, DisplayName: "System", Status: domain.TenantActive}
	if err := e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx, sys) }); err != nil {
		t.Fatal(err)
	}
	system := sys.ID
	region := &domain.Region{Name: "paris", Code: "eu-west"}
	shared := &domain.Relay{Name: "shared-1"}
	err := e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		if err := tx.CreateRegion(ctx, region); err != nil {
			return err
		}
		shared.RegionID = region.ID
		return tx.CreateRelay(ctx, shared)
	})
	if err != nil {
		t.Fatal(err)
	}

	_, resp := e.enrollAs(t, e.sharedToken(t, domain.NodeKindRelay, shared.ID), "relay")
	id := resp.GetIdentity()
	if id.GetKind() != nodev1.IdentityKind_IDENTITY_KIND_RELAY || id.GetTenantId() != "" ||
		!strings.HasSuffix(id.GetSpiffeId(), "/relay/"+shared.ID) || strings.Contains(id.GetSpiffeId(), "/tenant/") {
		t.Fatalf("shared relay identity %v", id)
	}
	var audited int
	err = e.st.ReadTx(ctx, store.TenantScope(system), func(tx store.Tx) error {
		page, err := tx.ListAudit(ctx, store.AuditFilter{ResourceID: shared.ID}, store.ListOptions{})
		if err == nil {
			audited = len(page.Items)
		}
		return err
	})
	if err != nil || audited == 0 {
		t.Fatalf("shared relay enrollment audit rows in the system tenant: %d (%v)", audited, err)
	}

	secret := e.sharedToken(t, domain.NodeKindNode, "")
	a := &agent{wg: randWG(t), key: newKey(t)}
	kctx := metadata.AppendToOutgoingContext(ctx, strings.ToLower(IdentityKindHeader), "node")
	_, err = nodev1.NewEnrollmentServiceClient(e.dial(t, nil)).Enroll(kctx, e.enrollReq(t, secret, a.key, a.wg, "orphan"))
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "names no tenant") {
		t.Fatalf("node token of no tenant: %v, want FailedPrecondition naming the missing tenant", err)
	}
}
