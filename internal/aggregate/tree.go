package aggregate

import (
	"fmt"
	"sort"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// The process tree: each master, its workers (ids, ages, states), and what happens at fork,
// exec (a USR2 upgrade) and exit.

// Worker states (the `state` label of gunicorn_worker_state).
const (
	StateRunning  = "running"
	StateQuitting = "quitting"
	StateAborting = "aborting"
	StateExited   = "exited"
)

// Exit reasons (gunicorn_worker_exits_total{reason}).
const (
	ExitGraceful = "graceful"
	ExitError    = "error"
	ExitTimeout  = "timeout"
	ExitOOM      = "oom"
	ExitSignal   = "signal"
)

type worker struct {
	pid          uint32
	master       *master
	id           string
	age          int
	started      time.Time
	state        string
	stateSince   time.Time
	exitedAt     time.Time
	quitByMaster bool
	oom          bool
	restart      bool // its spawn was counted as a restart
	exitSeq      uint64
	served       int    // expositions that showed it exited
	forwarded    bool   // one of them reached Redis
	containerPID uint32 // the PID it sees itself, inside a container; 0 if not known

	requests  uint64
	duration  Histogram
	reqSize   Histogram
	respSize  Histogram
	failed    map[failKey]uint64
	errors    map[errKey]uint64
	inFlight  int
	busyNS    uint64
	busySince uint64 // monotonic ns when inFlight went from 0 to 1

	rss uint64
	cpu float64
}

type master struct {
	pid          uint32
	app          string
	started      time.Time
	ages         int
	restarts     uint64
	exitCredits  int // workers gone that the master will replace
	reloadCredit int // workers a HUP reload will replace
	quitting     bool
	signals      map[string]uint64
	exits        map[string]uint64
	http         map[httpKey]uint64
	routes       map[routeKey]*routeStats
	downstream   map[downstreamKey]downstreamStats
	peers        map[string]struct{} // the peer labels given out, at most MaxPeers
	ignored      map[string]uint64   // by --ignore-route template
	norm         *normalizer
	containerPID uint32    // as for a worker
	containerID  string    // its container runtime's ID, from its cgroup
	podUID       string    // its Kubernetes pod, from its cgroup
	queue        Histogram // gunicorn_request_queue_seconds
	settings     MasterSettings
}

// AddMaster starts observing a master. app is its WSGI/ASGI application argument, if known.
func (a *Aggregator) AddMaster(pid uint32, started time.Time, app string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.addMasterLocked(pid, started, app)
}

func (a *Aggregator) addMasterLocked(pid uint32, started time.Time, app string) *master {
	if m, ok := a.masters[pid]; ok {
		if app != "" {
			m.app = app
		}
		return m
	}
	m := &master{
		pid: pid, app: app, started: started,
		signals:    make(map[string]uint64),
		exits:      make(map[string]uint64),
		http:       make(map[httpKey]uint64),
		routes:     make(map[routeKey]*routeStats),
		downstream: make(map[downstreamKey]downstreamStats),
		peers:      make(map[string]struct{}),
		queue:      a.newHistogram(DurationBuckets),
		ignored:    make(map[string]uint64),
		norm:       newNormalizer(a.cfg.EndpointMode, a.cfg.Routes, a.cfg.IgnoreRoutes, a.cfg.MaxEndpoints),
	}
	for _, r := range a.cfg.IgnoreRoutes {
		m.ignored[r] = 0 // served from the start, so rate() has a first point
	}
	a.masters[pid] = m
	return m
}

// SetContainer records where a process of ours runs: the PID it sees itself (a container's
// PID namespace) and, for a master, the container and pod its cgroup names. Anything else
// is ignored.
func (a *Aggregator) SetContainer(pid, containerPID uint32, containerID, podUID string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m, ok := a.masters[pid]; ok {
		m.containerPID, m.containerID, m.podUID = containerPID, containerID, podUID
	}
	if w, ok := a.workers[pid]; ok {
		w.containerPID = containerPID
	}
}

// ContainerPIDLive says whether a PID as seen inside a container (containerPID differs from
// the host PID) is one of our masters or live workers (live, known), one of our exited
// workers (not live, known), or none of ours (known false). With masters in several
// containers the same number can stand for several processes: any live one wins.
func (a *Aggregator) ContainerPIDLive(containerPID uint32) (live, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, m := range a.masters {
		if m.containerPID == containerPID && m.pid != containerPID {
			return true, true
		}
	}
	for _, w := range a.workers {
		if w.containerPID == containerPID && w.pid != containerPID {
			if w.state != StateExited {
				return true, true
			}
			known = true
		}
	}
	return false, known
}

// RemoveMaster stops observing a master and drops its workers and series at once.
func (a *Aggregator) RemoveMaster(pid uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.removeMasterLocked(pid)
}

func (a *Aggregator) removeMasterLocked(pid uint32) {
	delete(a.masters, pid)
	for dp, d := range a.dirty {
		if d.master.pid == pid {
			delete(a.dirty, dp)
		}
	}
	for wp, w := range a.workers {
		if w.master.pid == pid {
			a.dropPending(wp)
			delete(a.workers, wp)
		}
	}
}

// SeedWorkers records the workers already running when gpe-ebpf attached, numbered by start
// time as README "Metrics" says.
func (a *Aggregator) SeedWorkers(masterPID uint32, pids []uint32, started []time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	m, ok := a.masters[masterPID]
	if !ok {
		return
	}
	idx := make([]int, len(pids))
	for i := range idx {
		idx[i] = i
	}
	sort.SliceStable(idx, func(x, y int) bool { return started[idx[x]].Before(started[idx[y]]) })
	for _, i := range idx {
		if _, known := a.workers[pids[i]]; known {
			continue
		}
		a.newWorker(m, pids[i], started[i])
	}
}

func (a *Aggregator) newWorker(m *master, pid uint32, started time.Time) *worker {
	m.ages++
	w := &worker{
		pid: pid, master: m, age: m.ages, started: started,
		id:         fmt.Sprintf("worker_%d_%d", m.ages, started.Unix()),
		state:      StateRunning,
		stateSince: started,
		duration:   a.newHistogram(DurationBuckets),
		reqSize:    a.newHistogram(SizeBuckets),
		respSize:   a.newHistogram(SizeBuckets),
		failed:     make(map[failKey]uint64),
		errors:     make(map[errKey]uint64),
	}
	a.workers[pid] = w
	return w
}

func (a *Aggregator) fork(ev *events.Event) {
	m, ok := a.masters[ev.Other]
	if !ok {
		return
	}
	if old, known := a.workers[ev.TGID]; known {
		if old.state != StateExited {
			return
		}
		// The pid was reused before the exited worker's series expired: the new one wins.
		a.dropPending(ev.TGID)
	}
	w := a.newWorker(m, ev.TGID, a.cfg.MonoToWall(ev.TS))
	switch {
	case m.exitCredits > 0:
		m.exitCredits--
		w.restart = true
	case m.reloadCredit > 0:
		m.reloadCredit--
		w.restart = true
	}
	if w.restart {
		m.restarts++
	}
}

// exec: a worker that execs is the new master of a USR2 upgrade, never a worker. It is
// forgotten as a worker (its age and any restart it was counted as are given back) and
// observed as a master from now on.
func (a *Aggregator) exec(ev *events.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok {
		return
	}
	m := a.unWorker(w)
	// Re-executed with the old master's arguments: its settings until the agent reads them.
	a.addMasterLocked(ev.TGID, a.cfg.MonoToWall(ev.TS), m.app).settings = m.settings
}

// unWorker forgets w, a child of its master that turned out to be no worker (a USR2
// upgrade's new master, a dirty arbiter), as if it had never been one: its age is given back
// when no worker was numbered after it, and so is the restart it was counted as. It returns
// w's master.
func (a *Aggregator) unWorker(w *worker) *master {
	m := w.master
	if w.age == m.ages {
		m.ages--
	}
	if w.restart {
		// Give the credit back too: the worker it was taken for is still owed a replacement.
		m.restarts--
		m.exitCredits++
	}
	delete(a.workers, w.pid)
	return m
}

func (a *Aggregator) exit(ev *events.Event) {
	if _, ok := a.masters[ev.TGID]; ok {
		// A master's exit ends its observation; the caller decides what happens next.
		a.removeMasterLocked(ev.TGID)
		return
	}
	if a.dirtyExit(ev.TGID) {
		return // no worker: not a worker exit, and the master owes no replacement
	}
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		return
	}
	reason := exitReason(w, ev.Code)
	m := w.master
	m.exits[reason]++
	now := a.cfg.MonoToWall(ev.TS)
	// The requests it was serving ended just before (the kernel sends their ENDs first).
	a.dropPending(w.pid)
	w.inFlight = 0
	if ev.BusyNS > w.busyNS {
		w.busyNS = ev.BusyNS
	}
	if !(w.quitByMaster || m.quitting) {
		m.exitCredits++
	}
	a.exits++
	w.state, w.stateSince, w.exitedAt, w.exitSeq = StateExited, now, a.cfg.Now(), a.exits
	w.rss, w.cpu = 0, 0
}

func exitReason(w *worker, status int32) string {
	switch {
	case w.state == StateAborting:
		return ExitTimeout
	case w.oom:
		return ExitOOM
	case w.state == StateQuitting && (status&0x7f == sigTERM || status&0x7f == sigINT || status&0x7f == sigQUIT):
		// Python restores default handlers while it finalises, so a quitting worker that
		// gets the master's second TERM dies "by TERM": still a graceful stop.
		return ExitGraceful
	case status&0x7f != 0:
		return ExitSignal
	case status>>8&0xff == 0:
		return ExitGraceful
	default:
		return ExitError
	}
}

func (a *Aggregator) deathError(w *worker) string {
	if w.state == StateAborting {
		return ErrWorkerTimeout
	}
	return ErrWorkerExit
}
