package pktq

import "testing"

func TestDropOldest(t *testing.T) {
	q := New[int](3, 5)
	for i := 1; i <= 3; i++ {
		if _, res := q.Push(i); res != Pushed {
			t.Fatalf("push %d: %v", i, res)
		}
	}
	d, res := q.Push(4)
	if res != PushedDropped || d != 1 {
		t.Fatalf("push 4: dropped %d res %v", d, res)
	}
	if r, n := q.TryPush(42); r != Full || n != 3 {
		t.Fatalf("TryPush on full queue: %v %d", r, n)
	}
	if r := q.PushControl(5); r != Pushed {
		t.Fatalf("control: %v", r)
	}
	if r := q.PushControl(6); r != Pushed {
		t.Fatalf("control: %v", r)
	}
	if r := q.PushControl(7); r != Overflow {
		t.Fatalf("control past hard cap: %v", r)
	}
	got := q.Pop(nil, 2)
	if len(got) != 2 || got[0] != 2 || got[1] != 3 {
		t.Fatalf("pop = %v", got)
	}
	select {
	case <-q.Ready():
	default:
		t.Fatal("not re-signalled with entries left")
	}
	got = q.Pop(got[:0], 10)
	if len(got) != 3 || got[0] != 4 || got[2] != 6 {
		t.Fatalf("pop = %v", got)
	}
	for i := 0; i < 100; i++ { // wrap-around and compaction
		q.Push(i)
		if i%3 == 0 {
			q.Pop(nil, 1)
		}
	}
	if q.Len() != 2 {
		t.Fatalf("len = %d", q.Len())
	}
	rest := q.Close()
	if len(rest) != 2 || rest[1] != 99 {
		t.Fatalf("close returned %v", rest)
	}
	if _, res := q.Push(1); res != Closed {
		t.Fatalf("push after close: %v", res)
	}
}
