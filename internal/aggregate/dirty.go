package aggregate

import (
	"sort"
	"time"
)

// Gunicorn 25+'s dirty arbiters (README "Dirty arbiters"): a child of the master that is no
// HTTP worker, and its own children, the dirty workers. The kernel side tracks the arbiter as
// it tracks every child of a master, so its fork arrives as a worker's; the agent tells it
// apart from /proc and moves it here. Dirty processes serve no HTTP request: they are not in
// the worker series, gunicorn_master_workers or the request metrics, only in the gunicorn_dirty_*
// gauges, and their exits are not worker exits or restarts.

type dirtyArbiter struct {
	pid     uint32
	master  *master
	started time.Time
	usage   DirtyUsage
}

// DirtyUsage is a dirty arbiter's sampled resources and those of its dirty workers.
type DirtyUsage struct {
	RSS        uint64  // the arbiter's resident set size
	CPUPercent float64 // the arbiter's CPU, percent of one core
	// Workers is how many dirty workers (children of the arbiter) run; WorkersRSS and
	// WorkersCPUPercent are their sums.
	Workers           int
	WorkersRSS        uint64
	WorkersCPUPercent float64
}

// DirtySnapshot is a master's dirty arbiters and workers.
type DirtySnapshot struct {
	Arbiters int // live dirty arbiters: 1 when the master runs one, 0 otherwise
	// Usage sums the arbiters' DirtyUsage.
	Usage DirtyUsage
}

// AddDirtyArbiter records a dirty arbiter of master found already running at attach. It is
// not a worker: call it instead of listing it in SeedWorkers.
func (a *Aggregator) AddDirtyArbiter(masterPID, pid uint32, started time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m, ok := a.masters[masterPID]
	if !ok {
		return
	}
	a.dirty[pid] = &dirtyArbiter{pid: pid, master: m, started: started}
}

// MarkDirtyArbiter moves a child of a master, counted as a worker since its fork, to the dirty
// arbiters, as if it had never been a worker (unWorker). It returns false for a pid that is
// no live worker.
func (a *Aggregator) MarkDirtyArbiter(pid uint32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	w, ok := a.workers[pid]
	if !ok || w.state == StateExited {
		return false
	}
	a.dropPending(pid)
	m := a.unWorker(w)
	a.dirty[pid] = &dirtyArbiter{pid: pid, master: m, started: w.started}
	return true
}

// DirtyArbiters lists the pids of the live dirty arbiters and when each started.
func (a *Aggregator) DirtyArbiters() map[uint32]time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[uint32]time.Time, len(a.dirty))
	for pid, d := range a.dirty {
		out[pid] = d.started
	}
	return out
}

// SetDirtyUsage records a dirty arbiter's sampled resources and its workers'.
func (a *Aggregator) SetDirtyUsage(pid uint32, u DirtyUsage) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if d, ok := a.dirty[pid]; ok {
		d.usage = u
	}
}

// RemoveDirtyArbiter forgets a dirty arbiter that is gone although no exit event said so.
func (a *Aggregator) RemoveDirtyArbiter(pid uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.dirty, pid)
}

// dirtyExit forgets a dirty arbiter that exited; false if pid is none.
func (a *Aggregator) dirtyExit(pid uint32) bool {
	if _, ok := a.dirty[pid]; !ok {
		return false
	}
	delete(a.dirty, pid)
	return true
}

// dirtyOf sums the dirty arbiters of each master, for a snapshot.
func (a *Aggregator) dirtyOf() map[*master]DirtySnapshot {
	pids := make([]uint32, 0, len(a.dirty))
	for pid := range a.dirty {
		pids = append(pids, pid)
	}
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] }) // the CPU sums in one order
	out := make(map[*master]DirtySnapshot)
	for _, pid := range pids {
		d := a.dirty[pid]
		s := out[d.master]
		s.Arbiters++
		s.Usage.RSS += d.usage.RSS
		s.Usage.CPUPercent += d.usage.CPUPercent
		s.Usage.Workers += d.usage.Workers
		s.Usage.WorkersRSS += d.usage.WorkersRSS
		s.Usage.WorkersCPUPercent += d.usage.WorkersCPUPercent
		out[d.master] = s
	}
	return out
}
