package agent

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// attach tracks a master and the workers it already has.
func (a *Agent) attach(info proc.Info) error {
	m := info.PID
	a.decideTLS(m) // before Track: the forks the kernel reports from then on are watched by it
	if err := a.k.Track(m, m, events.ProcMaster); err != nil {
		return err
	}
	a.agg.AddMaster(m, info.Started, proc.App(info.Cmdline))
	a.noteSettings(m)
	// Listed after the master is tracked, so a worker forked meanwhile is seen either way.
	kids, err := a.proc.Children(m)
	if err != nil {
		return err
	}
	var pids []uint32
	var started []time.Time
	for _, k := range kids {
		if proc.RoleOf(k) == proc.TitledMaster {
			continue // the new master of a USR2 upgrade in progress: a master of its own
		}
		// A dirty arbiter is tracked as the kernel tracks every child of a master (dirty.go),
		// but it is no worker.
		if err := a.k.Track(k.PID, m, events.ProcWorker); err != nil {
			return err
		}
		if a.proc.IsDirtyArbiter(k.PID) {
			a.agg.AddDirtyArbiter(m, k.PID, k.Started)
			a.log.Info("the master runs a dirty arbiter, not an HTTP worker", "master_pid", m, "dirty_arbiter_pid", k.PID)
			continue
		}
		pids = append(pids, k.PID)
		started = append(started, k.Started)
	}
	a.agg.SeedWorkers(m, pids, started)
	if !a.proc.Alive(m) {
		// It exited between the scan and Track: no exit record will come for it, and
		// dropGoneMasters would take it for an exit lost in the kernel.
		a.agg.RemoveMaster(m)
		_ = a.k.Untrack(m)
		return fmt.Errorf("pid %d exited while it was being attached", m)
	}
	a.noteContainer(m)
	for _, w := range pids {
		a.noteContainer(w)
		a.watchTLS(w, m, 0)
	}
	a.log.Info("attached to master", "master_pid", m, "app", proc.App(info.Cmdline), "workers", pids)
	return nil
}

// noteContainer records where a process of ours runs (README "Gunicorn in containers").
func (a *Agent) noteContainer(pid uint32) {
	c := a.proc.Container(pid)
	a.agg.SetContainer(pid, c.PID, c.ID, c.PodUID)
}

// watchListeners gives the kernel the TCP ports the observed masters listen on, so that the
// connections to them are timed from their establishment to a worker's first read (README
// "Seeing the queue"). It reads /proc only when the set of masters changed since the last
// call: a master's net/tcp lists every connection of its network namespace, TIME_WAIT ones
// included (tens of thousands on a busy host), too much to read at every rescan. A USR2
// upgrade's new master, which inherits the listeners, is a change of the set too.
func (a *Agent) watchListeners() {
	masters := a.agg.Masters()
	slices.Sort(masters)
	if a.portsKnown && slices.Equal(masters, a.portsOf) {
		return
	}
	var ports []uint16
	for _, m := range masters {
		p, err := a.proc.ListenPorts(m)
		if err != nil {
			a.log.Debug("listening ports", "master_pid", m, "error", err)
			continue
		}
		ports = append(ports, p...)
	}
	slices.Sort(ports)
	ports = slices.Compact(ports)
	if err := a.k.SetListenPorts(ports); err != nil {
		a.log.Warn("set listening ports", "ports", ports, "error", err)
		return
	}
	a.portsOf, a.portsKnown = masters, true
	a.log.Debug("listening ports timed in the accept queue", "ports", ports)
}

