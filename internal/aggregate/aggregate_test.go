package aggregate

import (
	"fmt"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// The fake clocks: CLOCK_MONOTONIC nanoseconds map to epoch + ns, and Now is whatever the test
// sets. Nothing here reads the real time.
var epoch = time.Unix(1_700_000_000, 0)

const (
	ms  = uint64(time.Millisecond)
	sec = uint64(time.Second)

	masterPID = 100
	adminPID  = 999 // a shell sending kill(1)
)

type fakeClock struct{ now time.Time }

func wall(ns uint64) time.Time { return epoch.Add(time.Duration(ns)) }

func newTestAggregator(t *testing.T, tweak func(*Config)) (*Aggregator, *fakeClock) {
	t.Helper()
	clk := &fakeClock{now: epoch}
	cfg := DefaultConfig()
	cfg.Now = func() time.Time { return clk.now }
	cfg.MonoToWall = wall
	if tweak != nil {
		tweak(&cfg)
	}
	a := New(cfg)
	a.AddMaster(masterPID, epoch, "app:app")
	return a, clk
}

// Event builders, one per record the kernel side emits (bpf/gpe.bpf.c).

func evFork(ts uint64, child, parent uint32) events.Event {
	return events.Event{Kind: events.KindFork, TGID: child, TS: ts, Other: parent, Master: parent, ProcKind: events.ProcWorker}
}

func evExit(ts uint64, pid uint32, status int32) events.Event {
	return events.Event{Kind: events.KindExit, TGID: pid, TS: ts, Code: status}
}

func evSignal(ts uint64, target, sender uint32, sig int32) events.Event {
	return events.Event{Kind: events.KindSignal, TGID: target, TS: ts, Other: sender, Code: sig}
}

func evExec(ts uint64, pid, oldMaster uint32) events.Event {
	return events.Event{Kind: events.KindExec, TGID: pid, TS: ts, Other: oldMaster, Master: pid, ProcKind: events.ProcWorker}
}

func evOOM(ts uint64, pid uint32) events.Event {
	return events.Event{Kind: events.KindOOM, TGID: pid, TS: ts}
}

// evReq is the one record of a request, sent when it ended: line is the first piece of its
// request line, lastWriteNS its last write (0 for none), status 0 when nothing was answered.
func evReq(ts uint64, pid, fd, seq uint32, line string, startNS, lastWriteNS, bytesIn, bytesOut uint64, status uint16, reason events.EndReason) events.Event {
	return events.Event{Kind: events.KindReqEnd, TGID: pid, TS: ts, FD: fd, Seq: seq, StartNS: startNS,
		LastWriteNS: lastWriteNS, BytesIn: bytesIn, BytesOut: bytesOut, Status: status, Reason: reason, Line: []byte(line)}
}

// evLine is a later piece of a request line that arrived in several reads, sent before the
// request's END.
func evLine(ts uint64, pid, fd, seq uint32, piece string) events.Event {
	return events.Event{Kind: events.KindReqLine, TGID: pid, TS: ts, FD: fd, Seq: seq, Line: []byte(piece)}
}

// evExitBusy is a worker's exit with the kernel's count of its busy time.
func evExitBusy(ts uint64, pid uint32, status int32, busyNS uint64) events.Event {
	ev := evExit(ts, pid, status)
	ev.BusyNS = busyNS
	return ev
}

// occupancy is a fake of the kernel's per-worker figures for SetOccupancy.
type occupancy map[uint32]events.Occupancy

func (o occupancy) read(pid uint32) (events.Occupancy, bool) {
	v, ok := o[pid]
	return v, ok
}

func feed(a *Aggregator, evs ...events.Event) {
	for i := range evs {
		a.Handle(&evs[i])
	}
}

func masterOf(t *testing.T, s Snapshot, pid uint32) MasterSnapshot {
	t.Helper()
	for _, m := range s.Masters {
		if m.PID == pid {
			return m
		}
	}
	t.Fatalf("master %d not in snapshot", pid)
	return MasterSnapshot{}
}

func workerOf(t *testing.T, s Snapshot, pid uint32) WorkerSnapshot {
	t.Helper()
	for _, m := range s.Masters {
		for _, w := range m.Workers {
			if w.PID == pid {
				return w
			}
		}
	}
	t.Fatalf("worker %d not in snapshot", pid)
	return WorkerSnapshot{}
}

func hasWorker(s Snapshot, pid uint32) bool {
	for _, m := range s.Masters {
		for _, w := range m.Workers {
			if w.PID == pid {
				return true
			}
		}
	}
	return false
}

func labeled(c []LabeledCount, method, endpoint, errorType string) uint64 {
	for _, x := range c {
		if x.Method == method && x.Endpoint == endpoint && x.ErrorType == errorType {
			return x.Count
		}
	}
	return 0
}

func total(c []LabeledCount) uint64 {
	var n uint64
	for _, x := range c {
		n += x.Count
	}
	return n
}

func httpCount(m MasterSnapshot, method, endpoint string, status uint16) uint64 {
	for _, h := range m.HTTP {
		if h.Method == method && h.Endpoint == endpoint && h.Status == status {
			return h.Count
		}
	}
	return 0
}

func httpTotal(m MasterSnapshot) uint64 {
	var n uint64
	for _, h := range m.HTTP {
		n += h.Count
	}
	return n
}

func routeHist(t *testing.T, m MasterSnapshot, method, endpoint string) Histogram {
	t.Helper()
	for _, r := range m.Routes {
		if r.Method == method && r.Endpoint == endpoint {
			return r.Duration
		}
	}
	t.Fatalf("no route histogram for %s %s", method, endpoint)
	return Histogram{}
}

// inBucket is the non-cumulative count of the bucket whose upper bound is le (+Inf for the
// overflow).
func inBucket(t *testing.T, h Histogram, le float64) uint64 {
	t.Helper()
	for i, b := range h.Bounds {
		if b == le {
			return h.Counts[i]
		}
	}
	if le > h.Bounds[len(h.Bounds)-1] {
		return h.Counts[len(h.Bounds)]
	}
	t.Fatalf("no bucket %g", le)
	return 0
}

func wantEq[T comparable](t *testing.T, what string, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("%s = %v, want %v", what, got, want)
	}
}

