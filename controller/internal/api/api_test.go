package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"connectrpc.com/connect"
	"golang.org/x/time/rate"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	v1 "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

var protocols = []struct {
	name string
	grpc bool
}{{"connect", false}, {"grpc", true}}

func TestResourceLifecycle(t *testing.T) {
	for _, kind := range storeKinds {
		for _, p := range protocols {
			t.Run(kind+"/"+p.name, func(t *testing.T) {
				ctx := context.Background()
				e := newEnv(t, kind, noLimit)
				tid := e.newTenant(t, "acme")
				c := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), p.grpc)

				// Cvlan defaults: 100.64.0.0/10 and a generated ULA /48.
				cr, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "prod"}}))
				if err != nil {
					t.Fatal(err)
				}
				cv := cr.Msg.GetCvlan()
				if cv.GetIpv4Cidr() != "100.64.0.0/10" || cv.GetTenantId() != tid {
					t.Fatalf("cvlan %v", cv)
				}
				if p6, err := netip.ParsePrefix(cv.GetIpv6Cidr()); err != nil || !isULA(p6) || p6.Bits() != 48 {
					t.Fatalf("ipv6 cidr %q is not a ULA /48", cv.GetIpv6Cidr())
				}
				// Pagination.
				for _, n := range []string{"a1", "a2", "a3"} {
					if _, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: n}})); err != nil {
						t.Fatal(err)
					}
				}
				var names []string
				tok := ""
				for i := 0; ; i++ {
					lr, err := c.cvlan.ListCvlans(ctx, connect.NewRequest(&v1.ListCvlansRequest{PageSize: 3, PageToken: tok}))
					if err != nil {
						t.Fatal(err)
					}
					if lr.Msg.GetTotalSize() != 4 {
						t.Fatalf("total %d", lr.Msg.GetTotalSize())
					}
					for _, x := range lr.Msg.GetCvlans() {
						names = append(names, x.GetName())
					}
					if tok = lr.Msg.GetNextPageToken(); tok == "" {
						break
					}
					if i > 3 {
						t.Fatal("pagination does not end")
					}
				}
				if strings.Join(names, ",") != "a1,a2,a3,prod" {
					t.Fatalf("pages gave %v", names)
				}
				// Field mask: only description changes; the name in the message is ignored.
				ur, err := c.cvlan.UpdateCvlan(ctx, connect.NewRequest(&v1.UpdateCvlanRequest{
					Cvlan:      &v1.Cvlan{Id: cv.GetId(), Name: "ignored", Description: "production", Etag: cv.GetEtag()},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}},
				}))
				if err != nil {
					t.Fatal(err)
				}
				if ur.Msg.GetCvlan().GetName() != "prod" || ur.Msg.GetCvlan().GetDescription() != "production" || ur.Msg.GetCvlan().GetEtag() == cv.GetEtag() {
					t.Fatalf("after update: %v", ur.Msg.GetCvlan())
				}
				// Stale etag: Aborted, and nothing changes.
				_, err = c.cvlan.UpdateCvlan(ctx, connect.NewRequest(&v1.UpdateCvlanRequest{
					Cvlan:      &v1.Cvlan{Id: cv.GetId(), Description: "lost", Etag: cv.GetEtag()},
					UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}},
				}))
				if code(err) != connect.CodeAborted {
					t.Fatalf("stale etag: %v", err)
				}
				// A path outside the allowed list: InvalidArgument.
				_, err = c.cvlan.UpdateCvlan(ctx, connect.NewRequest(&v1.UpdateCvlanRequest{
					Cvlan: &v1.Cvlan{Id: cv.GetId(), Ipv4Cidr: "10.0.0.0/8"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"ipv4_cidr"}},
				}))
				if code(err) != connect.CodeInvalidArgument {
					t.Fatalf("immutable path: %v", err)
				}
				// Unknown id: NotFound.
				if _, err := c.cvlan.GetCvlan(ctx, connect.NewRequest(&v1.GetCvlanRequest{Id: "0190f5a4-0000-7000-8000-000000000000"})); code(err) != connect.CodeNotFound {
					t.Fatalf("unknown id: %v", err)
				}

				// Group, tag, policy.
				gr, err := c.group.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Group: &v1.Group{Name: "devs", IdpGroupNames: []string{"engineering"}}}))
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c.tag.CreateTag(ctx, connect.NewRequest(&v1.CreateTagRequest{Tag: &v1.Tag{Name: "web"}})); err != nil {
					t.Fatal(err)
				}
				rule := &v1.PolicyRule{
					Action:       v1.PolicyAction_POLICY_ACTION_ALLOW,
					Sources:      []*v1.PolicyTarget{{Target: &v1.PolicyTarget_GroupId{GroupId: gr.Msg.GetGroup().GetId()}}},
					Destinations: []*v1.PolicyTarget{{Target: &v1.PolicyTarget_Tag{Tag: "web"}}},
					Protocol:     v1.Protocol_PROTOCOL_TCP, Ports: []*v1.PortRange{{First: 443}},
				}
				pr, err := c.policy.CreatePolicy(ctx, connect.NewRequest(&v1.CreatePolicyRequest{Policy: &v1.Policy{Name: "devs-to-web", Enabled: true, Priority: 100, Rules: []*v1.PolicyRule{rule}}}))
				if err != nil {
					t.Fatal(err)
				}
				if len(pr.Msg.GetPolicy().GetRules()) != 1 {
					t.Fatalf("policy %v", pr.Msg.GetPolicy())
				}
				got, err := c.policy.GetPolicy(ctx, connect.NewRequest(&v1.GetPolicyRequest{Id: pr.Msg.GetPolicy().GetId()}))
				if err != nil || got.Msg.GetPolicy().GetPriority() != 100 {
					t.Fatalf("GetPolicy priority = %d (err %v), want 100 as created", got.Msg.GetPolicy().GetPriority(), err)
				}
				bad := &v1.PolicyRule{
					Action: v1.PolicyAction_POLICY_ACTION_ALLOW, Protocol: v1.Protocol_PROTOCOL_ANY,
					Sources:      []*v1.PolicyTarget{{Target: &v1.PolicyTarget_GroupId{GroupId: "0190f5a4-0000-7000-8000-000000000001"}}},
					Destinations: []*v1.PolicyTarget{{Target: &v1.PolicyTarget_Tag{Tag: "nosuchtag"}}},
				}
				vr, err := c.policy.ValidatePolicy(ctx, connect.NewRequest(&v1.ValidatePolicyRequest{Policy: &v1.Policy{Name: "x", Rules: []*v1.PolicyRule{bad}}}))
				if err != nil {
					t.Fatal(err)
				}
				if vr.Msg.GetValid() || len(vr.Msg.GetViolations()) != 2 || vr.Msg.GetViolations()[0].GetField() != "rules[0].sources[0].group_id" {
					t.Fatalf("violations %v", vr.Msg.GetViolations())
				}
				if _, err := c.policy.CreatePolicy(ctx, connect.NewRequest(&v1.CreatePolicyRequest{Policy: &v1.Policy{Name: "bad", Rules: []*v1.PolicyRule{bad}}})); code(err) != connect.CodeInvalidArgument {
					t.Fatalf("create invalid policy: %v", err)
				}

				// Join token: its tags must exist; the secret is shown once and stored hashed.
				if _, err := c.token.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{JoinToken: &v1.JoinToken{
					Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: cv.GetId(), Tags: []string{"nosuch"},
				}})); code(err) != connect.CodeNotFound {
					t.Fatalf("token with unknown tag: %v", err)
				}
				jr, err := c.token.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{JoinToken: &v1.JoinToken{Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: cv.GetId(), Tags: []string{"web"}, Name: "ci"}}))
				if err != nil {
					t.Fatal(err)
				}
				if jr.Msg.GetJoinToken().GetName() != "ci" || jr.Msg.GetJoinToken().GetTags()[0] != "web" {
					t.Fatalf("token %v", jr.Msg.GetJoinToken())
				}
				sec := jr.Msg.GetSecret()
				if !strings.HasPrefix(sec, "cvj_") || len(sec) < 40 || !strings.HasPrefix(sec, jr.Msg.GetJoinToken().GetPrefix()) {
					t.Fatalf("secret %q prefix %q", sec, jr.Msg.GetJoinToken().GetPrefix())
				}
				err = e.st.ReadTx(ctx, store.TenantScope(tid), func(tx store.Tx) error {
					j, err := tx.GetJoinToken(ctx, jr.Msg.GetJoinToken().GetId())
					if err != nil {
						return err
					}
					if !bytes.Equal(j.Hash, auth.HashSecret(sec)) {
						return errors.New("stored hash is not the secret's SHA-256")
					}
					return nil
				})
				if err != nil {
					t.Fatal(err)
				}
				rv, err := c.token.RevokeJoinToken(ctx, connect.NewRequest(&v1.RevokeJoinTokenRequest{Id: jr.Msg.GetJoinToken().GetId()}))
				if err != nil || rv.Msg.GetJoinToken().GetStatus() != v1.JoinTokenStatus_JOIN_TOKEN_STATUS_REVOKED {
					t.Fatalf("revoke: %v %v", rv, err)
				}
				lj, err := c.token.ListJoinTokens(ctx, connect.NewRequest(&v1.ListJoinTokensRequest{}))
				if err != nil || len(lj.Msg.GetJoinTokens()) != 1 {
					t.Fatalf("list tokens: %v %v", lj, err)
				}
				if _, err := c.token.DeleteJoinToken(ctx, connect.NewRequest(&v1.DeleteJoinTokenRequest{Id: jr.Msg.GetJoinToken().GetId()})); err != nil {
					t.Fatal(err)
				}

				// Audit log: every mutation above, with actor and before/after.
				al, err := c.audit.ListAuditLogs(ctx, connect.NewRequest(&v1.ListAuditLogsRequest{PageSize: 100}))
				if err != nil {
					t.Fatal(err)
				}
				var actions []string
				for _, a := range al.Msg.GetAuditLogs() {
					actions = append(actions, a.GetAction())
					if a.GetActorType() != v1.ActorType_ACTOR_TYPE_API_KEY || a.GetActorId() == "" || a.GetRequestId() == "" {
						t.Errorf("audit entry without actor or request id: %v", a)
					}
				}
				want := "join_token.delete,join_token.revoke,join_token.create,policy.create,tag.create,group.create,cvlan.update,cvlan.create,cvlan.create,cvlan.create,cvlan.create,tenant.create"
				if strings.Join(actions, ",") != want {
					t.Fatalf("audit actions\n got %s\nwant %s", strings.Join(actions, ","), want)
				}
				upd := al.Msg.GetAuditLogs()[6]
				if upd.GetBefore().GetFields()["description"] != nil || upd.GetAfter().GetFields()["description"].GetStringValue() != "production" {
					t.Fatalf("cvlan.update before/after: %v / %v", upd.GetBefore(), upd.GetAfter())
				}
				f, err := c.audit.ListAuditLogs(ctx, connect.NewRequest(&v1.ListAuditLogsRequest{Action: "join_token.*", ResourceType: v1.ResourceType_RESOURCE_TYPE_JOIN_TOKEN}))
				if err != nil || len(f.Msg.GetAuditLogs()) != 3 {
					t.Fatalf("filtered audit: %v %v", f, err)
				}
				g, err := c.audit.GetAuditLog(ctx, connect.NewRequest(&v1.GetAuditLogRequest{Id: upd.GetId()}))
				if err != nil || g.Msg.GetAuditLog().GetAction() != "cvlan.update" {
					t.Fatalf("get audit: %v %v", g, err)
				}
			})
		}
	}
}

