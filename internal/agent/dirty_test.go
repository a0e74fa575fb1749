package agent

import (
	"slices"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// TestDirtyArbiterAtAttach: a dirty arbiter already running when gpe-ebpf attaches (titled by
// setproctitle here; proc's tests prove the socket it binds) is tracked by the kernel as the
// master's child but is no worker, and takes no worker age.
func TestDirtyArbiterAtAttach(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w2)
	f.add(w1, m1, 15, "gunicorn:", "dirty-arbiter") // forked before the worker, as Gunicorn does
	cfg := testConfig(f)
	cfg.PID = m1
	r := start(t, cfg)

	wantKinds(t, r.k, map[uint32]string{m1: "master", w1: "worker of 4190100", w2: "worker of 4190100"})
	agg := r.a.Aggregator()
	if got := agg.LiveWorkers(); !slices.Equal(got, []uint32{w2}) {
		t.Errorf("live workers %v, want only %d", got, w2)
	}
	s := agg.Snapshot(0)
	if w := workers(s)[w2]; w.ID != "worker_1_1700000020" {
		t.Errorf("the HTTP worker's id %s, want worker_1_1700000020", w.ID)
	}
	if d := s.Masters[0].Dirty; d.Arbiters != 1 {
		t.Errorf("dirty arbiters %d, want 1", d.Arbiters)
	}
	// Its exit is not a worker's.
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	s = agg.Snapshot(0)
	if d := s.Masters[0].Dirty; d.Arbiters != 0 || len(s.Masters[0].Exits) != 0 {
		t.Errorf("after its exit: dirty arbiters %d, exits %v; want 0 and none", d.Arbiters, s.Masters[0].Exits)
	}
}

// TestDirtyArbiterForked: a child the master forks is a worker until /proc shows it is a
// dirty arbiter (its title or socket come a moment after the fork); a rescan then moves it.
// One that never shows it stays a worker.
func TestDirtyArbiterForked(t *testing.T) {
	f, r := startPID(t, w1)
	agg := r.a.Aggregator()
	f.add(w2, m1, 30, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", app) // untitled yet
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w2, Other: m1, ProcKind: events.ProcWorker})
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w3, Other: m1, ProcKind: events.ProcWorker})
	f.add(w3, m1, 31, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", app)
	if got := agg.LiveWorkers(); !slices.Equal(got, []uint32{w1, w2, w3}) {
		t.Fatalf("live workers right after the forks %v, want %v", got, []uint32{w1, w2, w3})
	}
	f.add(w2, m1, 30, "gunicorn:", "dirty-arbiter")
	eventually(t, "the dirty arbiter leaves the workers", func() bool {
		return slices.Equal(agg.LiveWorkers(), []uint32{w1, w3})
	})
	if got := agg.DirtyArbiters(); len(got) != 1 {
		t.Errorf("dirty arbiters %v, want %d", got, w2)
	} else if _, ok := got[w2]; !ok {
		t.Errorf("dirty arbiters %v, want %d", got, w2)
	}
	if r.k.kinds()[w2] != "worker of 4190100" {
		t.Errorf("the kernel no longer tracks the dirty arbiter as the master's child: %v", r.k.kinds())
	}
}
