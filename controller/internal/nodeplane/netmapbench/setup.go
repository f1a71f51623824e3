package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cloudvlan/cloudvlan/controller/identity"
	"github.com/cloudvlan/cloudvlan/controller/internal/domain"
	"github.com/cloudvlan/cloudvlan/controller/internal/pki"
	"github.com/cloudvlan/cloudvlan/controller/internal/store"
)

// setupBatch is the number of nodes per bulk insert (one transaction each).
const setupBatch = 2000

// setup creates a tenant, a cvlan, a hub-and-spoke policy, the server nodes and n client nodes with
// their certificates. Client nodes go in with the store's bulk insert, setupBatch per transaction;
// every committed batch is signed at once by one signer per CPU while the next batch is inserted.
func setup(ctx context.Context, st store.Store, ca pki.Authority, n, servers int) (tenant, cvlan string, creds []agentCred, err error) {
	ten := &domain.Tenant{Name: "bench"}
	if err = st.Tx(ctx, store.AllTenants(), func(tx store.Tx) error { return tx.CreateTenant(ctx, ten) }); err != nil {
		return
	}
	cv := &domain.Cvlan{TenantID: ten.ID, Name: "lan", DNSDomain: "bench.test"}
	err = st.Tx(ctx, store.TenantScope(ten.ID), func(tx store.Tx) error {
		if err := tx.CreateCvlan(ctx, cv); err != nil {
			return err
		}
		return tx.CreatePolicy(ctx, &domain.Policy{TenantID: ten.ID, Name: "clients-to-servers", Enabled: true, Rules: []domain.PolicyRule{{
			Action: domain.ActionAllow, Sources: []domain.PolicyTarget{{Tag: "client"}}, Destinations: []domain.PolicyTarget{{Tag: "server"}}, Protocol: domain.ProtocolAny,
		}}})
	})
	if err != nil {
		return
	}
	for i := 0; i < servers; i++ {
		if err = createNode(ctx, st, ten.ID, cv.ID, fmt.Sprintf("server-%d", i), "server", nil); err != nil {
			return
		}
	}

	type batch struct {
		start int
		ids   []string
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan batch, 4)
	var created, signed atomic.Int64
	errs := make(chan error, runtime.NumCPU()+1)
	go func() {
		defer close(batches)
		for start := 0; start < n; start += setupBatch {
			nodes := make([]*domain.Node, 0, setupBatch)
			for i := start; i < min(start+setupBatch, n); i++ {
				nodes = append(nodes, &domain.Node{TenantID: ten.ID, CvlanID: cv.ID, Name: fmt.Sprintf("client-%d", i), Kind: domain.NodeKindNode,
					WireGuardPublicKey: randKey(), Tags: []string{"client"}, Status: domain.NodePending})
			}
			if err := st.Tx(ctx, store.TenantScope(ten.ID), func(tx store.Tx) error { return tx.CreateNodes(ctx, nodes) }); err != nil {
				errs <- fmt.Errorf("create nodes %d-%d: %w", start, start+len(nodes)-1, err)
				cancel()
				return
			}
			b := batch{start: start}
			for _, nd := range nodes {
				b.ids = append(b.ids, nd.ID)
			}
			created.Add(int64(len(nodes)))
			select {
			case batches <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	stopProgress := progressLine(func() string {
		return fmt.Sprintf("setup: %d/%d nodes created, %d/%d certificates signed", created.Load(), n, signed.Load(), n)
	})
	defer stopProgress()

	creds = make([]agentCred, n)
	work := make(chan int, 256)
	var wg sync.WaitGroup
	for w := 0; w < runtime.NumCPU(); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if ctx.Err() != nil {
					continue
				}
				c, err := signAgent(ctx, ca, ten.ID, creds[i].NodeID)
				if err != nil {
					errs <- fmt.Errorf("sign node %d: %w", i, err)
					cancel()
					continue
				}
				creds[i] = c
				signed.Add(1)
			}
		}()
	}
	for b := range batches {
		for j, id := range b.ids {
			creds[b.start+j].NodeID = id
		}
		for j := range b.ids {
			work <- b.start + j
		}
	}
	close(work)
	wg.Wait()
	select {
	case err = <-errs:
		return
	default:
	}
	if err = ctx.Err(); err != nil {
		return
	}
	return ten.ID, cv.ID, creds, nil
}

// signAgent makes an agent's key and has the CA sign its certificate, as enrollment would.
func signAgent(ctx context.Context, ca pki.Authority, tenant, nodeID string) (agentCred, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return agentCred{}, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return agentCred{}, err
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return agentCred{}, err
	}
	var wg [32]byte
	_, _ = rand.Read(wg[:])
	chain, err := ca.Sign(ctx, pki.SignRequest{CSR: csr, ID: identity.ID{TenantID: tenant, Kind: identity.KindNode, ResourceID: nodeID}, WGKey: wg[:]})
	if err != nil {
		return agentCred{}, err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return agentCred{}, err
	}
	c := agentCred{NodeID: nodeID, Key: base64.StdEncoding.EncodeToString(kder)}
	for _, d := range chain.DER() {
		c.Chain = append(c.Chain, base64.StdEncoding.EncodeToString(d))
	}
	return c, nil
}

// progressLine prints line() on standard error every 5 seconds until the returned func is called.
func progressLine(line func() string) func() {
	done := make(chan struct{})
	t0 := time.Now()
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				fmt.Fprintf(os.Stderr, "  ... %s %s\n", time.Since(t0).Round(time.Second), line())
			}
		}
	}()
	var once sync.Once
	return func() { once.Do(func() { close(done) }) }
}
