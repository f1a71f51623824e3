// Package domain holds the controller's entity types and the sentinel errors every layer shares.
// It imports only the standard library: the store persists these types, the API layer maps them to
// and from the generated protobuf messages, and the network-map engine reads them.
package domain

import "errors"

// Sentinel errors. Stores and services wrap them with %w and context; the API layer maps them to
// status codes in one place (errors.Is).
var (
	// ErrNotFound: no such resource, or it belongs to a tenant the caller may not see.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: a unique key (name, public key, address, token hash...) is taken.
	ErrAlreadyExists = errors.New("already exists")
	// ErrConflict: the expected version is stale (optimistic concurrency); read again and retry.
	ErrConflict = errors.New("version conflict")
	// ErrExhausted: an address pool or a capacity limit is used up.
	ErrExhausted = errors.New("exhausted")
	// ErrFailedPrecondition: the resource is not in a state that allows the operation (for
	// example deleting a cvlan that still has nodes).
	ErrFailedPrecondition = errors.New("failed precondition")
	// ErrPermissionDenied: the scope may read but not change the resource (shared relays and
	// regions are changed only in the all-tenants scope).
	ErrPermissionDenied = errors.New("permission denied")
	// ErrTokenUsed: a join token has no uses left.
	ErrTokenUsed = errors.New("join token already used")
	// ErrTokenExpired: a join token is past its expiry.
	ErrTokenExpired = errors.New("join token expired")
	// ErrTokenRevoked: a join token was revoked.
	ErrTokenRevoked = errors.New("join token revoked")
	// ErrInvalid: the input is malformed or violates a rule the store checks.
	ErrInvalid = errors.New("invalid argument")
)