func TestValidationGivesViolatedFields(t *testing.T) {
	e := newEnv(t, "sqlite")
	c := e.clients(e.admin, true)
	_, err := c.cvlan.CreateCvlan(context.Background(), connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "Bad_Name", Ipv4Cidr: "nonsense"}}))
	if code(err) != connect.CodeInvalidArgument {
		t.Fatalf("got %v", err)
	}
	var ce *connect.Error
	errors.As(err, &ce)
	var fields []string
	for _, d := range ce.Details() {
		m, derr := d.Value()
		if derr != nil {
			t.Fatal(derr)
		}
		if vs, ok := m.(*validate.Violations); ok {
			for _, v := range vs.GetViolations() {
				fields = append(fields, fieldPath(v))
			}
		}
	}
	if strings.Join(fields, ",") != "cvlan.name,cvlan.ipv4_cidr" {
		t.Fatalf("violated fields %v", fields)
	}
}

func fieldPath(v *validate.Violation) string {
	var parts []string
	for _, el := range v.GetField().GetElements() {
		parts = append(parts, el.GetFieldName())
	}
	return strings.Join(parts, ".")
}

func auditCount(t *testing.T, st store.Store, tid string) int {
	t.Helper()
	n := 0
	err := st.ReadTx(context.Background(), store.TenantScope(tid), func(tx store.Tx) error {
		p, err := tx.ListAudit(context.Background(), store.AuditFilter{}, store.ListOptions{PageSize: 1, WithTotal: true})
		n = p.TotalSize
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFailedMutationWritesNoAudit: a mutation that fails leaves neither the change nor an audit
// row; one that succeeds leaves both.
func TestFailedMutationWritesNoAudit(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, kind)
			tid := e.newTenant(t, "acme")
			c := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), false)
			if _, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "prod"}})); err != nil {
				t.Fatal(err)
			}
			before := auditCount(t, e.st, tid)
			// Fails in the store (name taken) after the handler prepared its audit row.
			if _, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "prod"}})); code(err) != connect.CodeAlreadyExists {
				t.Fatalf("duplicate: %v", err)
			}
			// Fails in the handler after the store update ran (status change without super_admin)...
			_, err := c.tenant.UpdateTenant(ctx, connect.NewRequest(&v1.UpdateTenantRequest{
				Tenant:     &v1.Tenant{Id: tid, Description: "x", Status: v1.TenantStatus_TENANT_STATUS_SUSPENDED},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description", "status"}},
			}))
			if code(err) != connect.CodePermissionDenied {
				t.Fatalf("status change by tenant_admin: %v", err)
			}
			if got := auditCount(t, e.st, tid); got != before {
				t.Fatalf("failed mutations wrote %d audit rows", got-before)
			}
			tr, err := c.tenant.GetTenant(ctx, connect.NewRequest(&v1.GetTenantRequest{Id: tid}))
			if err != nil || tr.Msg.GetTenant().GetDescription() != "" {
				t.Fatalf("failed update changed the tenant: %v %v", tr, err)
			}
			if _, err := c.tenant.UpdateTenant(ctx, connect.NewRequest(&v1.UpdateTenantRequest{
				Tenant: &v1.Tenant{Id: tid, Description: "x"}, UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"description"}},
			})); err != nil {
				t.Fatal(err)
			}
			if got := auditCount(t, e.st, tid); got != before+1 {
				t.Fatalf("successful mutation wrote %d audit rows", got-before)
			}
		})
	}
}

