package vpp

import (
	"fmt"
)

// APIError is a VPP reply with a non-zero retval.
type APIError struct {
	// Message is the binapi request name, e.g. "ikev2_profile_add_del".
	Message string
	// Object is what the request was about: "connection \"name\"" or "vrf 42".
	Object string
	// Retval is VPP's return value (a vnet_api_error_t, negative).
	Retval int32
	// Err is govpp's description of Retval.
	Err error
}

func (e *APIError) Error() string {
	return fmt.Sprintf("%s: %s: VPP retval %d: %v", e.Object, e.Message, e.Retval, e.Err)
}

func (e *APIError) Unwrap() error { return e.Err }
