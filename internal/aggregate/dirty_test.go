package aggregate

import (
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// TestDirtyArbiter: Gunicorn 26 forks its dirty arbiter before its HTTP workers; the kernel
// reports it as a worker, the agent marks it. It then is no worker: not in Workers or
// LiveWorkers, its age is given back, and its events (a request the kernel parsed on its Unix
// socket, its signals, its exit) count nowhere; its respawn is no restart.
func TestDirtyArbiter(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	const arb, w1, w2, arb2 = 201, 202, 203, 204
	feed(a, evFork(1*ms, arb, masterPID), evFork(2*ms, w1, masterPID))
	if a.MarkDirtyArbiter(w1 + 100) {
		t.Error("MarkDirtyArbiter of an unknown pid said true")
	}
	if !a.MarkDirtyArbiter(arb) {
		t.Fatal("MarkDirtyArbiter of a live child said false")
	}
	feed(a, evFork(3*ms, w2, masterPID))
	a.SetDirtyUsage(arb, DirtyUsage{RSS: 30 << 20, CPUPercent: 1.5, Workers: 2, WorkersRSS: 200 << 20, WorkersCPUPercent: 40})
	// What the kernel could make of the arbiter's Unix socket traffic, and a signal to it.
	feed(a,
		evReq(4*ms, arb, 7, 1, "GET /x", 3*ms, 4*ms, 10, 20, 200, events.EndClose),
		evReq(5*ms, arb, 8, 1, "GD", 4*ms, 0, 10, 0, 0, events.EndClose),
		evSignal(6*ms, arb, masterPID, sigHUP))

	s := a.Snapshot(10 * ms)
	m := masterOf(t, s, masterPID)
	wantEq(t, "live workers", m.LiveWorkers, 2)
	wantEq(t, "workers listed", len(m.Workers), 2)
	if hasWorker(s, arb) {
		t.Error("the dirty arbiter is listed as a worker")
	}
	// The arbiter took age 1 before it was known; w1 was numbered after it, so 1 stays used.
	wantEq(t, "w2's id", workerOf(t, s, w2).ID, "worker_3_1700000000")
	wantEq(t, "requests", httpTotal(m), 0)
	wantEq(t, "dirty arbiters", m.Dirty.Arbiters, 1)
	wantEq(t, "dirty usage", m.Dirty.Usage, DirtyUsage{RSS: 30 << 20, CPUPercent: 1.5, Workers: 2, WorkersRSS: 200 << 20, WorkersCPUPercent: 40})
	wantEq(t, "live workers listed", len(a.LiveWorkers()), 2)
	wantEq(t, "workers of the master", len(a.WorkersOf(masterPID)), 2)
	wantEq(t, "dirty arbiter live", a.IsLive(arb), true)

	// It dies and the master respawns it: neither is a worker exit or a restart.
	feed(a, evExit(20*ms, arb, 9), evFork(21*ms, arb2, masterPID))
	if !a.MarkDirtyArbiter(arb2) {
		t.Fatal("MarkDirtyArbiter of the respawned arbiter said false")
	}
	s = a.Snapshot(30 * ms)
	m = masterOf(t, s, masterPID)
	wantEq(t, "exits", len(m.Exits), 0)
	wantEq(t, "restarts", m.Restarts, 0)
	wantEq(t, "dirty arbiters after the respawn", m.Dirty.Arbiters, 1)
	wantEq(t, "its usage, not sampled yet", m.Dirty.Usage, DirtyUsage{})
	// Its age was the last given: the next worker takes it.
	feed(a, evExit(31*ms, w2, 0), evFork(32*ms, w2+10, masterPID))
	wantEq(t, "next worker's id", workerOf(t, a.Snapshot(40*ms), w2+10).ID, "worker_4_1700000000")

	a.RemoveDirtyArbiter(arb2)
	wantEq(t, "dirty arbiters removed", masterOf(t, a.Snapshot(50*ms), masterPID).Dirty.Arbiters, 0)
}

// TestDirtyArbiterSeededAndMasterGone: one found at attach, and dropped with its master.
func TestDirtyArbiterSeededAndMasterGone(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	a.AddDirtyArbiter(masterPID, 301, epoch)
	a.AddDirtyArbiter(masterPID+1, 302, epoch) // no such master: ignored
	if got := a.DirtyArbiters(); len(got) != 1 {
		t.Fatalf("dirty arbiters = %v, want only 301", got)
	}
	wantEq(t, "dirty arbiters", masterOf(t, a.Snapshot(0), masterPID).Dirty.Arbiters, 1)
	feed(a, evExit(1*ms, masterPID, 0))
	wantEq(t, "dirty arbiters after the master's exit", len(a.DirtyArbiters()), 0)
}

// TestDirtyArbiterRestartCredit: an arbiter respawned while the master owed a worker takes the
// credit at its fork, as any child does; marking it gives the credit back to the worker.
func TestDirtyArbiterRestartCredit(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(1*ms, 401, masterPID), evExit(2*ms, 401, 9<<0), evFork(3*ms, 402, masterPID))
	wantEq(t, "restarts before marking", masterOf(t, a.Snapshot(0), masterPID).Restarts, 1)
	a.MarkDirtyArbiter(402)
	wantEq(t, "restarts after marking", masterOf(t, a.Snapshot(0), masterPID).Restarts, 0)
	feed(a, evFork(4*ms, 403, masterPID))
	wantEq(t, "the replacement worker", masterOf(t, a.Snapshot(0), masterPID).Restarts, 1)
}