func TestKeepAlive(t *testing.T) {
	const w, fd = 101, 7
	// Request 1: GET /users/42, 4 ms, 300 B in, 2000 B out, ended by the next request.
	// Request 2: POST /upload, 300 ms, 70000 B in, 100 B out, ended by the close. Both on one
	// connection.
	t1, t2 := 10*sec, 11*sec
	e1 := evReq(t2, w, fd, 1, "GET /users/42", t1, t1+4*ms, 300, 2000, 200, events.EndNext)
	e2 := evReq(t2+400*ms, w, fd, 2, "POST /upload", t2, t2+300*ms, 70000, 100, 201, events.EndClose)

	for _, tc := range []struct {
		name string
		evs  []events.Event
	}{
		{"in order", []events.Event{e1, e2}},
		// Each END is a whole request: the order they are read in does not matter.
		{"second read first", []events.Event{e2, e1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(1*sec, w, masterPID))
			feed(a, tc.evs...)
			s := a.Snapshot(20 * sec)
			m := masterOf(t, s, masterPID)
			ws := workerOf(t, s, w)

			wantEq(t, "requests", ws.Requests, uint64(2))
			wantEq(t, "http GET /users/{id} 200", httpCount(m, "GET", "/users/{id}", 200), uint64(1))
			wantEq(t, "http POST /upload 201", httpCount(m, "POST", "/upload", 201), uint64(1))
			wantEq(t, "http total", httpTotal(m), uint64(2))
			wantEq(t, "failed", total(ws.Failed), uint64(0))
			wantEq(t, "in flight (no occupancy source)", ws.InFlight, 0)
			wantEq(t, "busy (no occupancy source)", ws.BusySeconds, 0.0)

			wantEq(t, "duration count", ws.Duration.Count, uint64(2))
			wantEq(t, "duration le .005", inBucket(t, ws.Duration, .005), uint64(1))
			wantEq(t, "duration le .5", inBucket(t, ws.Duration, .5), uint64(1))
			wantEq(t, "route GET /users/{id} le .005", inBucket(t, routeHist(t, m, "GET", "/users/{id}"), .005), uint64(1))
			wantEq(t, "route POST /upload le .5", inBucket(t, routeHist(t, m, "POST", "/upload"), .5), uint64(1))

			wantEq(t, "request size le 1024", inBucket(t, ws.ReqSize, 1024), uint64(1))
			wantEq(t, "request size le 262144", inBucket(t, ws.ReqSize, 262144), uint64(1))
			wantEq(t, "response size le 1024", inBucket(t, ws.RespSize, 1024), uint64(1))
			wantEq(t, "response size le 4096", inBucket(t, ws.RespSize, 4096), uint64(1))
			wantEq(t, "response size sum", ws.RespSize.Sum, 2100.0)
		})
	}
}

// TestEndsOnOneFDInAnyOrder: a sync worker closes a connection and accepts the next ones on
// the same fd; the first connection's END (the kernel's tcp_destroy_sock, a round trip after
// the close) can be read after the next ones'. Request ids are unique, so each END is counted
// once, with its own line, and the later pieces of two lines on the same fd go each to its
// own request.
func TestEndsOnOneFDInAnyOrder(t *testing.T) {
	const w, fd = 101, 9
	t1, t2, t3 := 10*sec, 10*sec+5*ms, 10*sec+10*ms
	ends := []events.Event{
		evReq(t3+1*ms, w, fd, 41, "GET /a", t1, t1+1*ms, 100, 50, 200, events.EndClose),
		evReq(t3+2*ms, w, fd, 42, "GET /", t2, t2+2*ms, 100, 50, 404, events.EndClose),
		evReq(t3+4*ms, w, fd, 43, "GE", t3, t3+3*ms, 100, 50, 500, events.EndClose),
	}
	// The pieces of requests 42 and 43, interleaved; each before its END.
	pieces := []events.Event{
		evLine(t2+1*ms, w, fd, 42, "b"),
		evLine(t3+1, w, fd, 43, "T /"),
		evLine(t3+2, w, fd, 43, "c"),
	}
	for _, order := range [][]int{{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}} {
		t.Run(fmt.Sprint(order), func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(1*sec, w, masterPID))
			feed(a, pieces...)
			for _, i := range order {
				feed(a, ends[i])
			}
			s := a.Snapshot(20 * sec)
			m := masterOf(t, s, masterPID)
			ws := workerOf(t, s, w)
			wantEq(t, "requests", ws.Requests, uint64(3))
			wantEq(t, "http total", httpTotal(m), uint64(3))
			wantEq(t, "http GET /a 200", httpCount(m, "GET", "/a", 200), uint64(1))
			wantEq(t, "http GET /b 404", httpCount(m, "GET", "/b", 404), uint64(1))
			wantEq(t, "http GET /c 500", httpCount(m, "GET", "/c", 500), uint64(1))
			wantEq(t, "failed", labeled(ws.Failed, "GET", "/c", ""), uint64(1))
			wantEq(t, "failed total", total(ws.Failed), uint64(1))
			wantEq(t, "duration count", ws.Duration.Count, uint64(3))
			wantEq(t, "duration le .001", inBucket(t, ws.Duration, .001), uint64(1))
			wantEq(t, "duration in le .0025", inBucket(t, ws.Duration, .0025), uint64(1))
			wantEq(t, "duration in le .005", inBucket(t, ws.Duration, .005), uint64(1))
		})
	}
}

func TestDurationBuckets(t *testing.T) {
	// le is inclusive, as in Prometheus.
	for _, tc := range []struct {
		d  uint64
		le float64
	}{
		{0, .001}, {1 * ms, .001}, {1*ms + 1, .0025}, {100 * ms, .1}, {700 * ms, 1},
		{60 * sec, 60}, {61 * sec, 61},
	} {
		t.Run(fmt.Sprint(time.Duration(tc.d)), func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			start := 5 * sec
			feed(a, evFork(sec, 101, masterPID),
				evReq(start+tc.d, 101, 3, 1, "GET /", start, start+tc.d, 10, 10, 200, events.EndClose))
			ws := workerOf(t, a.Snapshot(100*sec), 101)
			wantEq(t, "count in bucket", inBucket(t, ws.Duration, tc.le), uint64(1))
			wantEq(t, "count", ws.Duration.Count, uint64(1))
		})
	}
}

