package apidesc

import (
	"slices"
	"testing"

	"google.golang.org/protobuf/reflect/protoreflect"
)

func TestServices(t *testing.T) {
	tests := []struct {
		pkg  string
		want []string
	}{
		{"cloudvlan.node.v1", []string{"cloudvlan.node.v1.ControlService", "cloudvlan.node.v1.EnrollmentService"}},
		{"cloudvlan.relay.v1", []string{"cloudvlan.relay.v1.RelayControlService"}},
		{"cloudvlan.vrouter.v1", []string{"cloudvlan.vrouter.v1.VRouterControlService"}},
		{"cloudvlan.nosuch.v1", nil},
	}
	for _, tt := range tests {
		got := Services(protoreflect.FullName(tt.pkg))
		if !slices.Equal(got, tt.want) {
			t.Errorf("Services(%s) = %v, want %v", tt.pkg, got, tt.want)
		}
	}
	if got := Services(UserAPI); !slices.Contains(got, "cloudvlan.v1.TenantService") {
		t.Errorf("Services(cloudvlan.v1) = %v, want it to contain cloudvlan.v1.TenantService", got)
	}
}
