package nodeplane

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"connectrpc.com/connect"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
)

// codeOf maps domain, pki and context errors to connect codes: the one place the node port decides
// what a failure means to a caller.
func codeOf(err error) connect.Code {
	var ce *connect.Error
	switch {
	case errors.As(err, &ce):
		return ce.Code()
	case errors.Is(err, domain.ErrTokenUsed), errors.Is(err, domain.ErrTokenExpired), errors.Is(err, domain.ErrTokenRevoked):
		return connect.CodePermissionDenied
	case errors.Is(err, domain.ErrNotFound):
		return connect.CodeNotFound
	case errors.Is(err, domain.ErrAlreadyExists):
		return connect.CodeAlreadyExists
	case errors.Is(err, domain.ErrConflict):
		return connect.CodeAborted
	case errors.Is(err, domain.ErrExhausted):
		return connect.CodeResourceExhausted
	case errors.Is(err, domain.ErrFailedPrecondition):
		return connect.CodeFailedPrecondition
	case errors.Is(err, domain.ErrInvalid),
		errors.Is(err, pki.ErrInvalidCSR), errors.Is(err, pki.ErrCSRSignature), errors.Is(err, pki.ErrUnsupportedKey),
		errors.Is(err, pki.ErrInvalidIdentity), errors.Is(err, pki.ErrInvalidName), errors.Is(err, pki.ErrInvalidTTL),
		errors.Is(err, pki.ErrCSRNames):
		return connect.CodeInvalidArgument
	case errors.Is(err, pki.ErrExternalCA):
		return connect.CodeUnavailable
	case errors.Is(err, pki.ErrNoClientCertificate), errors.Is(err, pki.ErrCertificateExpired),
		errors.Is(err, pki.ErrUntrusted), errors.Is(err, pki.ErrForeignIdentity):
		return connect.CodeUnauthenticated
	case errors.Is(err, context.Canceled):
		return connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return connect.CodeDeadlineExceeded
	}
	return connect.CodeInternal
}

// toConnect wraps err with its code, keeping an existing *connect.Error as it is. Internal errors
// are not shown to the caller in detail.
func toConnect(err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return ce
	}
	code := codeOf(err)
	if code == connect.CodeInternal {
		return connect.NewError(code, errors.New("internal error"))
	}
	return connect.NewError(code, err)
}

func unauthenticated(format string, args ...any) *connect.Error {
	return connect.NewError(connect.CodeUnauthenticated, fmt.Errorf(format, args...))
}

// exhausted is ResourceExhausted with the "retry-after-ms" trailer agents wait for.
func exhausted(what string, retryAfter time.Duration) *connect.Error {
	e := connect.NewError(connect.CodeResourceExhausted, fmt.Errorf("%s; retry after %d ms", what, retryAfter.Milliseconds()))
	e.Meta().Set("retry-after-ms", strconv.FormatInt(retryAfter.Milliseconds(), 10))
	return e
}
