// Command cvlan-relay forwards WireGuard ciphertext between CloudVLAN nodes
// that cannot reach each other directly, answers STUN so that nodes learn
// their public endpoints, and meshes with the other relays of its region.
//
// Usage:
//
//	cvlan-relay --cert relay.crt --key relay.key --ca roots.pem \
//	    --listen :443 --stun-listen :3478 --admin-listen 127.0.0.1:9090 \
//	    --region eu-west --mesh-peer https://relay2.example.com/relay
//
// The certificate must be a relay certificate of the trust domain
// (spiffe://<td>/relay/<id>, or spiffe://<td>/tenant/<t>/relay/<id> for a
// tenant's own relay). It is re-read when the files change, so renewals need
// no restart. SIGINT or SIGTERM stops the relay: clients are told to
// reconnect (Restarting frame) and every connection is closed.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stderr, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "cvlan-relay:", err)
		os.Exit(1)
	}
}
