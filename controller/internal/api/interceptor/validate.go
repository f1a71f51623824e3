package interceptor

import (
	"context"
	"errors"
	"fmt"

	"buf.build/go/protovalidate"
	"connectrpc.com/connect"
	"google.golang.org/protobuf/proto"
)

// Validate checks every unary request (and every message a client streams) against the
// protovalidate rules declared in the protos. A violation gives InvalidArgument carrying the
// buf.validate.Violations message (every violated field) as an error detail.
func Validate(v protovalidate.Validator) connect.Interceptor {
	check := func(msg any) error {
		m, ok := msg.(proto.Message)
		if !ok {
			return nil
		}
		err := v.Validate(m)
		if err == nil {
			return nil
		}
		var ve *protovalidate.ValidationError
		if !errors.As(err, &ve) {
			return connect.NewError(connect.CodeInternal, fmt.Errorf("validate: %w", err))
		}
		cerr := connect.NewError(connect.CodeInvalidArgument, err)
		if d, derr := connect.NewErrorDetail(ve.ToProto()); derr == nil {
			cerr.AddDetail(d)
		}
		return cerr
	}
	return funcs{
		unary: func(next connect.UnaryFunc) connect.UnaryFunc {
			return func(ctx context.Context, req connect.AnyRequest) (connect.AnyResponse, error) {
				if !req.Spec().IsClient {
					if err := check(req.Any()); err != nil {
						return nil, err
					}
				}
				return next(ctx, req)
			}
		},
		stream: func(next connect.StreamingHandlerFunc) connect.StreamingHandlerFunc {
			return func(ctx context.Context, conn connect.StreamingHandlerConn) error {
				return next(ctx, &validatingConn{StreamingHandlerConn: conn, check: check})
			}
		},
	}
}

type validatingConn struct {
	connect.StreamingHandlerConn
	check func(any) error
}

func (c *validatingConn) Receive(msg any) error {
	if err := c.StreamingHandlerConn.Receive(msg); err != nil {
		return err
	}
	return c.check(msg)
}
