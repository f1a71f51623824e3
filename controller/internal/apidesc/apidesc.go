// Package apidesc lists the protobuf services the controller serves, read from the generated
// descriptors, so that reflection and health never drift from proto/.
package apidesc

import (
	"sort"

	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	// Register the descriptors of every package the controller serves.
	_ "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/node/v1"
	_ "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/relay/v1"
	_ "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/v1"
	_ "github.com/cloudvlan/cloudvlan/gen/go/cloudvlan/vrouter/v1"
)

// Package names of the APIs, by port.
const (
	// UserAPI is served on the API port (:8443).
	UserAPI protoreflect.FullName = "cloudvlan.v1"
	// NodeAPI, RelayAPI and VRouterAPI are served on the node port (:8444).
	NodeAPI    protoreflect.FullName = "cloudvlan.node.v1"
	RelayAPI   protoreflect.FullName = "cloudvlan.relay.v1"
	VRouterAPI protoreflect.FullName = "cloudvlan.vrouter.v1"
)

// Services returns the sorted full names of every service declared in the given packages.
func Services(packages ...protoreflect.FullName) []string {
	var names []string
	for _, pkg := range packages {
		protoregistry.GlobalFiles.RangeFilesByPackage(pkg, func(fd protoreflect.FileDescriptor) bool {
			for i := 0; i < fd.Services().Len(); i++ {
				names = append(names, string(fd.Services().Get(i).FullName()))
			}
			return true
		})
	}
	sort.Strings(names)
	return names
}
