package api

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"

	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
)

// invalid returns an InvalidArgument error for checks protovalidate cannot express.
func invalid(format string, args ...any) error {
	return connect.NewError(connect.CodeInvalidArgument, fmt.Errorf(format, args...))
}

// toConnect is the ONE place that maps domain sentinel errors to connect codes. Errors that are
// already connect errors pass through; anything unknown becomes Internal without its text, so
// that store details never reach a client.
func (s *server) toConnect(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	var ce *connect.Error
	if errors.As(err, &ce) {
		return err
	}
	code := connect.CodeInternal
	switch {
	case errors.Is(err, domain.ErrNotFound):
		code = connect.CodeNotFound
	case errors.Is(err, domain.ErrAlreadyExists):
		code = connect.CodeAlreadyExists
	case errors.Is(err, domain.ErrConflict):
		code = connect.CodeAborted
	case errors.Is(err, domain.ErrExhausted):
		code = connect.CodeResourceExhausted
	case errors.Is(err, domain.ErrFailedPrecondition), errors.Is(err, domain.ErrTokenUsed),
		errors.Is(err, domain.ErrTokenExpired), errors.Is(err, domain.ErrTokenRevoked):
		code = connect.CodeFailedPrecondition
	case errors.Is(err, domain.ErrPermissionDenied):
		code = connect.CodePermissionDenied
	case errors.Is(err, domain.ErrInvalid):
		code = connect.CodeInvalidArgument
	case errors.Is(err, context.Canceled):
		code = connect.CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		code = connect.CodeDeadlineExceeded
	}
	if code == connect.CodeInternal {
		s.log.ErrorContext(ctx, "internal error", "err", err)
		return connect.NewError(code, errors.New("internal error"))
	}
	return connect.NewError(code, err)
}