func TestWorkerKilledMidRequest(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(1*sec, 101, masterPID), evFork(1*sec, 102, masterPID))
	before := workerOf(t, a.Snapshot(0), 102)
	wantEq(t, "id of worker 102", before.ID, fmt.Sprintf("worker_2_%d", epoch.Unix()+1))

	feed(a,
		evSignal(12*sec, 102, adminPID, 9), // kill -9
		// The kernel ends the request it was serving, then sends its exit.
		evReq(12*sec, 102, 9, 1, "POST /orders/123/pay", 10*sec, 0, 500, 0, 0, events.EndExit),
		evExitBusy(12*sec, 102, 9, 2*sec), // wait status: killed by signal 9
		// A request record read after the exit is not a second failure.
		evReq(12*sec+1, 102, 10, 2, "GET /late", 11*sec, 0, 10, 0, 0, events.EndClose),
		evSignal(12*sec, masterPID, 102, 17),
		evFork(13*sec, 103, masterPID), // the replacement
	)
	s := a.Snapshot(20 * sec)
	m := masterOf(t, s, masterPID)
	dead := workerOf(t, s, 102)

	wantEq(t, "state", dead.State, StateExited)
	wantEq(t, "state since", dead.StateSince, wall(12*sec))
	wantEq(t, "in flight", dead.InFlight, 0)
	wantEq(t, "busy from the exit record", dead.BusySeconds, 2.0)
	wantEq(t, "requests", dead.Requests, uint64(0))
	wantEq(t, "failed", labeled(dead.Failed, "POST", "/orders/{id}/pay", ""), uint64(1))
	wantEq(t, "error worker_exit", labeled(dead.Errors, "POST", "/orders/{id}/pay", ErrWorkerExit), uint64(1))
	wantEq(t, "errors total", total(dead.Errors), uint64(1))
	wantEq(t, "exits{signal}", m.Exits[ExitSignal], uint64(1))
	wantEq(t, "exits total", len(m.Exits), 1)
	wantEq(t, "restarts", m.Restarts, uint64(1))
	wantEq(t, "signals{chld}", m.Signals["chld"], uint64(1))
	wantEq(t, "live workers", m.LiveWorkers, 2)
	wantEq(t, "http total", httpTotal(m), uint64(0))

	repl := workerOf(t, s, 103)
	wantEq(t, "replacement id", repl.ID, fmt.Sprintf("worker_3_%d", epoch.Unix()+13))
	wantEq(t, "replacement state", repl.State, StateRunning)
}

func TestHUPReload(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(1*sec, 101, masterPID), evFork(1*sec, 102, masterPID))
	feed(a,
		evSignal(10*sec, masterPID, adminPID, 1), // kill -HUP master
		evFork(11*sec, 103, masterPID),
		evFork(11*sec, 104, masterPID),
		evSignal(12*sec, 101, masterPID, 15),
		evSignal(12*sec, 102, masterPID, 15),
	)
	s := a.Snapshot(0)
	m := masterOf(t, s, masterPID)
	wantEq(t, "restarts after the forks", m.Restarts, uint64(2))
	wantEq(t, "signals{hup}", m.Signals["hup"], uint64(1))
	for _, pid := range []uint32{101, 102} {
		wantEq(t, fmt.Sprintf("state of %d", pid), workerOf(t, s, pid).State, StateQuitting)
	}
	wantEq(t, "id of 104", workerOf(t, s, 104).ID, fmt.Sprintf("worker_4_%d", epoch.Unix()+11))

	feed(a,
		evExit(13*sec, 101, 0),
		evSignal(13*sec, masterPID, 101, 17),
		evExit(13*sec, 102, 0),
		evSignal(13*sec, masterPID, 102, 17),
	)
	s = a.Snapshot(0)
	m = masterOf(t, s, masterPID)
	wantEq(t, "exits{graceful}", m.Exits[ExitGraceful], uint64(2))
	wantEq(t, "restarts after the exits", m.Restarts, uint64(2))
	wantEq(t, "live workers", m.LiveWorkers, 2)

	// Growing the pool is not a restart.
	feed(a, evSignal(20*sec, masterPID, adminPID, 21), evFork(20*sec, 105, masterPID))
	s = a.Snapshot(0)
	m = masterOf(t, s, masterPID)
	wantEq(t, "restarts after TTIN", m.Restarts, uint64(2))
	wantEq(t, "signals{ttin}", m.Signals["ttin"], uint64(1))
	wantEq(t, "live workers after TTIN", m.LiveWorkers, 3)
	wantEq(t, "id of 105", workerOf(t, s, 105).ID, fmt.Sprintf("worker_5_%d", epoch.Unix()+20))

	// Shrinking it again (TTOU: the master TERMs the oldest) is not owed a replacement either.
	feed(a, evSignal(30*sec, masterPID, adminPID, 22), evSignal(30*sec, 103, masterPID, 15),
		evExit(30*sec, 103, 0), evSignal(40*sec, masterPID, adminPID, 21), evFork(40*sec, 106, masterPID))
	m = masterOf(t, a.Snapshot(0), masterPID)
	wantEq(t, "restarts after TTOU then TTIN", m.Restarts, uint64(2))
	wantEq(t, "exits{graceful} after TTOU", m.Exits[ExitGraceful], uint64(3))
}

func TestWorkerTimeout(t *testing.T) {
	const w, fd = 101, 5
	start := 10 * sec
	for _, tc := range []struct {
		name string
		evs  []events.Event
	}{
		{
			// The sync worker's SIGABRT handler calls sys.exit(1); the socket is closed while
			// unwinding, with no status line written.
			name: "abort, close, exit 1",
			evs: []events.Event{
				evSignal(40*sec, w, masterPID, 6),
				evReq(40*sec+ms, w, fd, 1, "GET /slow", start, 0, 100, 0, 0, events.EndClose),
				evExit(40*sec+2*ms, w, 1<<8),
			},
		},
		{
			// The worker did not die of the abort: the next timeout sends SIGKILL; the kernel
			// ends the request at the exit.
			name: "abort, then kill",
			evs: []events.Event{
				evSignal(40*sec, w, masterPID, 6),
				evSignal(70*sec, w, masterPID, 9),
				evReq(70*sec, w, fd, 1, "GET /slow", start, 0, 100, 0, 0, events.EndExit),
				evExit(70*sec, w, 9),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(1*sec, w, masterPID))
			feed(a, tc.evs[0])
			s := a.Snapshot(0)
			wantEq(t, "state after ABRT", workerOf(t, s, w).State, StateAborting)
			wantEq(t, "state since after ABRT", workerOf(t, s, w).StateSince, wall(40*sec))

			feed(a, tc.evs[1:]...)
			feed(a, evSignal(75*sec, masterPID, w, 17), evFork(75*sec, 102, masterPID))
			s = a.Snapshot(0)
			m := masterOf(t, s, masterPID)
			ws := workerOf(t, s, w)
			wantEq(t, "state", ws.State, StateExited)
			wantEq(t, "error worker_timeout", labeled(ws.Errors, "GET", "/slow", ErrWorkerTimeout), uint64(1))
			wantEq(t, "errors total", total(ws.Errors), uint64(1))
			wantEq(t, "failed", labeled(ws.Failed, "GET", "/slow", ""), uint64(1))
			wantEq(t, "requests", ws.Requests, uint64(0))
			wantEq(t, "in flight", ws.InFlight, 0)
			wantEq(t, "exits{timeout}", m.Exits[ExitTimeout], uint64(1))
			wantEq(t, "exit reasons", len(m.Exits), 1)
			wantEq(t, "restarts", m.Restarts, uint64(1))
			wantEq(t, "signals to the master", len(m.Signals), 1) // chld only: ABRT went to the worker
		})
	}
}

