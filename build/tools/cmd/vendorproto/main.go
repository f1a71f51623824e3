// Command vendorproto prints buf/validate/validate.proto back from the descriptor embedded in the
// protovalidate Go package. The BSR is unreachable from our build machines, so this is how
// proto/buf/validate/validate.proto is vendored (see docs/adr/001-protobuf-toolchain.md).
package main

import (
	"fmt"
	"os"

	validatepb "buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/jhump/protoreflect/desc"
	"github.com/jhump/protoreflect/desc/protoprint"
)

func main() {
	fd, err := desc.WrapFile(validatepb.File_buf_validate_validate_proto)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vendorproto: wrap descriptor:", err)
		os.Exit(1)
	}
	p := protoprint.Printer{Compact: false, SortElements: false}
	if err := p.PrintProtoFile(fd, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "vendorproto: print:", err)
		os.Exit(1)
	}
}
