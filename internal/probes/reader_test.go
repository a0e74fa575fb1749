package probes

import (
	"errors"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// testReader reads records from a fakeRing and sweeps conns through p, as Load wires a
// reader to the kernel; batched or not (Config.WakeupBytes).
func testReader(records [][]byte, conns *fakeConns, p fakeProc, batched bool) (*reader, *fakeRing) {
	f := &fakeRing{records: records}
	cfg := DefaultConfig()
	cfg.PollInterval = time.Millisecond
	if !batched {
		cfg.WakeupBytes = 0
	}
	return &reader{ring: newRing(f, cfg, 1<<20), sweep: *sweepAt(conns, p)}, f
}

// TestReaderSynthesisedEnds: once the ring is empty, the sweep's ENDs are read, each with its
// line in the Event it is read into; then Read waits, and returns ErrClosed after close.
func TestReaderSynthesisedEnds(t *testing.T) {
	for _, batched := range []bool{true, false} {
		t.Run(map[bool]string{true: "batched", false: "wakeups"}[batched], func(t *testing.T) {
			p := newFakeProc(t)
			p.process(100)
			conns := &fakeConns{m: map[uint64]gpeConn{
				1: unixConn(100, 7, 9001, connResponding, 200, "GET /a"),
				2: unixConn(100, 8, 9002, connResponding, 503, "GET /b"),
			}}
			r, ring := testReader([][]byte{procRecord(events.KindFork, 101, 100, 100, 0)}, conns, p, batched)

			var fork, a, b events.Event
			if err := r.read(&fork); err != nil || fork.Kind != events.KindFork || fork.TGID != 101 {
				t.Fatalf("first read: %+v, %v; want the ring's fork record", fork, err)
			}
			if err := r.read(&a); err != nil {
				t.Fatal(err)
			}
			if err := r.read(&b); err != nil {
				t.Fatal(err)
			}
			// Each END's line is in the Event it was read into: a's stays when b is read.
			lines := map[uint32]string{7: "GET /a", 8: "GET /b"}
			if a.FD == b.FD {
				t.Errorf("two ENDs of fd %d, want one of fd 7 and one of fd 8", a.FD)
			}
			for _, ev := range []*events.Event{&a, &b} {
				if ev.Kind != events.KindReqEnd || ev.Reason != events.EndClose || ev.TS != 777 || string(ev.Line) != lines[ev.FD] {
					t.Errorf("END %+v line %q, want request_end close at 777 with %q", ev, ev.Line, lines[ev.FD])
				}
			}
			if len(conns.m) != 0 {
				t.Errorf("%d entries left in the table, want none", len(conns.m))
			}
			ring.mu.Lock()
			empties := ring.empties
			ring.mu.Unlock()
			if empties == 0 {
				t.Error("the ENDs came before the ring was found empty")
			}

			done := make(chan error, 1)
			go func() { done <- r.read(new(events.Event)) }()
			r.ring.close()
			if err := <-done; !errors.Is(err, ErrClosed) {
				t.Errorf("read after close: %v, want ErrClosed", err)
			}
		})
	}
}

// TestReaderSweepsABusyRing: a ring that is never empty still has the sweep run, every
// sweepEvery reads, and its END read before the ring's later records.
func TestReaderSweepsABusyRing(t *testing.T) {
	p := newFakeProc(t)
	p.process(100)
	conns := &fakeConns{m: map[uint64]gpeConn{1: unixConn(100, 7, 9001, connResponding, 200, "GET /a")}}
	records := make([][]byte, sweepEvery+10)
	for i := range records {
		records[i] = procRecord(events.KindSignal, 100, 1, 100, 17)
	}
	r, ring := testReader(records, conns, p, true)
	for i := 0; ; i++ {
		var ev events.Event
		if err := r.read(&ev); err != nil {
			t.Fatal(err)
		}
		if ev.Kind != events.KindReqEnd {
			continue
		}
		if i != sweepEvery || ring.empties != 0 || string(ev.Line) != "GET /a" {
			t.Errorf("END %q read after %d records with the ring found empty %d times; want GET /a after %d, the ring never empty",
				ev.Line, i, ring.empties, sweepEvery)
		}
		return
	}
}