func TestExitReasons(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before []events.Event
		status int32
		want   string
	}{
		{"exit 0", nil, 0, ExitGraceful},
		{"exit 1", nil, 1 << 8, ExitError},
		{"exit 3 (boot error)", nil, 3 << 8, ExitError},
		{"killed by SIGKILL", nil, 9, ExitSignal},
		{"killed by SIGSEGV with core", nil, 11 | 0x80, ExitSignal},
		{"OOM killer", []events.Event{evOOM(5*sec, 101)}, 9, ExitOOM},
		{"aborted by the master", []events.Event{evSignal(5*sec, 101, masterPID, 6)}, 1 << 8, ExitTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(sec, 101, masterPID))
			feed(a, tc.before...)
			feed(a, evExit(6*sec, 101, tc.status))
			m := masterOf(t, a.Snapshot(0), masterPID)
			wantEq(t, "exits{"+tc.want+"}", m.Exits[tc.want], uint64(1))
			wantEq(t, "exit reasons", len(m.Exits), 1)
		})
	}
}

func TestUnknownConnectionsAndProcesses(t *testing.T) {
	const w = 101
	tls := evReq(5*sec, w, 9, 4, "", 4*sec, 0, 10, 0, 0, events.EndClose)
	tls.Flags = events.FlagTLS
	for _, tc := range []struct {
		name       string
		evs        []events.Event
		requests   uint64
		http       uint64 // http_requests_total{OTHER, unknown, 200}
		noResponse uint64 // error_handling{OTHER, unknown, no_response}
		durations  uint64
	}{
		{
			name:     "END with a status and no line",
			evs:      []events.Event{evReq(5*sec, w, 9, 3, "", 4*sec, 5*sec, 10, 10, 200, events.EndClose)},
			requests: 1, http: 1, durations: 1,
		},
		{
			name:       "END without a status or a line",
			evs:        []events.Event{evReq(5*sec, w, 9, 3, "", 4*sec, 0, 10, 0, 0, events.EndClose)},
			noResponse: 1,
		},
		{
			// Unanswered, it would be a no_response failure: a TLS request counts nowhere.
			name: "END of a TLS connection",
			evs:  []events.Event{tls},
		},
		{
			name: "a LINE piece whose END never came",
			evs:  []events.Event{evLine(5*sec, w, 9, 3, "/users/1")},
		},
		{
			name: "requests of an unknown pid",
			evs: []events.Event{
				evLine(4*sec, 4242, 9, 1, "a"),
				evReq(5*sec, 4242, 9, 1, "GET /", 4*sec, 5*sec, 10, 10, 200, events.EndClose),
				evReq(5*sec, 4242, 9, 2, "GET /b", 4*sec, 0, 10, 0, 0, events.EndExit),
			},
		},
		{
			name: "process events of unknown pids",
			evs: []events.Event{
				evFork(5*sec, 4243, 4242), // its parent is not an observed master
				evSignal(5*sec, 4242, adminPID, 1),
				evExit(5*sec, 4244, 0),
				evExec(5*sec, 4245, 4242),
				evOOM(5*sec, 4246),
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(sec, w, masterPID))
			feed(a, tc.evs...)
			s := a.Snapshot(10 * sec)
			m := masterOf(t, s, masterPID)
			ws := workerOf(t, s, w)
			wantEq(t, "masters", len(s.Masters), 1)
			wantEq(t, "workers", len(m.Workers), 1)
			wantEq(t, "requests", ws.Requests, tc.requests)
			wantEq(t, "http{OTHER,unknown,200}", httpCount(m, "OTHER", EndpointUnknown, 200), tc.http)
			wantEq(t, "http total", httpTotal(m), tc.http)
			wantEq(t, "no_response", labeled(ws.Errors, "OTHER", EndpointUnknown, ErrNoResponse), tc.noResponse)
			wantEq(t, "errors total", total(ws.Errors), tc.noResponse)
			wantEq(t, "durations", ws.Duration.Count, tc.durations)
			wantEq(t, "routes", len(m.Routes), int(tc.durations))
			wantEq(t, "restarts", m.Restarts, uint64(0))
			wantEq(t, "signals", len(m.Signals), 0)
		})
	}
}

// TestStatusCountedOnce: one END is one request, counted once, whatever ended it; the kernel
// puts the final status in it ("100 Continue" then 200: 200).
func TestStatusCountedOnce(t *testing.T) {
	const w, fd = 101, 4
	start := 5 * sec
	for _, tc := range []struct {
		name   string
		reason events.EndReason
	}{
		{"next request", events.EndNext}, {"close", events.EndClose}, {"reused entry", events.EndReused},
		{"pipelined", events.EndPipeline}, {"read found nothing", events.EndWait},
		{"exit after the status line", events.EndExit},
	} {
		reason := tc.reason
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(sec, w, masterPID),
				evReq(start+20*ms, w, fd, 1, "PUT /files/report.pdf", start, start+10*ms, 5000, 200, 200, reason))
			s := a.Snapshot(10 * sec)
			m := masterOf(t, s, masterPID)
			ws := workerOf(t, s, w)
			wantEq(t, "requests", ws.Requests, uint64(1))
			wantEq(t, "http PUT /files/report.pdf 200", httpCount(m, "PUT", "/files/report.pdf", 200), uint64(1))
			wantEq(t, "http total", httpTotal(m), uint64(1))
			wantEq(t, "durations", ws.Duration.Count, uint64(1))
			wantEq(t, "duration le .01", inBucket(t, ws.Duration, .01), uint64(1))
			wantEq(t, "request size le 16384", inBucket(t, ws.ReqSize, 16384), uint64(1))
			wantEq(t, "response sizes", ws.RespSize.Count, uint64(1))
			wantEq(t, "failed", total(ws.Failed), uint64(0))
			wantEq(t, "errors", total(ws.Errors), uint64(0))
		})
	}
}

