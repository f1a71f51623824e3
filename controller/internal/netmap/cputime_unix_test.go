//go:build unix

package netmap

import (
	"syscall"
	"time"
)

// processCPU returns the process's user+system CPU time. Benchmarks report it
// beside wall time because on a shared 2-core machine the wall time of one
// operation mostly measures the other processes.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
