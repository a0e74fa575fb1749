package aggregate

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
)

// Config holds what the aggregator needs to know; build it with DefaultConfig.
type Config struct {
	// StaleAfter is how long the series of an exited worker stay before they are dropped.
	StaleAfter time.Duration
	// MaxEndpoints bounds the distinct endpoint values per master; the rest become "other".
	MaxEndpoints int
	// EndpointMode is normalized (ids become {id}) or raw.
	EndpointMode EndpointMode
	// Routes are templates such as /users/{id}/orders/{order}; they win over the heuristic.
	Routes []string
	// MonoToWall converts an event's CLOCK_MONOTONIC nanoseconds into wall-clock time.
	MonoToWall func(ns uint64) time.Time
	// Now is the wall clock (replaced in tests).
	Now func() time.Time
}

// DefaultConfig returns the defaults of CONTRACT §2 and §4.
func DefaultConfig() Config {
	return Config{
		StaleAfter:   60 * time.Second,
		MaxEndpoints: 200,
		EndpointMode: EndpointNormalized,
		MonoToWall:   MonotonicToWall(),
		Now:          time.Now,
	}
}

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

// Error types (gunicorn_worker_error_handling_total{error_type}) besides http_<code>.
const (
	ErrNoResponse    = "no_response"
	ErrWorkerTimeout = "worker_timeout"
	ErrWorkerExit    = "worker_exit"
)

// Signal numbers this package reasons about (Linux numbering, the same on amd64 and arm64).
const (
	sigHUP  = 1
	sigINT  = 2
	sigQUIT = 3
	sigABRT = 6
	sigKILL = 9
	sigTERM = 15
)

type connKey struct{ tgid, fd uint32 }

// reqKey names one request: the kernel's request ids are unique on the host.
type reqKey struct {
	connKey
	seq uint32
}

type request struct {
	seq       uint32
	line      []byte // the request line so far, until labelled
	labeled   bool
	method    string
	endpoint  string
	startNS   uint64
	status    uint16
	counted   bool // requests_total and the http_* counters already have it
	responded bool // in-flight no more (status line written)
	gone      bool // the client had left when the status line was written
}

// label turns the request line into labels, once: late enough that a line which arrived in
// pieces (REQ_LINE records) is whole.
func (r *request) label(n *normalizer) {
	if r.labeled {
		return
	}
	r.method, r.endpoint = n.label(r.line)
	r.labeled, r.line = true, r.line[:0] // the buffer stays for the request's reuse
}

type failKey struct{ method, endpoint string }
type errKey struct{ method, endpoint, errorType string }
type httpKey struct {
	method, endpoint string
	status           uint16
}
type routeKey struct{ method, endpoint string }

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
	routes       map[routeKey]*Histogram
	norm         *normalizer
}

// Aggregator is the state of every observed master. It is safe for concurrent use: events
// arrive from the reader goroutine, usage from the sampler and snapshots from scrapes.
type Aggregator struct {
	cfg Config

	mu       sync.Mutex
	masters  map[uint32]*master
	workers  map[uint32]*worker // live and recently exited, by pid
	inflight map[connKey]*request
	// ending holds the requests a START on the same fd replaced before their END arrived: on
	// keep-alive the kernel reserves the next START in the ring buffer before it emits the
	// END(next) of the one before, and a closed connection's END (tcp_destroy_sock, a round
	// trip after the close) can follow the STARTs of the next connections on the same fd.
	ending   map[reqKey]*request
	free     []*request // finished requests, reused by newRequest
	events   [len(probes.KindNames)]uint64
	unpaired uint64
}

// New returns an empty aggregator.
func New(cfg Config) *Aggregator {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.MonoToWall == nil {
		cfg.MonoToWall = MonotonicToWall()
	}
	return &Aggregator{
		cfg:      cfg,
		masters:  make(map[uint32]*master),
		workers:  make(map[uint32]*worker),
		inflight: make(map[connKey]*request),
		ending:   make(map[reqKey]*request),
	}
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
		signals: make(map[string]uint64),
		exits:   make(map[string]uint64),
		http:    make(map[httpKey]uint64),
		routes:  make(map[routeKey]*Histogram),
		norm:    newNormalizer(a.cfg.EndpointMode, a.cfg.Routes, a.cfg.MaxEndpoints),
	}
	a.masters[pid] = m
	return m
}

