package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// event is one JSON line a child process (agent worker or controller replica) prints.
type event struct {
	Type    string  `json:"type"`
	Name    string  `json:"name,omitempty"`
	Recv    []int64 `json:"recv,omitempty"`
	Bytes   int64   `json:"bytes,omitempty"`
	Refused int     `json:"refused,omitempty"`
	Missing int     `json:"missing,omitempty"`
	Err     string  `json:"err,omitempty"`

	// Progress: agents with a map (worker) or open streams (replica).
	Count int `json:"count,omitempty"`
	// Replica figures: its node-port address, the commit start of a join (Unix ns), memory
	// (HeapInuse+StackInuse and RSS, as deltas from the replica's own baseline once stats are
	// asked for), goroutines, sockets and the process's CPU time (ns).
	Addr       string `json:"addr,omitempty"`
	T0         int64  `json:"t0,omitempty"`
	Heap       int64  `json:"heap,omitempty"`
	Stacks     int64  `json:"stacks,omitempty"`
	RSS        int64  `json:"rss,omitempty"`
	Goroutines int    `json:"goroutines,omitempty"`
	Sockets    int    `json:"sockets,omitempty"`
	CPU        int64  `json:"cpu,omitempty"`
}

// command is one JSON line the bench writes to a child's standard input.
type command struct {
	Cmd  string `json:"cmd"`
	Name string `json:"name,omitempty"`
	// Within bounds how long a worker waits for what it was armed for.
	Within int64 `json:"within,omitempty"`
}

// child is a worker or replica process of this binary, spoken to in JSON lines. Progress events
// are not queued: the last count is kept for the progress line.
type child struct {
	cmd      *exec.Cmd
	in       io.WriteCloser
	events   chan event
	progress atomic.Int64
	n        int
}

func startChild(ctx context.Context, mode, file string, n int) (*child, error) {
	cmd := exec.CommandContext(ctx, os.Args[0], mode, file)
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	// If the bench dies (timeout), its replicas and workers go with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s %s: %w", mode, file, err)
	}
	c := &child{cmd: cmd, in: in, events: make(chan event, 16), n: n}
	go func() {
		defer close(c.events)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			var ev event
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			if ev.Type == "progress" {
				c.progress.Store(int64(ev.Count))
				continue
			}
			c.events <- ev
		}
	}()
	return c, nil
}

func (c *child) send(cmd command) error {
	b, _ := json.Marshal(cmd)
	_, err := c.in.Write(append(b, '\n'))
	return err
}

func (c *child) wait(ctx context.Context, typ string) (event, error) {
	for {
		select {
		case <-ctx.Done():
			return event{}, fmt.Errorf("waiting for %s: %w", typ, ctx.Err())
		case ev, ok := <-c.events:
			if !ok {
				return event{}, fmt.Errorf("%s exited while waiting for %s", c.cmd.Args[1], typ)
			}
			if ev.Type == "error" {
				return ev, errors.New(ev.Err)
			}
			if ev.Type == typ {
				return ev, nil
			}
		}
	}
}

// call sends cmd and waits for the reply of type typ, within d.
func (c *child) call(ctx context.Context, cmd command, typ string, d time.Duration) (event, error) {
	if err := c.send(cmd); err != nil {
		return event{}, fmt.Errorf("%s: %w", cmd.Cmd, err)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return c.wait(ctx, typ)
}

// stop asks the child to quit and waits for it to exit (killing it after a minute).
func (c *child) stop() {
	_ = c.send(command{Cmd: "quit"})
	_ = c.in.Close()
	done := make(chan struct{})
	go func() { _ = c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		_ = c.cmd.Process.Kill()
		<-done
	}
}

// emitter writes events as JSON lines on standard output (the child side).
type emitter struct {
	mu  sync.Mutex
	out *json.Encoder
}

func (e *emitter) emit(ev event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	_ = e.out.Encode(ev)
}