// TestTenantIsolation: two tenants with the same kinds of resources; every Get and List of one
// never returns the other's rows, and naming the other tenant gives NotFound.
func TestTenantIsolation(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, kind, noLimit)
			ids := map[string]map[string]string{} // tenant -> kind -> id
			cs := map[string]*clients{}
			tids := map[string]string{}
			rg, err := e.clients(e.admin, false).region.CreateRegion(ctx, connect.NewRequest(&v1.CreateRegionRequest{Region: &v1.Region{Name: "frankfurt", Code: "eu-central"}}))
			if err != nil {
				t.Fatal(err)
			}
			shared, err := e.clients(e.admin, false).relay.CreateRelay(ctx, connect.NewRequest(&v1.CreateRelayRequest{Shared: true, Relay: &v1.Relay{Name: "shared", RegionId: rg.Msg.GetRegion().GetId()}}))
			if err != nil {
				t.Fatal(err)
			}
			for _, name := range []string{"red", "blue"} {
				tid := e.newTenant(t, name)
				tids[name] = tid
				c := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), false)
				cs[name] = c
				ids[name] = seedTenant(t, c, rg.Msg.GetRegion().GetId())
			}
			for self, other := range map[string]string{"red": "blue", "blue": "red"} {
				c := cs[self]
				for kind, id := range ids[other] {
					if err := getByKind(ctx, c, kind, id, ""); code(err) != connect.CodeNotFound {
						t.Errorf("%s reading %s's %s: %v, want NotFound", self, other, kind, err)
					}
					if err := getByKind(ctx, c, kind, ids[self][kind], tids[other]); code(err) != connect.CodeNotFound {
						t.Errorf("%s naming tenant %s for %s: %v, want NotFound", self, other, kind, err)
					}
					if err := getByKind(ctx, c, kind, ids[self][kind], ""); err != nil {
						t.Errorf("%s reading its own %s: %v", self, kind, err)
					}
				}
				for _, listed := range listAll(t, c) {
					if listed.tenant != tids[self] {
						t.Errorf("%s listed a %s of tenant %s", self, listed.kind, listed.tenant)
					}
				}
				// The shared relay is visible to every tenant but changeable by none of them.
				all, err := c.relay.ListRelays(ctx, connect.NewRequest(&v1.ListRelaysRequest{}))
				if err != nil || len(all.Msg.GetRelays()) != 2 {
					t.Errorf("%s lists relays %v %v, want its own and the shared one", self, all, err)
				}
				if _, err := c.relay.DeleteRelay(ctx, connect.NewRequest(&v1.DeleteRelayRequest{Id: shared.Msg.GetRelay().GetId()})); code(err) != connect.CodePermissionDenied {
					t.Errorf("%s deleting the shared relay: %v", self, err)
				}
				tl, err := c.tenant.ListTenants(ctx, connect.NewRequest(&v1.ListTenantsRequest{}))
				if err != nil || len(tl.Msg.GetTenants()) != 1 || tl.Msg.GetTenants()[0].GetId() != tids[self] {
					t.Errorf("%s lists tenants %v %v", self, tl, err)
				} else if used := tl.Msg.GetTenants()[0].GetCapacity().GetUsed(); used != 1 {
					t.Errorf("%s lists its tenant with capacity.used %d, want 1 (its static peer)", self, used)
				}
				// The region lists the relays this tenant can see: its own and the shared one, not the other tenant's.
				rl, err := c.region.ListRegions(ctx, connect.NewRequest(&v1.ListRegionsRequest{}))
				if err != nil || len(rl.Msg.GetRegions()) != 1 {
					t.Fatalf("%s lists regions %v %v", self, rl, err)
				}
				if got, want := strings.Join(slices.Sorted(slices.Values(rl.Msg.GetRegions()[0].GetRelayIds())), ","),
					strings.Join(slices.Sorted(slices.Values([]string{ids[self]["relay"], shared.Msg.GetRelay().GetId()})), ","); got != want {
					t.Errorf("%s sees region relays %s, want %s", self, got, want)
				}
				al, err := c.audit.ListAuditLogs(ctx, connect.NewRequest(&v1.ListAuditLogsRequest{PageSize: 1000}))
				if err != nil {
					t.Fatal(err)
				}
				for _, a := range al.Msg.GetAuditLogs() {
					if a.GetTenantId() != tids[self] {
						t.Errorf("%s sees audit entry of tenant %s", self, a.GetTenantId())
					}
				}
			}
		})
	}
}

func seedTenant(t *testing.T, c *clients, regionID string) map[string]string {
	t.Helper()
	ctx := context.Background()
	out := map[string]string{}
	cv, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "net"}}))
	if err != nil {
		t.Fatal(err)
	}
	out["cvlan"] = cv.Msg.GetCvlan().GetId()
	sp, err := c.node.CreateStaticPeer(ctx, connect.NewRequest(&v1.CreateStaticPeerRequest{CvlanId: out["cvlan"], Name: "router"}))
	if err != nil {
		t.Fatal(err)
	}
	out["node"] = sp.Msg.GetNode().GetId()
	g, err := c.group.CreateGroup(ctx, connect.NewRequest(&v1.CreateGroupRequest{Group: &v1.Group{Name: "g"}}))
	if err != nil {
		t.Fatal(err)
	}
	out["group"] = g.Msg.GetGroup().GetId()
	tg, err := c.tag.CreateTag(ctx, connect.NewRequest(&v1.CreateTagRequest{Tag: &v1.Tag{Name: "t"}}))
	if err != nil {
		t.Fatal(err)
	}
	out["tag"] = tg.Msg.GetTag().GetId()
	p, err := c.policy.CreatePolicy(ctx, connect.NewRequest(&v1.CreatePolicyRequest{Policy: &v1.Policy{Name: "p"}}))
	if err != nil {
		t.Fatal(err)
	}
	out["policy"] = p.Msg.GetPolicy().GetId()
	u, err := c.user.CreateUser(ctx, connect.NewRequest(&v1.CreateUserRequest{User: &v1.User{Name: "ann", Email: "ann@example.com", Role: v1.UserRole_USER_ROLE_VIEWER}}))
	if err != nil {
		t.Fatal(err)
	}
	out["user"] = u.Msg.GetUser().GetId()
	j, err := c.token.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{JoinToken: &v1.JoinToken{Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: out["cvlan"]}}))
	if err != nil {
		t.Fatal(err)
	}
	out["join_token"] = j.Msg.GetJoinToken().GetId()
	k, err := c.key.CreateApiKey(ctx, connect.NewRequest(&v1.CreateApiKeyRequest{ApiKey: &v1.ApiKey{Name: "ci", Role: v1.UserRole_USER_ROLE_VIEWER, Scopes: []v1.ApiScope{v1.ApiScope_API_SCOPE_READ}}}))
	if err != nil {
		t.Fatal(err)
	}
	out["api_key"] = k.Msg.GetApiKey().GetId()
	d, err := c.disc.CreateDiscoveryServer(ctx, connect.NewRequest(&v1.CreateDiscoveryServerRequest{DiscoveryServer: &v1.DiscoveryServer{Name: "stun", Address: "stun.example.com:3478", Type: v1.DiscoveryServerType_DISCOVERY_SERVER_TYPE_STUN}}))
	if err != nil {
		t.Fatal(err)
	}
	out["discovery_server"] = d.Msg.GetDiscoveryServer().GetId()
	v, err := c.vr.CreateVRouter(ctx, connect.NewRequest(&v1.CreateVRouterRequest{Vrouter: &v1.VRouter{Name: "vr", CvlanId: out["cvlan"], RegionId: regionID}}))
	if err != nil {
		t.Fatal(err)
	}
	out["vrouter"] = v.Msg.GetVrouter().GetId()
	rl, err := c.relay.CreateRelay(ctx, connect.NewRequest(&v1.CreateRelayRequest{Relay: &v1.Relay{Name: "own", RegionId: regionID, Addresses: []string{"relay.example.com:443"}}}))
	if err != nil {
		t.Fatal(err)
	}
	out["relay"] = rl.Msg.GetRelay().GetId()
	return out
}