// read turns kernel events into aggregate updates until the Kernel is closed. A master's
// exit goes to Run's loop; a worker that execs is the new master of a USR2 upgrade, which
// the kernel side tracks from then on and the aggregate observes as a master.
func (a *Agent) read() {
	var ev events.Event
	for {
		err := a.k.Read(&ev)
		if errors.Is(err, events.ErrClosed) {
			return
		}
		if err != nil {
			a.log.Warn("read event", "error", err)
			continue
		}
		a.agg.Handle(&ev)
		switch {
		case ev.Kind == events.KindH2:
			a.h2.Handle(&ev) // its streams' ends go to the aggregator as KindReqEnd
		case ev.Kind == events.KindExit && ev.ProcKind == events.ProcMaster:
			a.noteGone(ev.TGID)
			a.tls.forget(ev.TGID)
		case ev.Kind == events.KindExec && ev.ProcKind == events.ProcWorker:
			a.unwatchTLS(ev.TGID)
			a.decideTLS(ev.TGID)
			a.noteContainer(ev.TGID)
			a.noteSettings(ev.TGID)
			a.log.Info("new master after an upgrade (USR2)", "master_pid", ev.TGID, "old_master_pid", ev.Other)
		case ev.Kind == events.KindSignal && ev.ProcKind == events.ProcWorker:
			a.log.Debug("worker signalled", "master_pid", ev.Master, "worker_pid", ev.TGID, "sender_pid", ev.Other,
				"signal", aggregate.SignalName(ev.Code), "state", a.agg.State(ev.TGID))
		case ev.Kind == events.KindTLS && ev.ProcKind == events.ProcWorker:
			a.tlsSeen(ev.TGID, ev.Master)
		case ev.Kind == events.KindFork:
			a.children.add(ev.TGID, time.Now())
			a.noteContainer(ev.TGID)
			a.watchTLS(ev.TGID, ev.Other, ev.TS)
			a.log.Debug("worker spawned", "master_pid", ev.Other, "worker_pid", ev.TGID)
		case ev.Kind == events.KindExit:
			a.h2.Forget(ev.TGID) // its connections' ends came before its exit
			a.unwatchTLS(ev.TGID)
			a.log.Debug("worker exited", "master_pid", ev.Master, "worker_pid", ev.TGID, "status", ev.Code)
		}
	}
}

// noteGone tells Run's loop that a master is gone. One note is enough for the decision,
// which looks at the masters left, so a full channel loses nothing.
func (a *Agent) noteGone(pid uint32) {
	select {
	case a.masterGone <- pid:
	default:
	}
}

// dropGoneMasters forgets masters whose process is gone although no exit event said so: an
// exit record dropped in the kernel (gpe_ebpf_events_lost_total) must not leave a master
// observed, and its series served, forever, nor keep --pid from exiting.
func (a *Agent) dropGoneMasters() {
	for _, m := range a.agg.Masters() {
		if a.proc.Alive(m) {
			continue
		}
		a.log.Warn("master is gone but its exit was not seen (events lost?); dropping it", "master_pid", m)
		a.agg.RemoveMaster(m)
		if err := a.k.Untrack(m); err != nil {
			a.log.Debug("untrack", "master_pid", m, "error", err)
		}
		a.noteGone(m)
	}
}

func (a *Agent) sample(s *proc.Sampler) {
	live := make(map[uint32]bool)
	workers := a.agg.LiveWorkers()
	for _, pid := range workers {
		info, err := a.proc.Read(pid)
		if err != nil {
			continue
		}
		u, err := s.Sample(pid, info.Started)
		if err != nil {
			continue
		}
		live[pid] = true
		a.agg.SetUsage(pid, u.RSS, u.CPUPercent)
	}
	a.sampleDirty(s, live)
	s.Forget(live)
	for _, pid := range workers {
		live[pid] = true // sampled or not, its heartbeat's fd stays known
	}
	a.heartbeats.forget(live)
}

