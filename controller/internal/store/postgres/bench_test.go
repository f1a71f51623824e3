package postgres_test

import (
	"testing"

	"github.com/cloudvlan/cloudvlan/controller/internal/store/postgres"
	"github.com/cloudvlan/cloudvlan/controller/internal/store/storetest"
)

// go test -run '^$' -bench . -benchtime 2000x ./internal/store/postgres
func BenchmarkCreateNode(b *testing.B) {
	for _, par := range []int{1, 4} {
		b.Run(map[int]string{1: "serial", 4: "parallel4"}[par], func(b *testing.B) {
			storetest.BenchCreateNode(b, open(b, postgres.TestCluster.NewDatabase(b)), par)
		})
	}
}

func BenchmarkListNodes100k(b *testing.B) {
	storetest.BenchListNodes(b, open(b, postgres.TestCluster.NewDatabase(b)), 100_000)
}

// go test -run '^$' -bench StreamRegistry ./internal/store/postgres
func BenchmarkStreamRegistry10k(b *testing.B) {
	storetest.BenchStreamRegistry(b, open(b, postgres.TestCluster.NewDatabase(b)), 10_000)
}