func TestFailedRequests(t *testing.T) {
	const w, fd = 101, 4
	start := 5 * sec
	for _, tc := range []struct {
		name    string
		before  []events.Event // before the END
		status  uint16         // the END's status, 0 for none
		reason  events.EndReason
		counted bool   // in requests_total and http_requests_total
		errType string // "" when not failed
	}{
		{name: "200", status: 200, counted: true},
		{name: "404", status: 404, counted: true},
		{name: "500", status: 500, counted: true, errType: "http_500"},
		{name: "503", status: 503, counted: true, errType: "http_503"},
		{name: "no response", errType: ErrNoResponse},
		{
			name:    "no response from a quitting worker",
			before:  []events.Event{evSignal(start+ms, w, masterPID, 15)},
			errType: ErrWorkerExit,
		},
		{
			name:    "200 from a quitting worker",
			before:  []events.Event{evSignal(start+ms, w, masterPID, 15)},
			status:  200,
			counted: true,
		},
		{
			name:    "no response from an aborting worker",
			before:  []events.Event{evSignal(start+ms, w, masterPID, 6)},
			errType: ErrWorkerTimeout,
		},
		{name: "no response, ended by the worker's exit", reason: events.EndExit, errType: ErrWorkerExit},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(sec, w, masterPID))
			feed(a, tc.before...)
			reason := tc.reason
			if reason == 0 {
				reason = events.EndClose
			}
			var lastWrite, out uint64
			if tc.status != 0 {
				lastWrite, out = start+2*ms, 50
			}
			feed(a, evReq(start+3*ms, w, fd, 1, "GET /api/v1/items", start, lastWrite, 100, out, tc.status, reason))
			s := a.Snapshot(10 * sec)
			m := masterOf(t, s, masterPID)
			ws := workerOf(t, s, w)

			var n, failed uint64
			if tc.counted {
				n = 1
			}
			if tc.errType != "" {
				failed = 1
			}
			wantEq(t, "requests", ws.Requests, n)
			wantEq(t, "http", httpCount(m, "GET", "/api/v1/items", tc.status), n)
			wantEq(t, "http total", httpTotal(m), n)
			wantEq(t, "durations", ws.Duration.Count, n)
			wantEq(t, "failed", labeled(ws.Failed, "GET", "/api/v1/items", ""), failed)
			wantEq(t, "failed total", total(ws.Failed), failed)
			wantEq(t, "error "+tc.errType, labeled(ws.Errors, "GET", "/api/v1/items", tc.errType), failed)
			wantEq(t, "errors total", total(ws.Errors), failed)
		})
	}
}

func TestUSR2Upgrade(t *testing.T) {
	const newMaster = 200
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(1*sec, 101, masterPID), evFork(1*sec, 102, masterPID))
	// A crashed worker is owed a replacement when the upgrade's fork happens.
	feed(a, evExit(5*sec, 102, 11))

	feed(a,
		evSignal(10*sec, masterPID, adminPID, 12), // kill -USR2
		evFork(10*sec, newMaster, masterPID),
		evExec(10*sec+ms, newMaster, masterPID),
	)
	s := a.Snapshot(0)
	m := masterOf(t, s, masterPID)
	wantEq(t, "signals{usr2}", m.Signals["usr2"], uint64(1))
	wantEq(t, "restarts", m.Restarts, uint64(0))
	wantEq(t, "new master a worker", hasWorker(s, newMaster), false)
	wantEq(t, "masters", fmt.Sprint(a.Masters()), fmt.Sprint([]uint32{masterPID, newMaster}))
	wantEq(t, "live workers of the old master", m.LiveWorkers, 1)
	wantEq(t, "is live", a.IsLive(newMaster), true)

	// The old master still replaces its crashed worker: age 3 (the new master's fork gave
	// its age back) and a restart (its credit was given back too).
	feed(a, evFork(11*sec, 103, masterPID))
	s = a.Snapshot(0)
	wantEq(t, "replacement id", workerOf(t, s, 103).ID, fmt.Sprintf("worker_3_%d", epoch.Unix()+11))
	wantEq(t, "restarts after the replacement", masterOf(t, s, masterPID).Restarts, uint64(1))

	// The new master's workers are its own, numbered from 1.
	feed(a, evFork(12*sec, 201, newMaster), evFork(12*sec, 202, newMaster))
	s = a.Snapshot(0)
	nm := masterOf(t, s, newMaster)
	wantEq(t, "new master's workers", len(nm.Workers), 2)
	wantEq(t, "new master's restarts", nm.Restarts, uint64(0))
	wantEq(t, "id of 201", workerOf(t, s, 201).ID, fmt.Sprintf("worker_1_%d", epoch.Unix()+12))

	// WINCH, then QUIT the old master: its workers go, then it does.
	feed(a,
		evSignal(20*sec, masterPID, adminPID, 28),
		evSignal(20*sec, 101, masterPID, 3),
		evSignal(20*sec, 103, masterPID, 3),
		evExit(21*sec, 101, 0),
		evExit(21*sec, 103, 0),
		evSignal(22*sec, masterPID, adminPID, 3),
		evExit(23*sec, masterPID, 0),
	)
	s = a.Snapshot(0)
	wantEq(t, "masters after the old one exits", fmt.Sprint(a.Masters()), fmt.Sprint([]uint32{newMaster}))
	wantEq(t, "snapshot masters", len(s.Masters), 1)
	for _, pid := range []uint32{101, 102, 103} {
		wantEq(t, fmt.Sprintf("worker %d in snapshot", pid), hasWorker(s, pid), false)
	}
	wantEq(t, "new master's live workers", masterOf(t, s, newMaster).LiveWorkers, 2)
	wantEq(t, "old master live", a.IsLive(masterPID), false)
}

