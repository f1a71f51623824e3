package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/cloudvlan/cloudvlan/relay/frame"
	"github.com/cloudvlan/cloudvlan/relay/internal/upgrade"
	"github.com/cloudvlan/cloudvlan/relay/server"
)

func meshWith(urls ...string) func(*server.Config) {
	return func(c *server.Config) { c.MeshPeers = urls }
}

func TestMeshTwoRelays(t *testing.T) {
	e := newEnv(t)
	ln1, ln2 := e.listen(), e.listen()
	u1, u2 := "https://"+ln1.Addr().String()+"/relay", "https://"+ln2.Addr().String()+"/relay"
	r1 := e.startRelay("r1", ln1, meshWith(u2))
	r2 := e.startRelay("r2", ln2, meshWith(u1))
	a := e.connect(r1, "t1", "a", wgKey(1))
	b := e.connect(r2, "t1", "b", wgKey(2))
	evil := e.connect(r2, "t2", "evil", wgKey(3))
	aIn, bIn := recvChan(t, a), recvChan(t, b)

	sendUntil(t, a, b.key, bIn, []byte("a to b across the mesh"))
	sendUntil(t, b, a.key, aIn, []byte("b to a across the mesh"))
	for i := 0; i < 200; i++ {
		if err := a.c.Send(b.key, pkt(i)); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 200; i++ {
		expectFrom(t, bIn, a.key, pkt(i), 5*time.Second)
	}

	// Another tenant on the far relay cannot reach a through the mesh either.
	for i := 0; i < 10; i++ {
		_ = evil.c.Send(a.key, pkt(i))
	}
	sendUntil(t, b, a.key, aIn, []byte("marker"))
	noPacket(t, aIn, 100*time.Millisecond)
	waitFor(t, "cross-tenant drops on r2", func() bool { return r2.srv.Stats().Drops["cross_tenant"] == 10 })

	st1 := r1.srv.Stats()
	if st1.MeshPeersIn != 1 || st1.MeshPeersOut != 1 || st1.RemoteKeys != 2 {
		t.Fatalf("r1 mesh stats: %+v", st1)
	}

	// b leaves: a hears it through r2's presence notice.
	_ = b.c.Close()
	select {
	case k := <-a.gone:
		if k != b.key {
			t.Fatalf("peer gone for %v", k.ShortString())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no peer-gone across the mesh")
	}
}

// TestMeshIsOneHop: r2 meshes with r1 and r3, which do not mesh with each
// other. A packet from r1 for a key on r3 is not relayed through r2, and a
// ForwardPacket that reaches r2 for a key it only knows remotely is dropped.
func TestMeshIsOneHop(t *testing.T) {
	e := newEnv(t)
	ln1, ln2, ln3 := e.listen(), e.listen(), e.listen()
	u1 := "https://" + ln1.Addr().String() + "/relay"
	u2 := "https://" + ln2.Addr().String() + "/relay"
	u3 := "https://" + ln3.Addr().String() + "/relay"
	r1 := e.startRelay("r1", ln1, meshWith(u2))
	r2 := e.startRelay("r2", ln2, meshWith(u1, u3))
	r3 := e.startRelay("r3", ln3, meshWith(u2))
	x := e.connect(r1, "t1", "x", wgKey(1))
	y := e.connect(r2, "t1", "y", wgKey(2))
	z := e.connect(r3, "t1", "z", wgKey(3))
	zIn := recvChan(t, z)
	yIn := recvChan(t, y)
	sendUntil(t, x, y.key, yIn, []byte("one hop works"))
	waitFor(t, "r2 learns z from r3", func() bool { return r2.srv.Stats().RemoteKeys >= 2 })

	// sendUntil's first packets may have been dropped too, before r1 learned y: count from here.
	before := r1.srv.Stats().Drops["unknown_dest"]
	for i := 0; i < 10; i++ {
		_ = x.c.Send(z.key, pkt(i))
	}
	waitFor(t, "r1 drops packets for a key two hops away", func() bool {
		return r1.srv.Stats().Drops["unknown_dest"] == before+10
	})

	// A relay peer pushing a ForwardPacket for z at r2 (which knows z only remotely).
	cert, err := e.ca.Relay("", "rogue")
	if err != nil {
		t.Fatal(err)
	}
	nc, br, err := upgrade.Dial(context.Background(), u2, e.ca.ClientTLS(cert))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, _, err := frame.NewReader(br).ReadFrame(make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	var w [frame.HeaderLen + 2*frame.KeyLen + 4]byte
	frame.PutHeader(w[:], frame.TypeForwardPacket, 2*frame.KeyLen+4)
	copy(w[frame.HeaderLen:], x.key[:])
	copy(w[frame.HeaderLen+frame.KeyLen:], z.key[:])
	copy(w[frame.HeaderLen+2*frame.KeyLen:], "hop2")
	if _, err := nc.Write(w[:]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "r2 drops the second hop", func() bool { return r2.srv.Stats().Drops["mesh_no_route"] == 1 })
	noPacket(t, zIn, 200*time.Millisecond)
}

// TestTenantRelay: a tenant's own relay serves only its tenant and learns
// only its tenant's keys from a shared relay of the region.
func TestTenantRelay(t *testing.T) {
	e := newEnv(t)
	ln1, ln2 := e.listen(), e.listen()
	u1, u2 := "https://"+ln1.Addr().String()+"/relay", "https://"+ln2.Addr().String()+"/relay"
	shared := e.startRelay("shared", ln1, meshWith(u2))
	cert, err := e.ca.Relay("t1", "own")
	if err != nil {
		t.Fatal(err)
	}
	own := e.startRelay("own", ln2, func(c *server.Config) {
		c.MeshPeers = []string{u1}
		c.Certificate = server.StaticCertificate{Cert: &cert}
	})
	a := e.connect(shared, "t1", "a", wgKey(1))
	e.connect(shared, "t2", "other", wgKey(2))
	b := e.connect(own, "t1", "b", wgKey(3))
	bIn, aIn := recvChan(t, b), recvChan(t, a)
	sendUntil(t, a, b.key, bIn, []byte("to the tenant relay"))
	sendUntil(t, b, a.key, aIn, []byte("from the tenant relay"))
	waitFor(t, "tenant relay learns t1 keys only", func() bool { return own.srv.Stats().RemoteKeys == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, _, err := upgrade.Dial(ctx, own.url, e.tlsFor("t2", "intruder", wgKey(4))); err == nil {
		t.Fatal("tenant relay admitted another tenant's node")
	}
}
