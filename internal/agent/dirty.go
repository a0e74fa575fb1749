package agent

import (
	"sync"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// Gunicorn 25+'s dirty arbiters (proc/dirty.go, README "Dirty arbiters"). The kernel side
// reports a master's every fork as a worker's, the dirty arbiter's too, and /proc tells it
// apart only once it has bound its socket, a few milliseconds after. So a new child of a
// master is looked at again at each rescan for dirtyWindow after its fork, and moved to the
// dirty arbiters when it turns out to be one. The kernel keeps tracking it as a worker: its
// exit still comes as an event, and a dirty arbiter whose master died is still known as no
// master (discover). Its Unix socket's traffic is not HTTP (the dirty protocol's frames
// start "GD" and a version byte, which no request line does), and the aggregate ignores
// whatever the kernel makes of it once it is marked.

// dirtyWindow is how long after its fork a child of a master may turn out to be a dirty
// arbiter: Gunicorn's binds its socket within a second; an HTTP worker never does.
const dirtyWindow = 10 * time.Second

// newChildren holds the children of masters forked less than dirtyWindow ago, by pid, with
// when they were seen. The reader goroutine adds, Run's loop looks and removes.
type newChildren struct {
	mu   sync.Mutex
	seen map[uint32]time.Time
}

func (n *newChildren) add(pid uint32, at time.Time) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.seen == nil {
		n.seen = make(map[uint32]time.Time)
	}
	n.seen[pid] = at
}

// take returns the pids seen, and forgets those seen before cutoff.
func (n *newChildren) take(cutoff time.Time) []uint32 {
	n.mu.Lock()
	defer n.mu.Unlock()
	var pids []uint32
	for pid, at := range n.seen {
		pids = append(pids, pid)
		if at.Before(cutoff) {
			delete(n.seen, pid)
		}
	}
	return pids
}

func (n *newChildren) forget(pid uint32) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.seen, pid)
}

// findDirtyArbiters moves the new children of masters that turned out to be dirty arbiters
// out of the workers.
func (a *Agent) findDirtyArbiters() {
	for _, pid := range a.children.take(time.Now().Add(-dirtyWindow)) {
		if !a.proc.IsDirtyArbiter(pid) {
			continue
		}
		a.children.forget(pid)
		if a.agg.MarkDirtyArbiter(pid) {
			a.log.Info("a child of the master is a dirty arbiter, not an HTTP worker", "dirty_arbiter_pid", pid)
		}
	}
}

// sampleDirty samples the dirty arbiters and their workers (the arbiter's children, which
// the kernel side does not follow), and forgets an arbiter that is gone although no exit
// event said so. Every process sampled is added to live.
func (a *Agent) sampleDirty(s *proc.Sampler, live map[uint32]bool) {
	for pid, started := range a.agg.DirtyArbiters() {
		u, err := s.Sample(pid, started)
		if err != nil {
			if !a.proc.Alive(pid) {
				a.agg.RemoveDirtyArbiter(pid)
			}
			continue
		}
		live[pid] = true
		d := aggregate.DirtyUsage{RSS: u.RSS, CPUPercent: u.CPUPercent}
		kids, err := a.proc.ChildPIDs(pid)
		if err != nil {
			a.log.Debug("dirty workers", "dirty_arbiter_pid", pid, "error", err)
		}
		for _, k := range kids {
			info, err := a.proc.Read(k)
			if err != nil {
				continue
			}
			ku, err := s.Sample(k, info.Started)
			if err != nil {
				continue
			}
			live[k] = true
			d.Workers++
			d.WorkersRSS += ku.RSS
			d.WorkersCPUPercent += ku.CPUPercent
		}
		a.agg.SetDirtyUsage(pid, d)
	}
}
