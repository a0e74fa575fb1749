package aggregate

import (
	"sort"
	"sync"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// Config holds what the aggregator needs to know; build it with DefaultConfig.
type Config struct {
	// StaleAfter is how long the series of an exited worker stay at most.
	StaleAfter time.Duration
	// ServedToDrop is how many expositions (scrapes, or gatherings for Redis) must have shown a
	// worker exited before its series are dropped, ahead of StaleAfter; 0 waits for StaleAfter.
	ServedToDrop int
	// MaxEndpoints bounds the distinct endpoint values per master; the rest become "other".
	MaxEndpoints int
	// MaxPeers bounds the distinct peer values of downstream calls per master; the rest
	// become "other".
	MaxPeers int
	// EndpointMode is normalized (ids become {id}) or raw.
	EndpointMode EndpointMode
	// Routes are templates such as /users/{id}/orders/{order}; they win over the heuristic.
	Routes []string
	// IgnoreRoutes are templates, matched like Routes, of requests that are not counted (health
	// checks, probes) except in gpe_ebpf_ignored_requests_total.
	IgnoreRoutes []string
	// MonoToWall converts an event's CLOCK_MONOTONIC nanoseconds into wall-clock time.
	MonoToWall func(ns uint64) time.Time
	// Now is the wall clock (replaced in tests).
	Now func() time.Time
	// NativeHistograms also counts the duration, queue-wait and size histograms in exponential
	// buckets (Histogram.Native), for Prometheus native histograms.
	NativeHistograms bool
}

// DefaultConfig returns the defaults of README "Configuration".
func DefaultConfig() Config {
	return Config{
		StaleAfter:   60 * time.Second,
		ServedToDrop: 2,
		MaxEndpoints: 200,
		MaxPeers:     50,
		EndpointMode: EndpointNormalized,
		MonoToWall:   events.MonotonicToWall(),
		Now:          time.Now,
	}
}

// Aggregator is the state of every observed master. It is safe for concurrent use: events
// arrive from the reader goroutine, usage from the sampler and snapshots from scrapes.
type Aggregator struct {
	cfg Config

	mu      sync.Mutex
	masters map[uint32]*master
	workers map[uint32]*worker // live and recently exited, by pid
	// dirty holds the live dirty arbiters (dirty.go), by pid: children of masters that are
	// no workers.
	dirty map[uint32]*dirtyArbiter
	// pieces holds the later pieces of request lines that arrived in several reads (LINE
	// records), until their request's END.
	pieces map[reqKey][]byte
	req    request // the request being counted, reused
	// dsRing holds the downstream calls of answered requests until their END, dsIndex finds
	// them, dsNext is the slot written next (downstream.go); peerLabels keeps peers' labels by
	// address or inode, and unixPaths lists a process's Unix sockets (SetUnixPaths).
	dsRing     []pendingDS
	dsIndex    map[dsKey]int
	dsNext     int
	peerLabels map[events.Peer]string
	unixPaths  func(pid uint32) (map[uint64]string, error)
	events     [len(events.KindNames)]uint64
	// occupancy reads a worker's in flight and busy time from the kernel (SetOccupancy).
	occupancy func(pid uint32) (events.Occupancy, bool)
	// heartbeat reads a live worker's last heartbeat (SetHeartbeat).
	heartbeat func(pid uint32) (time.Time, bool)
	// exits numbers the worker exits handled; a snapshot's ExitMark is its value then, so an
	// exposition made from it showed exactly the exited workers whose exitSeq is at most that.
	exits uint64
	// forwarding is set by the first BeginForward: from then on an exited worker's series also
	// wait until an exposition showing its exit reached Redis.
	forwarding bool
}

// New returns an empty aggregator.
func New(cfg Config) *Aggregator {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MonoToWall == nil {
		cfg.MonoToWall = events.MonotonicToWall()
	}
	return &Aggregator{
		cfg:     cfg,
		masters: make(map[uint32]*master),
		workers: make(map[uint32]*worker),
		dirty:   make(map[uint32]*dirtyArbiter),
		pieces:  make(map[reqKey][]byte),
		dsIndex: make(map[dsKey]int),

		peerLabels: make(map[events.Peer]string),
	}
}

// SetOccupancy gives the aggregator the kernel's count of each worker's requests in flight
// and its busy time, read at every snapshot (the kernel sends no record when a request
// starts). Without it, in flight stays 0 and busy time is what exit records say.
func (a *Aggregator) SetOccupancy(f func(pid uint32) (events.Occupancy, bool)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.occupancy = f
}

// LiveWorkers lists the pids of workers that have not exited.
func (a *Aggregator) LiveWorkers() []uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var pids []uint32
	for pid, w := range a.workers {
		if w.state != StateExited {
			pids = append(pids, pid)
		}
	}
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	return pids
}