// RemoveMaster stops observing a master and drops its workers and series at once.
func (a *Aggregator) RemoveMaster(pid uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.removeMasterLocked(pid)
}

func (a *Aggregator) removeMasterLocked(pid uint32) {
	delete(a.masters, pid)
	for wp, w := range a.workers {
		if w.master.pid == pid {
			a.dropInflight(wp)
			delete(a.workers, wp)
		}
	}
}

// SeedWorkers records the workers already running when gpe-ebpf attached, numbered by start
// time as CONTRACT §2 says.
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
		duration:   newHistogram(DurationBuckets),
		reqSize:    newHistogram(SizeBuckets),
		respSize:   newHistogram(SizeBuckets),
		failed:     make(map[failKey]uint64),
		errors:     make(map[errKey]uint64),
	}
	a.workers[pid] = w
	return w
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

// IsLive says whether pid is a live worker or master.
func (a *Aggregator) IsLive(pid uint32) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.masters[pid]; ok {
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
func (a *Aggregator) Handle(ev *probes.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if int(ev.Kind) < len(a.events) {
		a.events[ev.Kind]++
	}
	switch ev.Kind {
	case probes.KindFork:
		a.fork(ev)
	case probes.KindExec:
		a.exec(ev)
	case probes.KindExit:
		a.exit(ev)
	case probes.KindSignal:
		a.signal(ev)
	case probes.KindOOM:
		if w, ok := a.workers[ev.TGID]; ok {
			w.oom = true
		}
	case probes.KindReqStart:
		a.reqStart(ev)
	case probes.KindReqResp:
		a.reqResp(ev)
	case probes.KindReqEnd:
		a.reqEnd(ev)
	case probes.KindReqLine:
		a.reqLine(ev)
	}
}

func (a *Aggregator) fork(ev *probes.Event) {
	m, ok := a.masters[ev.Other]
	if !ok {
		return
	}
	if old, known := a.workers[ev.TGID]; known {
		if old.state != StateExited {
			return
		}
		// The pid was reused before the exited worker's series expired: the new one wins.
		a.dropInflight(ev.TGID)
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
func (a *Aggregator) exec(ev *probes.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok {
		return
	}
	m := w.master
	if w.age == m.ages {
		m.ages--
	}
	if w.restart {
		// Give the credit back too: the worker it was taken for is still owed a replacement.
		m.restarts--
		m.exitCredits++
	}
	delete(a.workers, ev.TGID)
	a.addMasterLocked(ev.TGID, a.cfg.MonoToWall(ev.TS), m.app)
}

func (a *Aggregator) exit(ev *probes.Event) {
	if _, ok := a.masters[ev.TGID]; ok {
		// A master's exit ends its observation; the caller decides what happens next.
		a.removeMasterLocked(ev.TGID)
		return
	}
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		return
	}
	reason := exitReason(w, ev.Code)
	m := w.master
	m.exits[reason]++
	now := a.cfg.MonoToWall(ev.TS)
	// Requests still in flight died with the worker.
	for k, r := range a.inflight {
		if k.tgid != w.pid {
			continue
		}
		if !r.counted {
			a.fail(w, r, a.deathError(w))
		}
		if !r.responded {
			a.leaveFlight(w, ev.TS)
		}
		delete(a.inflight, k)
	}
	for k := range a.ending {
		if k.tgid == w.pid {
			delete(a.ending, k)
		}
	}
	if !(w.quitByMaster || m.quitting) {
		m.exitCredits++
	}
	w.state, w.stateSince, w.exitedAt = StateExited, now, a.cfg.Now()
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

func (a *Aggregator) signal(ev *probes.Event) {
	if m, ok := a.masters[ev.TGID]; ok {
		m.signals[SignalName(ev.Code)]++
		switch ev.Code {
		case sigHUP:
			live := 0
			for _, w := range a.workers {
				if w.master == m && w.state == StateRunning {
					live++
				}
			}
			m.reloadCredit = live
		case sigINT, sigQUIT, sigTERM:
			m.quitting = true
		}
		return
	}
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		return
	}
	fromMaster := ev.Other == w.master.pid
	now := a.cfg.MonoToWall(ev.TS)
	switch ev.Code {
	case sigQUIT, sigINT, sigTERM:
		if w.state == StateRunning {
			w.state, w.stateSince = StateQuitting, now
		}
		if fromMaster {
			w.quitByMaster = true
		}
	case sigABRT:
		if w.state != StateAborting {
			w.state, w.stateSince = StateAborting, now
		}
	}
}

func (a *Aggregator) reqStart(ev *probes.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		return
	}
	k := connKey{ev.TGID, ev.FD}
	if old, ok := a.inflight[k]; ok {
		// On keep-alive the previous request's END(next) follows this START: keep it until
		// then. If it holds no status yet, its RESP was lost; it is in flight no more anyway.
		if !old.responded {
			old.responded = true
			a.leaveFlight(w, ev.TS)
		}
		a.ending[reqKey{k, old.seq}] = old
	}
	a.inflight[k] = a.newRequest(ev.Seq, ev.StartNS, ev.Line)
	w.inFlight++
	if w.inFlight == 1 {
		w.busySince = ev.StartNS
	}
}

// maxFree bounds the requests kept for reuse: more than the connections in flight at once is
// never needed.
const maxFree = 256

// newRequest takes a request (and its line buffer) from the free list, or allocates one: the
// free list saves two allocations, 330 bytes, per request on the per-event path.
func (a *Aggregator) newRequest(seq uint32, startNS uint64, line []byte) *request {
	var r *request
	var buf []byte
	if n := len(a.free); n > 0 {
		r, buf = a.free[n-1], a.free[n-1].line[:0]
		a.free = a.free[:n-1]
	} else {
		r, buf = new(request), make([]byte, 0, probes.LineMax)
	}
	*r = request{seq: seq, startNS: startNS, line: append(buf, line...)}
	return r
}

// recycle gives back a request no map holds any more.
func (a *Aggregator) recycle(r *request) {
	if len(a.free) < maxFree && cap(r.line) >= probes.LineMax {
		a.free = append(a.free, r)
	}
}

func (a *Aggregator) leaveFlight(w *worker, ts uint64) {
	if w.inFlight == 0 {
		return
	}
	w.inFlight--
	if w.inFlight == 0 && ts > w.busySince {
		w.busyNS += ts - w.busySince
	}
}

// request returns the in-flight request the event is about, or one standing in for it when
// its start was not seen (lost, or a pipelined request whose line the kernel did not read).
func (a *Aggregator) request(ev *probes.Event) *request {
	k := connKey{ev.TGID, ev.FD}
	if r, ok := a.inflight[k]; ok && r.seq == ev.Seq {
		return r
	}
	if r, ok := a.ending[reqKey{k, ev.Seq}]; ok {
		return r
	}
	return nil
}

func (a *Aggregator) reqResp(ev *probes.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok {
		return
	}
	r := a.request(ev)
	if r == nil {
		return // counted at its end, from the END record's status
	}
	r.status = ev.Status
	if ev.Flags&probes.FlagClientGone != 0 {
		r.gone = true
	}
	if !r.responded {
		r.responded = true
		a.leaveFlight(w, ev.TS)
	}
	a.count(w, r)
}

// count adds an answered request to the counters, once.
func (a *Aggregator) count(w *worker, r *request) {
	if r.counted || r.status == 0 || r.gone {
		return
	}
	r.counted = true
	r.label(w.master.norm)
	w.requests++
	w.master.http[httpKey{r.method, r.endpoint, r.status}]++
	if r.status >= 500 {
		a.fail(w, r, fmt.Sprintf("http_%d", r.status))
	}
}

func (a *Aggregator) fail(w *worker, r *request, errorType string) {
	r.label(w.master.norm)
	w.failed[failKey{r.method, r.endpoint}]++
	w.errors[errKey{r.method, r.endpoint, errorType}]++
}

// reqLine appends a piece of a request line that arrived in several reads.
func (a *Aggregator) reqLine(ev *probes.Event) {
	r := a.request(ev)
	if r == nil || r.labeled {
		return
	}
	n := len(ev.Line)
	if room := probes.LineMax - len(r.line); n > room {
		n = room
	}
	r.line = append(r.line, ev.Line[:n]...)
}

func (a *Aggregator) reqEnd(ev *probes.Event) {
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		// The kernel closes a dead worker's connections after its exit, which already
		// counted the requests in flight.
		return
	}
	if ev.Flags&probes.FlagTLS != 0 {
		return
	}
	r := a.request(ev)
	if r == nil {
		// Its start was not seen (lost or not read): count what the end says, labels unknown.
		a.unpaired++
		r = &request{seq: ev.Seq, method: "OTHER", endpoint: EndpointUnknown, labeled: true, startNS: ev.StartNS, responded: true}
	} else {
		if k := (connKey{ev.TGID, ev.FD}); a.inflight[k] == r {
			delete(a.inflight, k)
		} else {
			delete(a.ending, reqKey{k, ev.Seq})
		}
		defer a.recycle(r) // no map holds it any more
	}
	if ev.Status != 0 && r.status == 0 {
		r.status = ev.Status
	}
	if !r.responded {
		r.responded = true
		a.leaveFlight(w, ev.TS)
	}
	if ev.Flags&probes.FlagClientGone != 0 {
		r.gone = true
	}
	if r.status == 0 || r.gone {
		errType := ErrNoResponse
		if w.state == StateAborting {
			errType = ErrWorkerTimeout
		} else if w.state == StateQuitting {
			errType = ErrWorkerExit
		}
		a.fail(w, r, errType)
		return
	}
	a.count(w, r)
	end := ev.LastWriteNS
	if end < ev.StartNS {
		end = ev.StartNS
	}
	d := float64(end-ev.StartNS) / 1e9
	w.duration.observe(d)
	w.reqSize.observe(float64(ev.BytesIn))
	w.respSize.observe(float64(ev.BytesOut))
	r.label(w.master.norm)
	rk := routeKey{r.method, r.endpoint}
	h, ok := w.master.routes[rk]
	if !ok {
		nh := newHistogram(DurationBuckets)
		h = &nh
		w.master.routes[rk] = h
	}
	h.observe(d)
}

