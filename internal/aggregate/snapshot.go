package aggregate

import (
	"sort"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// Snapshot is a consistent copy of everything exported, taken under one lock.
type Snapshot struct {
	Taken   time.Time
	Masters []MasterSnapshot
	Events  map[string]uint64 // records read, by kind; a kind never read is absent
	// EventKinds names every kind of record, read or not, in the kernel's order, so that the
	// exporter serves a zero for a kind never read without knowing the probes.
	EventKinds []string
	// ExitMark identifies the worker exits this snapshot shows; pass it to Served once an
	// exposition made from it is served.
	ExitMark uint64
}

// MasterSnapshot is one master and its workers.
type MasterSnapshot struct {
	PID         uint32
	App         string
	ContainerID string // the container runtime's ID, from the master's cgroup; "" outside one
	PodUID      string // the Kubernetes pod UID, from the master's cgroup; "" outside a pod
	LiveWorkers int
	Restarts    uint64
	Queue       Histogram // time from a connection's establishment to a worker's first read
	Signals     map[string]uint64
	Exits       map[string]uint64
	HTTP        []HTTPCount
	Routes      []RouteHistogram
	Downstream  []DownstreamCount // the requests' calls to other services, by endpoint and peer
	Ignored     map[string]uint64 // requests not counted, by --ignore-route template
	Workers     []WorkerSnapshot
	// Dirty is the master's dirty arbiters and their workers (Gunicorn 25+), which are none
	// of Workers.
	Dirty DirtySnapshot

	// BusyWorkers are the live workers serving as many requests as they can at once.
	BusyWorkers int
	// Timeout is the master's worker timeout in seconds, when TimeoutKnown.
	Timeout      float64
	TimeoutKnown bool
}

// HTTPCount is gunicorn_http_requests_total for one label set.
type HTTPCount struct {
	Method, Endpoint string
	Status           uint16
	Count            uint64
}

// RouteHistogram is gunicorn_http_request_duration_seconds for one label set.
type RouteHistogram struct {
	Method, Endpoint string
	Duration         Histogram
	// CPU is the on-CPU time of the requests measured alone on their thread (--request-cpu;
	// none under event-loop workers serving several at once): its count may be below Duration's.
	CPU Histogram
}

// LabeledCount is a counter of failures with their labels; ErrorType is empty for
// gunicorn_worker_failed_requests_total.
type LabeledCount struct {
	Method, Endpoint, ErrorType string
	Count                       uint64
}

// WorkerSnapshot is one worker.
type WorkerSnapshot struct {
	ID           string
	PID          uint32
	ContainerPID uint32 // the PID the worker sees itself: PID outside a container
	State        string
	StateSince   time.Time
	Started      time.Time
	Uptime       float64 // seconds; frozen at exit
	Requests     uint64
	Duration     Histogram
	ReqSize      Histogram
	RespSize     Histogram
	Failed       []LabeledCount
	Errors       []LabeledCount
	InFlight     int
	BusySeconds  float64
	RSS          uint64
	CPUPercent   float64

	// HeartbeatAge is the seconds since the worker last touched its heartbeat file, when
	// HeartbeatKnown (a live worker whose file was read).
	HeartbeatAge   float64
	HeartbeatKnown bool
}

// Snapshot copies the current state. monoNow is the current CLOCK_MONOTONIC time in
// nanoseconds, used to include the busy time of requests still in flight.
func (a *Aggregator) Snapshot(monoNow uint64) Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.cfg.Now()
	s := Snapshot{Taken: now, Events: make(map[string]uint64), EventKinds: make([]string, 0, len(a.events)), ExitMark: a.exits}
	for k := events.KindFork; int(k) < len(a.events); k++ {
		if events.KindNames[k] == "" {
			continue // a kind no longer sent
		}
		s.EventKinds = append(s.EventKinds, k.String())
		if n := a.events[k]; n > 0 {
			s.Events[k.String()] = n
		}
	}
	byMaster := make(map[*master][]WorkerSnapshot)
	for _, w := range a.workers {
		if a.occupancy != nil && w.state != StateExited {
			if o, ok := a.occupancy(w.pid); ok {
				w.inFlight, w.busyNS, w.busySince = int(o.InFlight), o.BusyNS, o.BusySince
			} else {
				w.inFlight = 0 // exiting: its exit record brings the last busy time
			}
		}
		ws := WorkerSnapshot{
			ID: w.id, PID: w.pid, ContainerPID: w.pid, State: w.state, StateSince: w.stateSince, Started: w.started,
			Requests: w.requests, Duration: w.duration.clone(), ReqSize: w.reqSize.clone(),
			RespSize: w.respSize.clone(), InFlight: w.inFlight, RSS: w.rss, CPUPercent: w.cpu,
		}
		end := now
		if w.state == StateExited {
			end = w.stateSince
		}
		if w.containerPID != 0 {
			ws.ContainerPID = w.containerPID
		}
		ws.Uptime = end.Sub(w.started).Seconds()
		busy := w.busyNS
		if w.inFlight > 0 && monoNow > w.busySince {
			busy += monoNow - w.busySince
		}
		ws.BusySeconds = float64(busy) / 1e9
		a.heartbeatAge(&ws, now)
		for k, n := range w.failed {
			ws.Failed = append(ws.Failed, LabeledCount{Method: k.method, Endpoint: k.endpoint, Count: n})
		}
		for k, n := range w.errors {
			ws.Errors = append(ws.Errors, LabeledCount{Method: k.method, Endpoint: k.endpoint, ErrorType: k.errorType, Count: n})
		}
		sortCounts(ws.Failed)
		sortCounts(ws.Errors)
		byMaster[w.master] = append(byMaster[w.master], ws)
	}
	dirty := a.dirtyOf()
	for _, m := range a.masters {
		ms := MasterSnapshot{
			PID: m.pid, App: m.app, ContainerID: m.containerID, PodUID: m.podUID, Restarts: m.restarts, Queue: m.queue.clone(),
			Signals: copyMap(m.signals), Exits: copyMap(m.exits), Ignored: copyMap(m.ignored),
			Workers: byMaster[m], Downstream: downstreamCounts(m), Dirty: dirty[m],
		}
		sort.Slice(ms.Workers, func(i, j int) bool { return ms.Workers[i].ID < ms.Workers[j].ID })
		for _, w := range ms.Workers {
			if w.State != StateExited {
				ms.LiveWorkers++
			}
		}
		saturation(&ms, m)
		for k, n := range m.http {
			ms.HTTP = append(ms.HTTP, HTTPCount{Method: k.method, Endpoint: k.endpoint, Status: k.status, Count: n})
		}
		sort.Slice(ms.HTTP, func(i, j int) bool {
			x, y := ms.HTTP[i], ms.HTTP[j]
			if x.Endpoint != y.Endpoint {
				return x.Endpoint < y.Endpoint
			}
			if x.Method != y.Method {
				return x.Method < y.Method
			}
			return x.Status < y.Status
		})
		for k, rt := range m.routes {
			ms.Routes = append(ms.Routes, RouteHistogram{Method: k.method, Endpoint: k.endpoint, Duration: rt.duration.clone(), CPU: rt.cpu.clone()})
		}
		sort.Slice(ms.Routes, func(i, j int) bool {
			x, y := ms.Routes[i], ms.Routes[j]
			if x.Endpoint != y.Endpoint {
				return x.Endpoint < y.Endpoint
			}
			return x.Method < y.Method
		})
		s.Masters = append(s.Masters, ms)
	}
	sort.Slice(s.Masters, func(i, j int) bool { return s.Masters[i].PID < s.Masters[j].PID })
	return s
}

func sortCounts(c []LabeledCount) {
	sort.Slice(c, func(i, j int) bool {
		x, y := c[i], c[j]
		if x.Endpoint != y.Endpoint {
			return x.Endpoint < y.Endpoint
		}
		if x.Method != y.Method {
			return x.Method < y.Method
		}
		return x.ErrorType < y.ErrorType
	})
}

func copyMap(m map[string]uint64) map[string]uint64 {
	c := make(map[string]uint64, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
