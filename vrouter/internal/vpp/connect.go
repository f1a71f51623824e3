package vpp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"go.fd.io/govpp/adapter/socketclient"
	"go.fd.io/govpp/api"
	"go.fd.io/govpp/binapi/vpe"
	"go.fd.io/govpp/core"
)

// DefaultSocket is where VPP serves its binary API unless startup.conf says otherwise
// (socksvr { socket-name ... }).
const DefaultSocket = socketclient.DefaultSocketName

// Connect dials VPP's binary API socket (DefaultSocket when socketPath is empty) and checks that VPP
// answers show_version, returning the connection and a func that disconnects. When VPP is not there the
// error says so and names the socket.
func Connect(ctx context.Context, socketPath string) (api.Connection, func(), error) {
	if socketPath == "" {
		socketPath = DefaultSocket
	}
	if _, err := os.Stat(socketPath); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, fmt.Errorf("vpp: no VPP API socket at %s (is VPP running, with socksvr enabled?)", socketPath)
		}
		return nil, nil, fmt.Errorf("vpp: VPP API socket %s: %w", socketPath, err)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("vpp: connect to %s: %w", socketPath, err)
	}
	conn, err := core.Connect(socketclient.NewVppClient(socketPath))
	if err != nil {
		return nil, nil, fmt.Errorf("vpp: connect to VPP API socket %s: %w", socketPath, err)
	}
	disconnect := func() { conn.Disconnect() }
	reply := &vpe.ShowVersionReply{}
	if err := conn.Invoke(ctx, &vpe.ShowVersion{}, reply); err != nil {
		disconnect()
		return nil, nil, fmt.Errorf("vpp: VPP at %s does not answer show_version: %w", socketPath, err)
	}
	if reply.Retval != 0 {
		disconnect()
		return nil, nil, fmt.Errorf("vpp: VPP at %s: show_version: %w", socketPath, api.RetvalToVPPApiError(reply.Retval))
	}
	return conn, disconnect, nil
}