// TestInFlightAndBusy: in flight and busy time are the kernel's figures, read at each
// snapshot; after the worker's exit, its busy time is the exit record's and nothing is in
// flight, whatever the kernel's table still says.
func TestInFlightAndBusy(t *testing.T) {
	// A gthread worker serving two connections at once:
	//   fd 5: 10.0 s → 12.0 s
	//   fd 6: 11.0 s → 13.0 s (status at 13.0, END at 13.5)
	//   fd 5: 20.0 s → 21.0 s (keep-alive)
	//   fd 5: 40.0 s → killed at 41.0 s
	// Busy: 10 → 13, 20 → 21 and 40 → 41 = 5 s.
	const w = 101
	a, _ := newTestAggregator(t, nil)
	occ := occupancy{}
	a.SetOccupancy(occ.read)
	feed(a, evFork(sec, w, masterPID))
	for _, step := range []struct {
		name     string
		kernel   events.Occupancy
		evs      []events.Event
		monoNow  uint64
		inFlight int
		busy     float64
	}{
		{"first request", events.Occupancy{InFlight: 1, BusySince: 10 * sec}, nil, 10*sec + 500*ms, 1, 0.5},
		{"second request", events.Occupancy{InFlight: 2, BusySince: 10 * sec}, nil, 11*sec + 500*ms, 2, 1.5},
		{"first answered", events.Occupancy{InFlight: 1, BusySince: 10 * sec},
			[]events.Event{evReq(12*sec+100*ms, w, 5, 1, "GET /a", 10*sec, 12*sec, 10, 10, 200, events.EndWait)},
			12*sec + 500*ms, 1, 2.5},
		{"second answered", events.Occupancy{BusyNS: 3 * sec, BusySince: 10 * sec},
			[]events.Event{evReq(13*sec+500*ms, w, 6, 1, "GET /b", 11*sec, 13*sec, 10, 10, 200, events.EndClose)},
			15 * sec, 0, 3},
		{"keep-alive request", events.Occupancy{InFlight: 1, BusyNS: 3 * sec, BusySince: 20 * sec}, nil, 20*sec + 250*ms, 1, 3.25},
		{"keep-alive answered", events.Occupancy{BusyNS: 4 * sec, BusySince: 20 * sec},
			[]events.Event{evReq(22*sec, w, 5, 2, "GET /a", 20*sec, 21*sec, 10, 10, 200, events.EndClose)},
			30 * sec, 0, 4},
		{"fourth request", events.Occupancy{InFlight: 1, BusyNS: 4 * sec, BusySince: 40 * sec}, nil, 40*sec + 500*ms, 1, 4.5},
		// The kernel's entry is stale (not removed yet): the exit record has the final figures.
		{"killed", events.Occupancy{InFlight: 1, BusyNS: 4 * sec, BusySince: 40 * sec},
			[]events.Event{
				evReq(41*sec, w, 5, 3, "GET /a", 40*sec, 0, 10, 0, 0, events.EndExit),
				evExitBusy(41*sec, w, 9, 5*sec),
			},
			100 * sec, 0, 5},
	} {
		t.Run(step.name, func(t *testing.T) {
			occ[w] = step.kernel
			feed(a, step.evs...)
			ws := workerOf(t, a.Snapshot(step.monoNow), w)
			wantEq(t, "in flight", ws.InFlight, step.inFlight)
			wantEq(t, "busy seconds", ws.BusySeconds, step.busy)
		})
	}
	ws := workerOf(t, a.Snapshot(200*sec), w)
	wantEq(t, "state", ws.State, StateExited)
	wantEq(t, "requests", ws.Requests, uint64(3))
	wantEq(t, "duration le 2.5", inBucket(t, ws.Duration, 2.5), uint64(2))
	wantEq(t, "duration le 1", inBucket(t, ws.Duration, 1), uint64(1))
	wantEq(t, "worker_exit", labeled(ws.Errors, "GET", "/a", ErrWorkerExit), uint64(1))
}

func TestExpire(t *testing.T) {
	a, clk := newTestAggregator(t, func(c *Config) { c.StaleAfter = 60 * time.Second })
	feed(a, evFork(sec, 101, masterPID), evFork(sec, 102, masterPID))
	clk.now = epoch.Add(100 * time.Second)
	feed(a, evExit(100*sec, 101, 0))
	for _, step := range []struct {
		after time.Duration
		kept  bool
	}{
		{0, true},
		{59 * time.Second, true},
		{60 * time.Second, false},
		{61 * time.Second, false},
	} {
		t.Run(step.after.String(), func(t *testing.T) {
			clk.now = epoch.Add(100*time.Second + step.after)
			a.Expire()
			s := a.Snapshot(0)
			wantEq(t, "exited worker kept", hasWorker(s, 101), step.kept)
			wantEq(t, "live worker kept", hasWorker(s, 102), true)
			wantEq(t, "live workers", a.LiveWorkers()[0], uint32(102))
		})
	}
}

func TestPIDReuse(t *testing.T) {
	// A worker's pid comes back before its series expired: the new worker is observed, and
	// none of the old one's requests is counted for it.
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(sec, 101, masterPID),
		evLine(5*sec, 101, 5, 1, "/a"), // a line the old worker never finished reading
		evReq(6*sec, 101, 6, 2, "GET /x", 5*sec, 0, 10, 0, 0, events.EndExit),
		evExit(6*sec, 101, 9),
		evFork(7*sec, 101, masterPID),
		evReq(9*sec, 101, 5, 3, "GET /b", 8*sec, 9*sec, 10, 10, 200, events.EndClose),
	)
	s := a.Snapshot(10 * sec)
	ws := workerOf(t, s, 101)
	m := masterOf(t, s, masterPID)
	wantEq(t, "id", ws.ID, fmt.Sprintf("worker_2_%d", epoch.Unix()+7))
	wantEq(t, "state", ws.State, StateRunning)
	wantEq(t, "requests", ws.Requests, uint64(1))
	wantEq(t, "http GET /b 200", httpCount(m, "GET", "/b", 200), uint64(1))
	wantEq(t, "http total", httpTotal(m), uint64(1))
	wantEq(t, "failed", total(ws.Failed), uint64(0))
	wantEq(t, "restarts", m.Restarts, uint64(1))
	wantEq(t, "live", a.IsLive(101), true)
}

