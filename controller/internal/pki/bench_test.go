package pki

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/cloudvlan/cloudvlan/controller/identity"
)

// BenchmarkSign measures embedded signing of a node certificate (CSR check,
// template, ECDSA P-256 signature by step-ca), serially and in parallel.
func BenchmarkSign(b *testing.B) {
	e := newEmbedded(b, b.TempDir())
	req := SignRequest{
		CSR:   csrFor(b, newKey(b), &x509.CertificateRequest{}),
		ID:    identity.ID{TenantID: "t1", Kind: identity.KindNode, ResourceID: "n1"},
		WGKey: wgKey(1),
	}
	ctx := context.Background()
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := e.Sign(ctx, req); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signatures/s")
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := e.Sign(ctx, req); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signatures/s")
	})
}