func getByKind(ctx context.Context, c *clients, kind, id, tenant string) error {
	var err error
	switch kind {
	case "cvlan":
		_, err = c.cvlan.GetCvlan(ctx, connect.NewRequest(&v1.GetCvlanRequest{TenantId: tenant, Id: id}))
	case "node":
		_, err = c.node.GetNode(ctx, connect.NewRequest(&v1.GetNodeRequest{TenantId: tenant, Id: id}))
	case "group":
		_, err = c.group.GetGroup(ctx, connect.NewRequest(&v1.GetGroupRequest{TenantId: tenant, Id: id}))
	case "tag":
		_, err = c.tag.GetTag(ctx, connect.NewRequest(&v1.GetTagRequest{TenantId: tenant, Id: id}))
	case "policy":
		_, err = c.policy.GetPolicy(ctx, connect.NewRequest(&v1.GetPolicyRequest{TenantId: tenant, Id: id}))
	case "user":
		_, err = c.user.GetUser(ctx, connect.NewRequest(&v1.GetUserRequest{TenantId: tenant, Id: id}))
	case "join_token":
		_, err = c.token.GetJoinToken(ctx, connect.NewRequest(&v1.GetJoinTokenRequest{TenantId: tenant, Id: id}))
	case "api_key":
		_, err = c.key.GetApiKey(ctx, connect.NewRequest(&v1.GetApiKeyRequest{TenantId: tenant, Id: id}))
	case "discovery_server":
		_, err = c.disc.GetDiscoveryServer(ctx, connect.NewRequest(&v1.GetDiscoveryServerRequest{TenantId: tenant, Id: id}))
	case "relay":
		_, err = c.relay.GetRelay(ctx, connect.NewRequest(&v1.GetRelayRequest{TenantId: tenant, Id: id}))
	case "vrouter":
		_, err = c.vr.GetVRouter(ctx, connect.NewRequest(&v1.GetVRouterRequest{TenantId: tenant, Id: id}))
	default:
		return fmt.Errorf("unknown kind %s", kind)
	}
	return err
}

type listed struct{ kind, tenant string }