func (a *Aggregator) dropInflight(pid uint32) {
	for k := range a.inflight {
		if k.tgid == pid {
			delete(a.inflight, k)
		}
	}
	for k := range a.ending {
		if k.tgid == pid {
			delete(a.ending, k)
		}
	}
}

// signalNames are Gunicorn's names (SIG_NAMES: the signal module's names without SIG,
// lower case) for Linux's signal numbers.
var signalNames = map[int32]string{
	1: "hup", 2: "int", 3: "quit", 4: "ill", 5: "trap", 6: "abrt", 7: "bus", 8: "fpe",
	9: "kill", 10: "usr1", 11: "segv", 12: "usr2", 13: "pipe", 14: "alrm", 15: "term",
	16: "stkflt", 17: "chld", 18: "cont", 19: "stop", 20: "tstp", 21: "ttin", 22: "ttou",
	23: "urg", 24: "xcpu", 25: "xfsz", 26: "vtalrm", 27: "prof", 28: "winch", 29: "io",
	30: "pwr", 31: "sys",
}

// SignalName names a signal as Gunicorn does (its SIG_NAMES has rtmin for 34 and rtmax for
// 64); the real-time signals between are rtmin+N.
func SignalName(sig int32) string {
	if n, ok := signalNames[sig]; ok {
		return n
	}
	switch {
	case sig == 34:
		return "rtmin"
	case sig == 64:
		return "rtmax"
	case sig > 34 && sig < 64:
		return fmt.Sprintf("rtmin+%d", sig-34)
	}
	return strings.ToLower(fmt.Sprintf("sig%d", sig))
}