func TestSeedWorkers(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	base := epoch.Add(-time.Hour)
	// Given out of order: numbered by start time.
	a.SeedWorkers(masterPID,
		[]uint32{303, 301, 302},
		[]time.Time{base.Add(30 * time.Second), base.Add(10 * time.Second), base.Add(20 * time.Second)})
	a.SeedWorkers(masterPID, []uint32{301}, []time.Time{base}) // already known: unchanged
	a.SeedWorkers(4242, []uint32{401}, []time.Time{base})      // unknown master: ignored
	s := a.Snapshot(0)
	for _, tc := range []struct {
		pid  uint32
		age  int
		secs time.Duration
	}{
		{301, 1, 10 * time.Second}, {302, 2, 20 * time.Second}, {303, 3, 30 * time.Second},
	} {
		t.Run(fmt.Sprint(tc.pid), func(t *testing.T) {
			ws := workerOf(t, s, tc.pid)
			wantEq(t, "id", ws.ID, fmt.Sprintf("worker_%d_%d", tc.age, base.Add(tc.secs).Unix()))
			wantEq(t, "state", ws.State, StateRunning)
			wantEq(t, "started", ws.Started, base.Add(tc.secs))
		})
	}
	wantEq(t, "unknown master's worker", hasWorker(s, 401), false)
	wantEq(t, "live workers", masterOf(t, s, masterPID).LiveWorkers, 3)

	// A worker forked afterwards continues the numbering, and is not a restart.
	feed(a, evFork(5*sec, 304, masterPID))
	s = a.Snapshot(0)
	wantEq(t, "forked id", workerOf(t, s, 304).ID, fmt.Sprintf("worker_4_%d", epoch.Unix()+5))
	wantEq(t, "restarts", masterOf(t, s, masterPID).Restarts, uint64(0))
}

func TestStateSince(t *testing.T) {
	// The timestamp label moves only when the state changes, never per request or signal.
	const w = 101
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(2*sec, w, masterPID))
	for _, step := range []struct {
		name  string
		ev    events.Event
		state string
		since uint64
	}{
		{"forked", evSignal(2*sec, masterPID, adminPID, 17), StateRunning, 2 * sec},
		{"request", evReq(4*sec, w, 5, 1, "GET /", 3*sec, 4*sec, 10, 10, 200, events.EndClose), StateRunning, 2 * sec},
		{"unanswered request", evReq(4*sec, w, 5, 2, "GET /", 3*sec, 0, 10, 0, 0, events.EndClose), StateRunning, 2 * sec},
		{"usr1 (reopen logs)", evSignal(5*sec, w, masterPID, 10), StateRunning, 2 * sec},
		{"term", evSignal(6*sec, w, masterPID, 15), StateQuitting, 6 * sec},
		{"term again", evSignal(7*sec, w, masterPID, 15), StateQuitting, 6 * sec},
		{"quit", evSignal(8*sec, w, masterPID, 3), StateQuitting, 6 * sec},
		{"abrt", evSignal(9*sec, w, masterPID, 6), StateAborting, 9 * sec},
		{"abrt again", evSignal(10*sec, w, masterPID, 6), StateAborting, 9 * sec},
		{"term while aborting", evSignal(11*sec, w, masterPID, 15), StateAborting, 9 * sec},
		{"exit", evExit(12*sec, w, 1<<8), StateExited, 12 * sec},
		{"signal after exit", evSignal(13*sec, w, masterPID, 15), StateExited, 12 * sec},
	} {
		t.Run(step.name, func(t *testing.T) {
			feed(a, step.ev)
			ws := workerOf(t, a.Snapshot(0), w)
			wantEq(t, "state", ws.State, step.state)
			wantEq(t, "state since", ws.StateSince, wall(step.since))
		})
	}
	ws := workerOf(t, a.Snapshot(0), w)
	wantEq(t, "uptime frozen at exit", ws.Uptime, 10.0)
}

func TestSignalsToMaster(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	for _, sig := range []int32{1, 1, 21, 22, 10, 28, 17, 17, 17} {
		feed(a, evSignal(sec, masterPID, adminPID, sig))
	}
	m := masterOf(t, a.Snapshot(0), masterPID)
	want := map[string]uint64{"hup": 2, "ttin": 1, "ttou": 1, "usr1": 1, "winch": 1, "chld": 3}
	wantEq(t, "signal names", len(m.Signals), len(want))
	for name, n := range want {
		wantEq(t, "signals{"+name+"}", m.Signals[name], n)
	}
}

func TestSignalName(t *testing.T) {
	for _, tc := range []struct {
		sig  int32
		want string
	}{
		{1, "hup"}, {2, "int"}, {3, "quit"}, {6, "abrt"}, {9, "kill"}, {10, "usr1"},
		{12, "usr2"}, {15, "term"}, {17, "chld"}, {21, "ttin"}, {22, "ttou"}, {28, "winch"},
		{34, "rtmin"}, {35, "rtmin+1"}, {50, "rtmin+16"}, {63, "rtmin+29"}, {64, "rtmax"},
		{32, "sig32"}, {0, "sig0"}, {65, "sig65"},
	} {
		t.Run(tc.want, func(t *testing.T) {
			wantEq(t, fmt.Sprintf("SignalName(%d)", tc.sig), SignalName(tc.sig), tc.want)
		})
	}
}

func TestEventCounts(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(sec, 101, masterPID),
		evLine(2*sec, 101, 5, 1, "/a"),
		evReq(3*sec, 101, 5, 1, "GET ", 2*sec, 3*sec, 1, 1, 200, events.EndClose),
		evReq(4*sec, 4242, 5, 1, "GET /", 3*sec, 4*sec, 1, 1, 200, events.EndClose), // counted as read even though ignored
	)
	s := a.Snapshot(0)
	want := map[string]uint64{"fork": 1, "request_line": 1, "request_end": 2}
	wantEq(t, "kinds", len(s.Events), len(want))
	for k, n := range want {
		wantEq(t, "events{"+k+"}", s.Events[k], n)
	}
}