func listAll(t *testing.T, c *clients) []listed {
	t.Helper()
	ctx := context.Background()
	var out []listed
	add := func(kind string, tenants ...string) {
		if len(tenants) == 0 {
			t.Errorf("list %s returned nothing", kind)
		}
		for _, tn := range tenants {
			out = append(out, listed{kind, tn})
		}
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	cv, err := c.cvlan.ListCvlans(ctx, connect.NewRequest(&v1.ListCvlansRequest{}))
	must(err)
	var ts []string
	for _, x := range cv.Msg.GetCvlans() {
		ts = append(ts, x.GetTenantId())
	}
	add("cvlan", ts...)
	nl, err := c.node.ListNodes(ctx, connect.NewRequest(&v1.ListNodesRequest{}))
	must(err)
	ts = nil
	for _, x := range nl.Msg.GetNodes() {
		ts = append(ts, x.GetTenantId())
	}
	add("node", ts...)
	gl, err := c.group.ListGroups(ctx, connect.NewRequest(&v1.ListGroupsRequest{}))
	must(err)
	ts = nil
	for _, x := range gl.Msg.GetGroups() {
		ts = append(ts, x.GetTenantId())
	}
	add("group", ts...)
	tl, err := c.tag.ListTags(ctx, connect.NewRequest(&v1.ListTagsRequest{}))
	must(err)
	ts = nil
	for _, x := range tl.Msg.GetTags() {
		ts = append(ts, x.GetTenantId())
	}
	add("tag", ts...)
	pl, err := c.policy.ListPolicies(ctx, connect.NewRequest(&v1.ListPoliciesRequest{}))
	must(err)
	ts = nil
	for _, x := range pl.Msg.GetPolicies() {
		ts = append(ts, x.GetTenantId())
	}
	add("policy", ts...)
	ul, err := c.user.ListUsers(ctx, connect.NewRequest(&v1.ListUsersRequest{}))
	must(err)
	ts = nil
	for _, x := range ul.Msg.GetUsers() {
		ts = append(ts, x.GetTenantId())
	}
	add("user", ts...)
	jl, err := c.token.ListJoinTokens(ctx, connect.NewRequest(&v1.ListJoinTokensRequest{}))
	must(err)
	ts = nil
	for _, x := range jl.Msg.GetJoinTokens() {
		ts = append(ts, x.GetTenantId())
	}
	add("join_token", ts...)
	kl, err := c.key.ListApiKeys(ctx, connect.NewRequest(&v1.ListApiKeysRequest{}))
	must(err)
	ts = nil
	for _, x := range kl.Msg.GetApiKeys() {
		ts = append(ts, x.GetTenantId())
	}
	add("api_key", ts...)
	dl, err := c.disc.ListDiscoveryServers(ctx, connect.NewRequest(&v1.ListDiscoveryServersRequest{}))
	must(err)
	ts = nil
	for _, x := range dl.Msg.GetDiscoveryServers() {
		ts = append(ts, x.GetTenantId())
	}
	add("discovery_server", ts...)
	vl, err := c.vr.ListVRouters(ctx, connect.NewRequest(&v1.ListVRoutersRequest{}))
	must(err)
	ts = nil
	for _, x := range vl.Msg.GetVrouters() {
		ts = append(ts, x.GetTenantId())
	}
	add("vrouter", ts...)
	rl, err := c.relay.ListRelays(ctx, connect.NewRequest(&v1.ListRelaysRequest{Shared: new(bool)}))
	must(err)
	ts = nil
	for _, x := range rl.Msg.GetRelays() {
		ts = append(ts, x.GetTenantId())
	}
	add("relay", ts...)
	return out
}

// TestStaticPeer: the wg-quick config carries a working key pair, the private key is stored
// nowhere, and quarantine/delete notify the node plane.
func TestStaticPeer(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st := openStoreAt(t, filepath.Join(dir, "cvlan.db"))
	rev := &revocations{ch: make(chan string, 4)}
	e := newEnvWith(t, st, &Deps{Revoker: rev})
	tid := e.newTenant(t, "acme")
	c := e.clients(e.keyFor(t, tid, domain.RoleOperator), true)
	admin := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), true)
	cv, err := admin.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "net"}}))
	if err != nil {
		t.Fatal(err)
	}
	cvID := cv.Msg.GetCvlan().GetId()
	if _, err := admin.tag.CreateTag(ctx, connect.NewRequest(&v1.CreateTagRequest{Tag: &v1.Tag{Name: "web"}})); err != nil {
		t.Fatal(err)
	}
	other, err := c.node.CreateStaticPeer(ctx, connect.NewRequest(&v1.CreateStaticPeerRequest{CvlanId: cvID, Name: "office", Tags: []string{"web"}, Endpoint: "203.0.113.7:51820"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := admin.policy.CreatePolicy(ctx, connect.NewRequest(&v1.CreatePolicyRequest{Policy: &v1.Policy{Name: "all", Enabled: true, Rules: []*v1.PolicyRule{{
		Action: v1.PolicyAction_POLICY_ACTION_ALLOW, Protocol: v1.Protocol_PROTOCOL_ANY,
		Sources: []*v1.PolicyTarget{{Target: &v1.PolicyTarget_Any{Any: true}}}, Destinations: []*v1.PolicyTarget{{Target: &v1.PolicyTarget_Tag{Tag: "web"}}},
	}}}})); err != nil {
		t.Fatal(err)
	}
	r, err := c.node.CreateStaticPeer(ctx, connect.NewRequest(&v1.CreateStaticPeerRequest{CvlanId: cvID, Name: "printer", Routes: []string{"192.168.7.0/24"}}))
	if err != nil {
		t.Fatal(err)
	}
	n := r.Msg.GetNode()
	conf := r.Msg.GetWgQuickConfig()
	priv := ""
	for _, line := range strings.Split(conf, "\n") {
		if v, ok := strings.CutPrefix(line, "PrivateKey = "); ok {
			priv = v
		}
	}
	if n.GetKind() != v1.NodeKind_NODE_KIND_STATIC_PEER || n.GetIpv4Address() == "" || len(priv) != 44 {
		t.Fatalf("node %v config:\n%s", n, conf)
	}
	if !strings.Contains(conf, "Address = "+n.GetIpv4Address()+"/32") || !strings.Contains(conf, "PublicKey = "+other.Msg.GetNode().GetWireguardPublicKey()) ||
		!strings.Contains(conf, "Endpoint = 203.0.113.7:51820") {
		t.Fatalf("config misses its address or its policy peer:\n%s", conf)
	}
	if pub, err := publicOf(priv); err != nil || pub != n.GetWireguardPublicKey() {
		t.Fatalf("private key does not match the public key: %v", err)
	}
	// The private key is stored nowhere: not in the database file, its WAL, or any row.
	_ = st.Close()
	st = openStoreAt(t, filepath.Join(dir, "cvlan.db"))
	ents, _ := os.ReadDir(dir)
	for _, ent := range ents {
		b, err := os.ReadFile(filepath.Join(dir, ent.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(b, []byte(priv)) {
			t.Fatalf("private key found in %s", ent.Name())
		}
	}
	e2 := newEnvFrom(t, st, e, &Deps{Revoker: rev})
	c = e2.clients(e2.keyFor(t, tid, domain.RoleOperator), false)
	gc, err := c.node.GetStaticPeerConfig(ctx, connect.NewRequest(&v1.GetStaticPeerConfigRequest{Id: n.GetId()}))
	if err != nil || !strings.Contains(gc.Msg.GetWgQuickConfig(), "PrivateKey = <PRIVATE_KEY>") || strings.Contains(gc.Msg.GetWgQuickConfig(), priv) {
		t.Fatalf("GetStaticPeerConfig: %v\n%s", err, gc.Msg.GetWgQuickConfig())
	}
	// Quarantine revokes the identity; twice is FailedPrecondition.
	q, err := c.node.QuarantineNode(ctx, connect.NewRequest(&v1.QuarantineNodeRequest{Id: n.GetId(), Reason: "stolen", Etag: n.GetEtag()}))
	if err != nil || q.Msg.GetNode().GetStatus() != v1.NodeStatus_NODE_STATUS_QUARANTINED {
		t.Fatalf("quarantine: %v", err)
	}
	if got := <-rev.ch; got != n.GetId() {
		t.Fatalf("revoked %s", got)
	}
	if _, err := c.node.QuarantineNode(ctx, connect.NewRequest(&v1.QuarantineNodeRequest{Id: n.GetId(), Reason: "again"})); code(err) != connect.CodeFailedPrecondition {
		t.Fatalf("second quarantine: %v", err)
	}
	if _, err := c.node.DeleteNode(ctx, connect.NewRequest(&v1.DeleteNodeRequest{Id: n.GetId(), Etag: n.GetEtag()})); code(err) != connect.CodeAborted {
		t.Fatalf("delete with stale etag: %v", err)
	}
	if _, err := c.node.DeleteNode(ctx, connect.NewRequest(&v1.DeleteNodeRequest{Id: n.GetId()})); err != nil {
		t.Fatal(err)
	}
	if got := <-rev.ch; got != n.GetId() {
		t.Fatalf("revoked %s", got)
	}
}

func TestExportAuditLogs(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "sqlite")
	tid := e.newTenant(t, "acme")
	c := e.clients(e.keyFor(t, tid, domain.RoleViewer), true)
	admin := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), false)
	for i := range 5 {
		if _, err := admin.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: fmt.Sprintf("n%d", i)}})); err != nil {
			t.Fatal(err)
		}
	}
	read := func(f v1.ExportFormat) []byte {
		s, err := c.audit.ExportAuditLogs(ctx, connect.NewRequest(&v1.ExportAuditLogsRequest{Format: f, Action: "cvlan.*"}))
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		for s.Receive() {
			b.Write(s.Msg().GetData())
		}
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	sc := bufio.NewScanner(bytes.NewReader(read(v1.ExportFormat_EXPORT_FORMAT_JSONL)))
	var names []string
	for sc.Scan() {
		var m struct {
			Action string `json:"action"`
			After  struct {
				Name string `json:"name"`
			} `json:"after"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		names = append(names, m.After.Name)
	}
	if strings.Join(names, ",") != "n0,n1,n2,n3,n4" {
		t.Fatalf("JSONL export (oldest first) gave %v", names)
	}
	recs, err := csv.NewReader(bytes.NewReader(read(v1.ExportFormat_EXPORT_FORMAT_CSV))).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 6 || recs[0][5] != "action" || recs[1][5] != "cvlan.create" || !strings.Contains(recs[5][11], `"n4"`) {
		t.Fatalf("CSV export: %v", recs)
	}
}

func TestWatchEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	e := newEnv(t, "sqlite", WithHeartbeat(100*time.Millisecond))
	red, blue := e.newTenant(t, "red"), e.newTenant(t, "blue")
	redC := e.clients(e.keyFor(t, red, domain.RoleTenantAdmin), false)
	blueC := e.clients(e.keyFor(t, blue, domain.RoleViewer), true)
	blueAdmin := e.clients(e.keyFor(t, blue, domain.RoleTenantAdmin), false)
	// A viewer and a tenant_admin of blue watch; only the admin may read API keys.
	watch := func(c *clients) *connect.ServerStreamForClient[v1.WatchEventsResponse] {
		s, err := c.events.WatchEvents(ctx, connect.NewRequest(&v1.WatchEventsRequest{}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		if !s.Receive() {
			t.Fatal(s.Err())
		}
		return s
	}
	s, sa := watch(blueC), watch(blueAdmin)
	// A change of another tenant must not arrive, nor a tenantless join token (a shared
	// relay's, readable only in the all-tenants scope); ours must.
	if _, err := redC.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "secret"}})); err != nil {
		t.Fatal(err)
	}
	if err := e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		return tx.CreateJoinToken(ctx, &domain.JoinToken{Hash: []byte("shared-relay-token"), Kind: domain.NodeKindRelay, ExpireTime: time.Now().Add(time.Hour)})
	}); err != nil {
		t.Fatal(err)
	}
	cr, err := blueAdmin.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "mine"}}))
	if err != nil {
		t.Fatal(err)
	}
	sp, err := blueAdmin.node.CreateStaticPeer(ctx, connect.NewRequest(&v1.CreateStaticPeerRequest{CvlanId: cr.Msg.GetCvlan().GetId(), Name: "dev"}))
	if err != nil {
		t.Fatal(err)
	}
	// Users, API keys and join tokens are in the feed too (ids only: never a secret or hash).
	u, err := blueAdmin.user.CreateUser(ctx, connect.NewRequest(&v1.CreateUserRequest{User: &v1.User{Email: "w@blue.example", Role: v1.UserRole_USER_ROLE_VIEWER}}))
	if err != nil {
		t.Fatal(err)
	}
	k, err := blueAdmin.key.CreateApiKey(ctx, connect.NewRequest(&v1.CreateApiKeyRequest{ApiKey: &v1.ApiKey{Name: "ci", Role: v1.UserRole_USER_ROLE_VIEWER, Scopes: []v1.ApiScope{v1.ApiScope_API_SCOPE_READ}}}))
	if err != nil {
		t.Fatal(err)
	}
	jt, err := blueAdmin.token.CreateJoinToken(ctx, connect.NewRequest(&v1.CreateJoinTokenRequest{JoinToken: &v1.JoinToken{Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: cr.Msg.GetCvlan().GetId()}}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := blueAdmin.token.DeleteJoinToken(ctx, connect.NewRequest(&v1.DeleteJoinTokenRequest{Id: jt.Msg.GetJoinToken().GetId()})); err != nil {
		t.Fatal(err)
	}
	if _, err := blueAdmin.user.DeleteUser(ctx, connect.NewRequest(&v1.DeleteUserRequest{Id: u.Msg.GetUser().GetId()})); err != nil {
		t.Fatal(err)
	}
	type want struct {
		rt v1.ResourceType
		id string
		et v1.EventType
	}
	var (
		created, deleted = v1.EventType_EVENT_TYPE_CREATED, v1.EventType_EVENT_TYPE_DELETED
		cvlanEv          = want{v1.ResourceType_RESOURCE_TYPE_CVLAN, cr.Msg.GetCvlan().GetId(), created}
		nodeEv           = want{v1.ResourceType_RESOURCE_TYPE_NODE, sp.Msg.GetNode().GetId(), created}
		userC            = want{v1.ResourceType_RESOURCE_TYPE_USER, u.Msg.GetUser().GetId(), created}
		keyC             = want{v1.ResourceType_RESOURCE_TYPE_API_KEY, k.Msg.GetApiKey().GetId(), created}
		tokC             = want{v1.ResourceType_RESOURCE_TYPE_JOIN_TOKEN, jt.Msg.GetJoinToken().GetId(), created}
		tokD             = want{v1.ResourceType_RESOURCE_TYPE_JOIN_TOKEN, jt.Msg.GetJoinToken().GetId(), deleted}
		userD            = want{v1.ResourceType_RESOURCE_TYPE_USER, u.Msg.GetUser().GetId(), deleted}
	)
	expect := func(who string, s *connect.ServerStreamForClient[v1.WatchEventsResponse], ws ...want) []*v1.Event {
		t.Helper()
		var got []*v1.Event
		for len(got) < len(ws) && s.Receive() {
			ev := s.Msg().GetEvent()
			if ev.GetEventType() == v1.EventType_EVENT_TYPE_HEARTBEAT {
				continue
			}
			i := len(got)
			if ev.GetTenantId() != blue {
				t.Fatalf("%s: event of another tenant: %v", who, ev)
			}
			if g := (want{ev.GetResourceType(), ev.GetResourceId(), ev.GetEventType()}); g != ws[i] {
				t.Fatalf("%s: event %d = %v, want %v", who, i, ev, ws[i])
			}
			got = append(got, ev)
		}
		if len(got) < len(ws) {
			t.Fatalf("%s: stream ended after %d events: %v", who, len(got), s.Err())
		}
		for _, ev := range got {
			switch ev.GetResourceType() {
			case v1.ResourceType_RESOURCE_TYPE_USER, v1.ResourceType_RESOURCE_TYPE_API_KEY, v1.ResourceType_RESOURCE_TYPE_JOIN_TOKEN:
				if ev.GetPayload() != nil || (ev.GetEventType() == created && ev.GetEtag() != "v1") {
					t.Fatalf("%s: credential event with payload or without etag: %v", who, ev)
				}
			}
		}
		return got
	}
	// The viewer gets everything but the API key (it cannot read keys).
	got := expect("viewer", s, cvlanEv, nodeEv, userC, tokC, tokD, userD)
	if got[0].GetEtag() != "v1" {
		t.Fatalf("first event %v", got[0])
	}
	if got[1].GetNode().GetId() != sp.Msg.GetNode().GetId() {
		t.Fatalf("node event without payload: %v", got[1])
	}
	expect("tenant_admin", sa, cvlanEv, nodeEv, userC, keyC, tokC, tokD, userD)
	// A status-only write (what agents report: no network map changes) arrives as an update of
	// the node, with the new status in the payload.
	nodeID := sp.Msg.GetNode().GetId()
	err = e.st.Tx(ctx, store.TenantScope(blue), func(tx store.Tx) error {
		n, err := tx.GetNode(ctx, nodeID)
		if err != nil {
			return err
		}
		n.Sync.State = domain.SyncFailed
		n.Conflict = &domain.NodeConflict{DetectTime: time.Now(), Addresses: []string{"192.0.2.1:1", "192.0.2.2:2"}, Active: true}
		return tx.UpdateNodeStatus(ctx, n, true)
	})
	if err != nil {
		t.Fatal(err)
	}
	var st *v1.Event
	for st == nil && s.Receive() {
		if ev := s.Msg().GetEvent(); ev.GetEventType() != v1.EventType_EVENT_TYPE_HEARTBEAT {
			st = ev
		}
	}
	if st.GetEventType() != v1.EventType_EVENT_TYPE_UPDATED || st.GetResourceType() != v1.ResourceType_RESOURCE_TYPE_NODE ||
		st.GetNode().GetSync().GetState() != v1.NodeSyncState_NODE_SYNC_STATE_FAILED || !st.GetNode().GetConflict().GetActive() ||
		len(st.GetNode().GetConflict().GetAddresses()) != 2 {
		t.Fatalf("status event %v", st)
	}
	// A vrouter's reported connection states (same version) arrive as an update of the vrouter
	// whose etag is still the one of its creation.
	vr := &domain.VRouter{TenantID: blue, CvlanID: cr.Msg.GetCvlan().GetId(), Name: "gw", Connections: []domain.VRouterConnection{{Name: "hq", RemoteAddress: "192.0.2.9"}}}
	if err := e.st.Tx(ctx, store.TenantScope(blue), func(tx store.Tx) error { return tx.CreateVRouter(ctx, vr) }); err != nil {
		t.Fatal(err)
	}
	expect("viewer", s, want{v1.ResourceType_RESOURCE_TYPE_VROUTER, vr.ID, created})
	err = e.st.Tx(ctx, store.TenantScope(blue), func(tx store.Tx) error {
		v, err := tx.GetVRouter(ctx, vr.ID)
		if err != nil {
			return err
		}
		v.Status, v.Connections[0].Status = domain.VRouterOnline, "up"
		return tx.UpdateVRouterStatus(ctx, v, true)
	})
	if err != nil {
		t.Fatal(err)
	}
	got = expect("viewer", s, want{v1.ResourceType_RESOURCE_TYPE_VROUTER, vr.ID, v1.EventType_EVENT_TYPE_UPDATED})
	if g := got[0].GetVrouter(); got[0].GetEtag() != "v1" || g.GetEtag() != "v1" || g.GetStatus() != v1.VRouterStatus_V_ROUTER_STATUS_ONLINE ||
		g.GetConnections()[0].GetStatus() != v1.VRouterConnectionStatus_V_ROUTER_CONNECTION_STATUS_UP {
		t.Fatalf("vrouter status event %v", got[0])
	}
	// A relay's status write (offline marking, report with unchanged addresses) arrives as an
	// update of the relay, whose etag is still the one of its creation.
	rl := &domain.Relay{TenantID: blue, Name: "relay-blue", Addresses: []string{"192.0.2.10:443"}}
	if err := e.st.Tx(ctx, store.TenantScope(blue), func(tx store.Tx) error { return tx.CreateRelay(ctx, rl) }); err != nil {
		t.Fatal(err)
	}
	expect("viewer", s, want{v1.ResourceType_RESOURCE_TYPE_RELAY, rl.ID, created})
	err = e.st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error {
		r, err := tx.GetRelay(ctx, rl.ID)
		if err != nil {
			return err
		}
		r.Status, r.Stats.ConnectedClients = domain.RelayOffline, 7
		return tx.UpdateRelayStatus(ctx, r, true)
	})
	if err != nil {
		t.Fatal(err)
	}
	got = expect("viewer", s, want{v1.ResourceType_RESOURCE_TYPE_RELAY, rl.ID, v1.EventType_EVENT_TYPE_UPDATED})
	if g := got[0].GetRelay(); got[0].GetEtag() != "v1" || g.GetEtag() != "v1" || g.GetStatus() != v1.RelayStatus_RELAY_STATUS_OFFLINE ||
		g.GetStats().GetConnectedClients() != 7 {
		t.Fatalf("relay status event %v", got[0])
	}
	if _, err := blueC.events.WatchEvents(ctx, connect.NewRequest(&v1.WatchEventsRequest{AllTenants: true})); err == nil {
		// A server stream reports its error on the first Receive.
	}
	s2, _ := blueC.events.WatchEvents(ctx, connect.NewRequest(&v1.WatchEventsRequest{AllTenants: true}))
	if s2.Receive() || code(s2.Err()) != connect.CodePermissionDenied {
		t.Fatalf("all_tenants as viewer: %v", s2.Err())
	}
	s2.Close()
}

func TestCreateRateLimit(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "sqlite", WithCreateRateLimit(rate.Every(time.Hour), 3))
	tid := e.newTenant(t, "acme")
	c := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), false)
	cv, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "net"}}))
	if err != nil {
		t.Fatal(err)
	}
	req := &v1.CreateJoinTokenRequest{JoinToken: &v1.JoinToken{Kind: v1.JoinTokenKind_JOIN_TOKEN_KIND_NODE, CvlanId: cv.Msg.GetCvlan().GetId()}}
	for i := range 3 {
		if _, err := c.token.CreateJoinToken(ctx, connect.NewRequest(req)); err != nil {
			t.Fatalf("token %d: %v", i, err)
		}
	}
	if _, err := c.token.CreateJoinToken(ctx, connect.NewRequest(req)); code(err) != connect.CodeResourceExhausted {
		t.Fatalf("4th token: %v", err)
	}
	// Another principal has its own bucket.
	c2 := e.clients(e.keyFor(t, tid, domain.RoleOperator), false)
	if _, err := c2.token.CreateJoinToken(ctx, connect.NewRequest(req)); err != nil {
		t.Fatal(err)
	}
}

func TestBootstrapOnceAndKeys(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "sqlite", noLimit)
	if s, created, err := auth.Bootstrap(ctx, e.st); err != nil || created || s != "" {
		t.Fatalf("second bootstrap: %q %v %v", s, created, err)
	}
	c := e.clients(e.admin, true)
	w, err := c.auth.WhoAmI(ctx, connect.NewRequest(&v1.WhoAmIRequest{}))
	if err != nil || w.Msg.GetRole() != v1.UserRole_USER_ROLE_SUPER_ADMIN || w.Msg.GetTenantName() != auth.SystemTenantName {
		t.Fatalf("whoami %v %v", w, err)
	}
	tid := e.newTenant(t, "acme")
	ta := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), false)
	// Deployment-wide changes are audited where someone can read them: the tenant's creation in
	// the tenant, a region in the system tenant (super_admin's own).
	if _, err := c.region.CreateRegion(ctx, connect.NewRequest(&v1.CreateRegionRequest{Region: &v1.Region{Name: "paris", Code: "eu-west"}})); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		c      *clients
		action string
	}{{ta, "tenant.create"}, {c, "region.create"}} {
		al, err := x.c.audit.ListAuditLogs(ctx, connect.NewRequest(&v1.ListAuditLogsRequest{Action: x.action}))
		if err != nil || len(al.Msg.GetAuditLogs()) != 1 {
			t.Fatalf("audit of %s: %v %v", x.action, al, err)
		}
	}
	// A key above its creator's role is refused.
	if _, err := ta.key.CreateApiKey(ctx, connect.NewRequest(&v1.CreateApiKeyRequest{ApiKey: &v1.ApiKey{Name: "up", Role: v1.UserRole_USER_ROLE_SUPER_ADMIN, Scopes: []v1.ApiScope{v1.ApiScope_API_SCOPE_READ}}})); code(err) != connect.CodePermissionDenied {
		t.Fatalf("escalation: %v", err)
	}
	kr, err := ta.key.CreateApiKey(ctx, connect.NewRequest(&v1.CreateApiKeyRequest{ApiKey: &v1.ApiKey{Name: "ro", Role: v1.UserRole_USER_ROLE_OPERATOR, Scopes: []v1.ApiScope{v1.ApiScope_API_SCOPE_READ}}}))
	if err != nil || !strings.HasPrefix(kr.Msg.GetSecret(), "cvk_") {
		t.Fatalf("create key: %v", err)
	}
	ro := e.clients(kr.Msg.GetSecret(), false)
	if _, err := ro.cvlan.ListCvlans(ctx, connect.NewRequest(&v1.ListCvlansRequest{})); err != nil {
		t.Fatalf("read with read scope: %v", err)
	}
	// Operator role, but only the read scope: writes are refused.
	if _, err := ro.node.DeleteNode(ctx, connect.NewRequest(&v1.DeleteNodeRequest{Id: "0190f5a4-0000-7000-8000-000000000000"})); code(err) != connect.CodePermissionDenied {
		t.Fatalf("write with read scope: %v", err)
	}
	if _, err := ta.key.RevokeApiKey(ctx, connect.NewRequest(&v1.RevokeApiKeyRequest{Id: kr.Msg.GetApiKey().GetId()})); err != nil {
		t.Fatal(err)
	}
	if _, err := ro.cvlan.ListCvlans(ctx, connect.NewRequest(&v1.ListCvlansRequest{})); code(err) != connect.CodeUnauthenticated {
		t.Fatalf("revoked key: %v", err)
	}
	if _, err := e.clients("cvk_"+strings.Repeat("x", 43), false).cvlan.ListCvlans(ctx, connect.NewRequest(&v1.ListCvlansRequest{})); code(err) != connect.CodeUnauthenticated {
		t.Fatalf("unknown key: %v", err)
	}
}

func TestDeleteTenant(t *testing.T) {
	for _, kind := range storeKinds {
		t.Run(kind, func(t *testing.T) {
			ctx := context.Background()
			rev := &revocations{ch: make(chan string, 4)}
			e := newEnvWith(t, openStore(t, kind), &Deps{Revoker: rev})
			tid := e.newTenant(t, "doomed")
			c := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), false)
			cv, err := c.cvlan.CreateCvlan(ctx, connect.NewRequest(&v1.CreateCvlanRequest{Cvlan: &v1.Cvlan{Name: "net"}}))
			if err != nil {
				t.Fatal(err)
			}
			sp, err := c.node.CreateStaticPeer(ctx, connect.NewRequest(&v1.CreateStaticPeerRequest{CvlanId: cv.Msg.GetCvlan().GetId(), Name: "p"}))
			if err != nil {
				t.Fatal(err)
			}
			admin := e.clients(e.admin, true)
			if _, err := admin.tenant.DeleteTenant(ctx, connect.NewRequest(&v1.DeleteTenantRequest{Id: tid})); code(err) != connect.CodeFailedPrecondition {
				t.Fatalf("delete without force: %v", err)
			}
			if _, err := admin.tenant.DeleteTenant(ctx, connect.NewRequest(&v1.DeleteTenantRequest{Id: e.sysTID, Force: true})); code(err) != connect.CodeFailedPrecondition {
				t.Fatalf("deleting the system tenant: %v", err)
			}
			if _, err := admin.tenant.DeleteTenant(ctx, connect.NewRequest(&v1.DeleteTenantRequest{Id: tid, Force: true})); err != nil {
				t.Fatal(err)
			}
			if got := <-rev.ch; got != sp.Msg.GetNode().GetId() {
				t.Fatalf("revoked %s", got)
			}
			if _, err := admin.tenant.GetTenant(ctx, connect.NewRequest(&v1.GetTenantRequest{Id: tid})); code(err) != connect.CodeNotFound {
				t.Fatalf("deleted tenant: %v", err)
			}
		})
	}
}

// TestListFiltersPaged proves that the List filters are applied by the store, not to each page:
// with page_size 2, every page but the last is full and total_size counts the matches only.
func TestListFiltersPaged(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "sqlite", noLimit)
	tid := e.newTenant(t, "acme")
	c := e.clients(e.keyFor(t, tid, domain.RoleTenantAdmin), false)
	var revoked []string
	for i := range 9 {
		k, err := c.key.CreateApiKey(ctx, connect.NewRequest(&v1.CreateApiKeyRequest{ApiKey: &v1.ApiKey{
			Name: fmt.Sprintf("ci-%d", i), Role: v1.UserRole_USER_ROLE_VIEWER, Scopes: []v1.ApiScope{v1.ApiScope_API_SCOPE_READ}}}))
		if err != nil {
			t.Fatal(err)
		}
		// Other audited actions in between, so that an unfiltered page holds non-matching rows.
		if _, err := c.tag.CreateTag(ctx, connect.NewRequest(&v1.CreateTagRequest{Tag: &v1.Tag{Name: fmt.Sprintf("t%d", i)}})); err != nil {
			t.Fatal(err)
		}
		if i%3 == 1 {
			if _, err := c.key.RevokeApiKey(ctx, connect.NewRequest(&v1.RevokeApiKeyRequest{Id: k.Msg.GetApiKey().GetId()})); err != nil {
				t.Fatal(err)
			}
			revoked = append(revoked, k.Msg.GetApiKey().GetName())
		}
	}
	// pages lists every page and returns the items' names, checking page sizes and totals.
	pages := func(what string, list func(tok string) (names []string, next string, total int32, err error)) []string {
		t.Helper()
		var all []string
		tok := ""
		for {
			names, next, total, err := list(tok)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			all = append(all, names...)
			if next == "" {
				if len(names) == 0 || int(total) != len(all) {
					t.Fatalf("%s: last page %v, total_size %d, listed %d", what, names, total, len(all))
				}
				return all
			}
			if len(names) != 2 {
				t.Fatalf("%s: short page %v before the last", what, names)
			}
			tok = next
		}
	}
	got := pages("revoked keys", func(tok string) ([]string, string, int32, error) {
		r, err := c.key.ListApiKeys(ctx, connect.NewRequest(&v1.ListApiKeysRequest{
			Status: v1.ApiKeyStatus_API_KEY_STATUS_REVOKED, PageSize: 2, PageToken: tok}))
		if err != nil {
			return nil, "", 0, err
		}
		var names []string
		for _, k := range r.Msg.GetApiKeys() {
			if k.GetStatus() != v1.ApiKeyStatus_API_KEY_STATUS_REVOKED {
				t.Fatalf("listed %v", k)
			}
			names = append(names, k.GetName())
		}
		return names, r.Msg.GetNextPageToken(), r.Msg.GetTotalSize(), nil
	})
	if !slices.Equal(got, revoked) {
		t.Fatalf("revoked keys %v, want %v", got, revoked)
	}
	got = pages("api_key.* audit", func(tok string) ([]string, string, int32, error) {
		r, err := c.audit.ListAuditLogs(ctx, connect.NewRequest(&v1.ListAuditLogsRequest{Action: "api_key.*", PageSize: 2, PageToken: tok}))
		if err != nil {
			return nil, "", 0, err
		}
		var names []string
		for _, a := range r.Msg.GetAuditLogs() {
			names = append(names, a.GetAction())
		}
		return names, r.Msg.GetNextPageToken(), r.Msg.GetTotalSize(), nil
	})
	if len(got) != 9+len(revoked) {
		t.Fatalf("api_key.* audit entries %v", got)
	}
	for _, a := range got {
		if !strings.HasPrefix(a, "api_key.") {
			t.Fatalf("api_key.* audit entries %v", got)
		}
	}
}