// WorkersOf lists the pids of the live workers of master, oldest first.
func (a *Aggregator) WorkersOf(master uint32) []uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var ws []*worker
	for _, w := range a.workers {
		if w.master.pid == master && w.state != StateExited {
			ws = append(ws, w)
		}
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].age < ws[j].age })
	pids := make([]uint32, len(ws))
	for i, w := range ws {
		pids[i] = w.pid
	}
	return pids
}

// IsLive says whether pid is a live worker, dirty arbiter or master.
func (a *Aggregator) IsLive(pid uint32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.masters[pid]; ok {
		return true
	}
	if _, ok := a.dirty[pid]; ok {
		return true
	}
	w, ok := a.workers[pid]
	return ok && w.state != StateExited
}

// State is a worker's state, or "" for a pid that is not a known worker.
func (a *Aggregator) State(pid uint32) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, ok := a.workers[pid]; ok {
		return w.state
	}
	return ""
}

// Masters lists the observed masters.
func (a *Aggregator) Masters() []uint32 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var pids []uint32
	for pid := range a.masters {
		pids = append(pids, pid)
	}
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	return pids
}

// SetUsage records a worker's sampled resident memory and CPU percent.
func (a *Aggregator) SetUsage(pid uint32, rss uint64, cpuPercent float64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if w, ok := a.workers[pid]; ok && w.state != StateExited {
		w.rss, w.cpu = rss, cpuPercent
	}
}

// Served records that an exposition made from a snapshot with ExitMark mark was served (to a
// scrape or to the Redis forwarder). The series of a worker go once ServedToDrop expositions
// showed it exited (and, when forwarding, one of them reached Redis): by then its exited state
// and final counters have been seen, and dropping them keeps the series of a server whose
// workers churn (max_requests) near those of its live workers.
func (a *Aggregator) Served(mark uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for pid, w := range a.workers {
		if w.state == StateExited && w.exitSeq <= mark {
			w.served++
			a.dropServed(pid, w)
		}
	}
}

// BeginForward is called before the exposition for Redis is gathered; the function it returns
// is called once that exposition is written to Redis.
func (a *Aggregator) BeginForward() (written func()) {
	a.mu.Lock()
	a.forwarding = true
	mark := a.exits
	a.mu.Unlock()
	return func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		for pid, w := range a.workers {
			if w.state == StateExited && w.exitSeq <= mark {
				w.forwarded = true
				a.dropServed(pid, w)
			}
		}
	}
}

func (a *Aggregator) dropServed(pid uint32, w *worker) {
	if a.cfg.ServedToDrop > 0 && w.served >= a.cfg.ServedToDrop && (w.forwarded || !a.forwarding) {
		delete(a.workers, pid)
	}
}

// Expire drops the series of workers that exited more than StaleAfter ago.
func (a *Aggregator) Expire() {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	for pid, w := range a.workers {
		if w.state == StateExited && now.Sub(w.exitedAt) >= a.cfg.StaleAfter {
			delete(a.workers, pid)
		}
	}
}

// Handle applies one event. Events about unknown processes are ignored.
func (a *Aggregator) Handle(ev *events.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if int(ev.Kind) < len(a.events) {
		a.events[ev.Kind]++
	}
	switch ev.Kind {
	case events.KindFork:
		a.fork(ev)
	case events.KindExec:
		a.exec(ev)
	case events.KindExit:
		a.exit(ev)
	case events.KindSignal:
		a.signal(ev)
	case events.KindOOM:
		if w, ok := a.workers[ev.TGID]; ok {
			w.oom = true
		}
	case events.KindReqEnd:
		a.reqEnd(ev)
	case events.KindReqLine:
		a.reqLine(ev)
	case events.KindDownstream:
		a.downstream(ev)
	}
}