// A request line that arrives in pieces: the END carries the first, LINE records sent before
// it the rest; the labels come from the whole line.
func TestRequestLineInPieces(t *testing.T) {
	const w, fd = 101, 4
	start := 5 * sec
	for _, tc := range []struct {
		name     string
		pieces   []string
		status   uint16 // 0: unanswered, ended by the worker's exit
		endpoint string
		method   string
	}{
		{"three pieces", []string{"GE", "T /users/", "42/orders"}, 200, "/users/{id}/orders", "GET"},
		{"method only first", []string{"POST", " /upload"}, 201, "/upload", "POST"},
		{"a failure labelled from the whole line", []string{"DEL", "ETE /items/9"}, 500, "/items/{id}", "DELETE"},
		{"unanswered at the exit, labelled from the whole line", []string{"PU", "T /items/7"}, 0, "/items/{id}", "PUT"},
		{"never completed", []string{"GE"}, 404, EndpointUnknown, "OTHER"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(sec, w, masterPID))
			for i, p := range tc.pieces[1:] {
				feed(a, evLine(start+uint64(i+1)*ms, w, fd, 1, p))
			}
			if tc.status == 0 {
				feed(a, evReq(start+11*ms, w, fd, 1, tc.pieces[0], start, 0, 100, 0, 0, events.EndExit), evExit(start+11*ms, w, 9))
			} else {
				feed(a, evReq(start+11*ms, w, fd, 1, tc.pieces[0], start, start+10*ms, 100, 50, tc.status, events.EndClose))
			}
			s := a.Snapshot(20 * sec)
			m, ws := masterOf(t, s, masterPID), workerOf(t, s, w)
			if tc.status == 0 {
				wantEq(t, "worker_exit", labeled(ws.Errors, tc.method, tc.endpoint, ErrWorkerExit), uint64(1))
				wantEq(t, "errors total", total(ws.Errors), uint64(1))
				wantEq(t, "http total", httpTotal(m), uint64(0))
				return
			}
			wantEq(t, "http", httpCount(m, tc.method, tc.endpoint, tc.status), uint64(1))
			wantEq(t, "http total", httpTotal(m), uint64(1))
			wantEq(t, "routes", len(m.Routes), 1)
		})
	}
}

// TestPiecesBoundAndDroppedAtExit: the pieces of lines whose END never came are kept up to
// maxPieces, and dropped when their worker exits: the room is there again for the others.
func TestPiecesBoundAndDroppedAtExit(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(sec, 101, masterPID), evFork(sec, 102, masterPID))
	for i := range maxPieces {
		feed(a, evLine(2*sec, 101, 5, uint32(1000+i), "/never-ended"))
	}
	// No room: the piece is lost; the request is counted from its first piece.
	feed(a, evLine(3*sec, 102, 6, 1, "bc"),
		evReq(3*sec+ms, 102, 6, 1, "GET /a", 3*sec, 3*sec+ms, 10, 10, 200, events.EndClose))
	feed(a, evExit(4*sec, 101, 9))
	feed(a, evLine(5*sec, 102, 6, 2, "bc"),
		evReq(5*sec+ms, 102, 6, 2, "GET /a", 5*sec, 5*sec+ms, 10, 10, 200, events.EndClose))
	s := a.Snapshot(10 * sec)
	m := masterOf(t, s, masterPID)
	wantEq(t, "GET /a (piece lost while full)", httpCount(m, "GET", "/a", 200), uint64(1))
	wantEq(t, "GET /abc (after the exit)", httpCount(m, "GET", "/abc", 200), uint64(1))
	wantEq(t, "http total", httpTotal(m), uint64(2))
	wantEq(t, "exited worker's errors: its unended lines are no requests", total(workerOf(t, s, 101).Errors), uint64(0))
}

// A client that left before the answer: the status line written into the void is not a
// response (no phantom 200) but a no_response failure; it is not counted as answered.
func TestClientGone(t *testing.T) {
	const w, fd = 101, 4
	start := 5 * sec
	for _, tc := range []struct {
		name   string
		status uint16
		reason events.EndReason
	}{
		{"answered into the void, then closed", 200, events.EndClose},
		{"answered into the void, read found nothing", 200, events.EndWait},
		{"nothing written", 0, events.EndClose},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			feed(a, evFork(sec, w, masterPID))
			end := evReq(start+501*ms, w, fd, 1, "GET /slow", start, start+500*ms, 100, 50, tc.status, tc.reason)
			end.Flags = events.FlagClientGone
			feed(a, end)
			s := a.Snapshot(10 * sec)
			m, ws := masterOf(t, s, masterPID), workerOf(t, s, w)
			wantEq(t, "requests", ws.Requests, uint64(0))
			wantEq(t, "http total", httpTotal(m), uint64(0))
			wantEq(t, "no_response", labeled(ws.Errors, "GET", "/slow", ErrNoResponse), uint64(1))
			wantEq(t, "errors total", total(ws.Errors), uint64(1))
			wantEq(t, "failed", total(ws.Failed), uint64(1))
			wantEq(t, "duration observations", ws.Duration.Count, uint64(0))
		})
	}
}

// TestQueueWait: the END of a connection's first request carries when the kernel established
// it; the wait until the worker read it goes into the master's queue histogram, once per
// connection (a keep-alive request on it, and an END without the time, add nothing).
func TestQueueWait(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	first := evReq(5*sec+ms, 101, 3, 1, "GET /", 5*sec, 5*sec+ms, 10, 10, 200, events.EndNext)
	first.EstablishedNS = 5*sec - 300*ms
	second := evReq(6*sec+ms, 102, 4, 2, "GET /", 6*sec, 6*sec+ms, 10, 10, 200, events.EndClose)
	second.EstablishedNS = 6*sec - 2*ms
	// Established after it started: not a wait.
	odd := evReq(7*sec+ms, 102, 4, 4, "GET /", 7*sec, 7*sec+ms, 10, 10, 200, events.EndClose)
	odd.EstablishedNS = 7*sec + 1
	feed(a, evFork(sec, 101, masterPID), evFork(sec, 102, masterPID),
		first,
		evReq(5*sec+3*ms, 101, 3, 3, "GET /", 5*sec+2*ms, 5*sec+3*ms, 10, 10, 200, events.EndClose), // keep-alive: no establishment
		second, odd)
	q := masterOf(t, a.Snapshot(100*sec), masterPID).Queue
	wantEq(t, "queued connections", q.Count, uint64(2))
	wantEq(t, "waits in (1 ms, 2.5 ms]", inBucket(t, q, .0025), uint64(1))
	wantEq(t, "waits in (0.25 s, 0.5 s]", inBucket(t, q, .5), uint64(1))
	if d := q.Sum - 0.302; d < -1e-9 || d > 1e-9 {
		t.Errorf("queue sum %v, want 0.302", q.Sum)
	}
}