// discover attaches every Gunicorn master not observed yet. Masters that exit are dropped
// by their exit event. The workers of a master that exited (kill -9) are re-parented and
// outlive it for a while: they are no masters (proc.Root.Master), and one that the kernel
// side still tracks as a worker, whatever /proc says of it, is left alone until it exits,
// logged once.
func (a *Agent) discover() {
	roots, err := a.proc.Roots()
	if err != nil {
		a.log.Warn("discover masters", "error", err)
		return
	}
	known := make(map[uint32]bool)
	for _, m := range a.agg.Masters() {
		known[m] = true
	}
	orphans := make(map[uint32]bool)
	for _, r := range roots {
		if known[r.PID] {
			continue
		}
		if a.trackedWorker(r.PID) {
			orphans[r.PID] = true
			if !a.orphans[r.PID] {
				a.log.Info("a worker whose master exited runs on; it is no master and is not observed", "worker_pid", r.PID, "parent_pid", r.PPID)
			}
			continue
		}
		if !r.Master() {
			continue
		}
		if err := a.attach(r.Info); err != nil {
			a.log.Warn("attach discovered master", "master_pid", r.PID, "error", err)
		}
	}
	a.orphans = orphans
}

// trackedWorker says whether the kernel side tracks pid, which is no observed master: a
// worker, of a master that exited if /proc shows it without one. The kernel tracks a worker
// until its own exit, whatever became of its master.
func (a *Agent) trackedWorker(pid uint32) bool {
	_, ok := a.k.Occupancy(pid)
	return ok
}

// checkMaster refuses a process that is not a Gunicorn master (checkTarget, without Force):
// another program, a worker of a live master, or a worker whose title says it is one.
func (a *Agent) checkMaster(info proc.Info) error {
	pid := info.PID
	role := proc.RoleOf(info)
	if role == proc.NotGunicorn {
		return targetf("pid %d (%s) is not a Gunicorn master: not a Python interpreter running gunicorn, nor a \"gunicorn: master\" title; use --force to attach anyway", pid, shortCmd(info.Cmdline))
	}
	if role == proc.TitledMaster {
		return nil
	}
	if parent, err := a.proc.Read(info.PPID); err == nil && proc.IsGunicorn(parent) {
		return targetf("pid %d is a Gunicorn worker, not the master: its master is pid %d (use --pid %d)", pid, info.PPID, info.PPID)
	}
	if role == proc.TitledWorker {
		return targetf("pid %d is a Gunicorn worker whose master is gone (its title says worker)", pid)
	}
	return nil
}

// followPIDFile attaches the master the pid file names, if it is a new one.
func (a *Agent) followPIDFile() {
	pid, err := readPIDFile(a.cfg.PIDFile)
	if err != nil {
		return // between a service's stop and start the file may be missing
	}
	for _, m := range a.agg.Masters() {
		if m == pid {
			return
		}
	}
	info, err := a.checkTarget(pid)
	if err != nil {
		a.log.Warn("pid file names a process that is not a Gunicorn master", "pid", pid, "error", err)
		return
	}
	if err := a.attach(info); err != nil {
		a.log.Warn("re-attach", "master_pid", pid, "error", err)
	}
}

// MultiprocLive tells the multiprocess collector whether the process that wrote a live*
// gauge file still runs. A worker of a master we observe is alive until we see its exit from
// the kernel (its /proc entry outlives that event for a moment). Any other process writing
// to the directory (a cron job, a sidecar, a worker's own subprocess) is alive while /proc
// shows it running and not a zombie: without that fallback it would never count, where the
// Python exporter counted it.
func (a *Agent) MultiprocLive(pid int) bool {
	if pid <= 0 || pid > 1<<22 {
		return false
	}
	if a.agg.IsLive(uint32(pid)) {
		return true
	}
	// Gunicorn in a container names its files by the PIDs it sees (README "Gunicorn in
	// containers"), which are not the host's.
	if live, known := a.agg.ContainerPIDLive(uint32(pid)); known {
		return live
	}
	ppid, ok := a.proc.Running(uint32(pid))
	if !ok {
		return false
	}
	for _, m := range a.agg.Masters() {
		if ppid == m {
			return false // one of our workers: it exited, as we saw
		}
	}
	return true
}
