package api

import (
	"testing"

	"github.com/cloudvlan/cloudvlan/controller/internal/auth"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

func TestMayWatch(t *testing.T) {
	viewer := &auth.Principal{Kind: auth.KindUser, TenantID: "t1", Role: domain.RoleViewer}
	admin := &auth.Principal{Kind: auth.KindUser, TenantID: "t1", Role: domain.RoleTenantAdmin}
	super := &auth.Principal{Kind: auth.KindUser, Role: domain.RoleSuperAdmin}
	ev := func(tenant, kind string) domain.ChangeEvent {
		return domain.ChangeEvent{TenantID: tenant, ResourceType: kind, ResourceID: "x"}
	}
	for _, tt := range []struct {
		name   string
		p      *auth.Principal
		tenant string
		e      domain.ChangeEvent
		want   bool
	}{
		{"own user", viewer, "t1", ev("t1", domain.ResourceUser), true},
		{"own join token", viewer, "t1", ev("t1", domain.ResourceJoinToken), true},
		{"own api key as viewer", viewer, "t1", ev("t1", domain.ResourceAPIKey), false},
		{"own api key as tenant_admin", admin, "t1", ev("t1", domain.ResourceAPIKey), true},
		{"other tenant's user", admin, "t1", ev("t2", domain.ResourceUser), false},
		{"shared relay", viewer, "t1", ev("", domain.ResourceRelay), true},
		{"region", viewer, "t1", ev("", domain.ResourceRegion), true},
		{"tenantless join token", admin, "t1", ev("", domain.ResourceJoinToken), false},
		{"shared relay's node", admin, "t1", ev("", domain.ResourceNode), false},
		{"tenantless join token, all tenants", super, "", ev("", domain.ResourceJoinToken), true},
		{"any tenant's api key, all tenants", super, "", ev("t2", domain.ResourceAPIKey), true},
		{"session", super, "", ev("t1", domain.ResourceSession), false},
	} {
		if got := mayWatch(tt.p, tt.tenant, tt.e); got != tt.want {
			t.Errorf("%s: mayWatch = %v, want %v", tt.name, got, tt.want)
		}
	}
}
