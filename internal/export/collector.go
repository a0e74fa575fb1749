package export

import (
	"fmt"
	"runtime"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// Source is what the collector reads: the aggregator, or a fake in tests.
type Source interface {
	Snapshot(monoNow uint64) aggregate.Snapshot
	// Served is told, after a collection, the ExitMark of the snapshot it served, so that the
	// series of an exited worker go once they have been seen (aggregate.Config.ServedToDrop).
	Served(exitMark uint64)
}

// CollectorConfig says how series are labelled.
type CollectorConfig struct {
	// MasterLabel adds master_pid to every series (--discover).
	MasterLabel bool
	// ExpectedWorkers, when > 0, is exported as gunicorn_master_workers_expected (--workers).
	ExpectedWorkers int
	// Version and Revision (the commit) are gpe-ebpf's, for gpe_ebpf_build_info.
	Version, Revision string
	// Hooks is the kernel side's hook mode, for gpe_ebpf_hooks_info ("" exports none).
	Hooks string
	// Programs reads the BPF programs' run counters at scrape time, for gpe_ebpf_program_*
	// (nil exports none).
	Programs ProgramStats
}

// ProgramStats is where the collector reads the kernel's per-program run counters: the probes,
// or a fake in tests.
type ProgramStats interface {
	// ProgramStats returns each program's counters, and on = false while the kernel does not
	// count runs (kernel.bpf_stats_enabled is 0): the run series are then left out, not
	// frozen. Misses are counted always.
	ProgramStats() (stats []ProgramStat, on bool, err error)
}

// ProgramStat is one BPF program's counters, as the kernel keeps them.
type ProgramStat struct {
	Name    string        // the program's name in bpf/gpe.bpf.c
	Runs    uint64        // times it ran
	Runtime time.Duration // CPU time it ran for
	Misses  uint64        // runs the kernel skipped (one would have nested in another on its CPU)
}

// Collector is an unchecked-free prometheus.Collector over a Source: every scrape takes one
// snapshot, so all series of a scrape are consistent with each other.
type Collector struct {
	cfg     CollectorConfig
	src     Source
	lost    func() (uint64, error)
	monoNow func() uint64
	start   time.Time // when the collector began counting: the _created of gpe-ebpf's own counters

	workerRequests, workerDuration, workerMemory, workerCPU, workerUptime, workerState,
	workerFailed, workerErrors, workerInfo, masterRestarts, masterSignals,
	httpRequests, httpDuration, httpCPU, reqSize, respSize, inFlight, busy, masterWorkers,
	masterExpected, exits, masterInfo, events, lostDesc, buildInfo, hooksInfo, progRuns,
	progSeconds, progMisses, attached, ignored, queue *prometheus.Desc
	saturation saturation
	downstream downstream
	dirty      dirty
}

// NewCollector returns a collector over src. lost reads the kernel's lost-record counter.
func NewCollector(cfg CollectorConfig, src Source, lost func() (uint64, error), monoNow func() uint64) *Collector {
	c := &Collector{cfg: cfg, src: src, lost: lost, monoNow: monoNow, start: time.Now()}
	var base []string
	if cfg.MasterLabel {
		base = []string{"master_pid"}
	}
	l := func(names ...string) []string { return append(append([]string(nil), base...), names...) }
	d := prometheus.NewDesc
	c.workerRequests = d("gunicorn_worker_requests_total", "HTTP requests the worker answered (a status line was written), whatever the status.", l("worker_id"), nil)
	c.workerDuration = d("gunicorn_worker_request_duration_seconds", "Request duration: first request byte read to last response byte written.", l("worker_id"), nil)
	c.workerMemory = d("gunicorn_worker_memory_bytes", "Resident set size of the worker.", l("worker_id"), nil)
	c.workerCPU = d("gunicorn_worker_cpu_percent", "CPU used by the worker over the last sampling interval, percent of one core.", l("worker_id"), nil)
	c.workerUptime = d("gunicorn_worker_uptime_seconds", "Seconds since the worker was forked.", l("worker_id"), nil)
	c.workerState = d("gunicorn_worker_state", "Worker state (running, quitting, aborting, exited; exited has value 0); timestamp is the unix second of the last state change.", l("worker_id", "state", "timestamp"), nil)
	c.workerFailed = d("gunicorn_worker_failed_requests_total", "Requests answered with a 5xx status, or that ended with no response at all.", l("worker_id", "method", "endpoint"), nil)
	c.workerErrors = d("gunicorn_worker_error_handling_total", "Failed requests by error type: http_<code>, no_response, worker_timeout, worker_exit.", l("worker_id", "method", "endpoint", "error_type"), nil)
	c.workerInfo = d("gunicorn_worker_info", "Joins worker_id to the worker's PID (the host's) and to the PID it sees itself (container_pid, different inside a container); always 1.", l("worker_id", "pid", "container_pid"), nil)
	c.masterRestarts = d("gunicorn_master_worker_restarts_total", "Workers the master spawned to replace one that exited (reload, timeout, crash, max_requests).", base, nil)
	c.masterSignals = d("gunicorn_master_signals_total", "Signals delivered to the master, named as Gunicorn names them.", l("signal"), nil)
	c.httpRequests = d("gunicorn_http_requests_total", "Answered requests by method, endpoint and status code.", l("method", "endpoint", "status"), nil)
	c.queue = d("gunicorn_request_queue_seconds", "Time a TCP connection waited in the listener's accept queue: from the kernel establishing it to a worker's first read of its first request.", base, nil)
	c.httpDuration = d("gunicorn_http_request_duration_seconds", "Request duration by method and endpoint.", l("method", "endpoint"), nil)
	c.httpCPU = d("gunicorn_http_request_cpu_seconds", "On-CPU time of the thread that served the request, first read to last response write, by method and endpoint (requests served alone on their thread).", l("method", "endpoint"), nil)
	c.reqSize = d("gunicorn_worker_request_size_bytes", "Bytes read for the request.", l("worker_id"), nil)
	c.respSize = d("gunicorn_worker_response_size_bytes", "Bytes written for the response.", l("worker_id"), nil)
	c.inFlight = d("gunicorn_worker_requests_in_flight", "Requests read whose status line is not written yet.", l("worker_id"), nil)
	c.busy = d("gunicorn_worker_busy_seconds_total", "Time the worker had at least one request in flight.", l("worker_id"), nil)
	c.masterWorkers = d("gunicorn_master_workers", "Live workers of the master.", base, nil)
	c.masterExpected = d("gunicorn_master_workers_expected", "Workers the operator expects (--workers).", base, nil)
	c.exits = d("gunicorn_worker_exits_total", "Worker exits by reason: graceful, error, timeout, oom, signal.", l("reason"), nil)
	c.masterInfo = d("gunicorn_master_info", "An observed Gunicorn master, its application argument, and the container and Kubernetes pod its cgroup names (empty outside one); always 1.", []string{"master_pid", "app", "container_id", "pod_uid"}, nil)
	c.events = d("gpe_ebpf_events_total", "Ring-buffer records read, by kind.", []string{"kind"}, nil)
	c.lostDesc = d("gpe_ebpf_events_lost_total", "Records the kernel side could not submit to the ring buffer.", nil, nil)
	c.buildInfo = d("gpe_ebpf_build_info", "gpe-ebpf's version, commit, Go version and platform; always 1.", []string{"version", "revision", "goversion", "goos", "goarch"}, nil)
	c.attached = d("gpe_ebpf_masters_attached", "Gunicorn masters observed now (0 while --pid-file waits for one).", nil, nil)
	c.ignored = d("gpe_ebpf_ignored_requests_total", "Requests matching an --ignore-route template, counted nowhere else.", l("route"), nil)
	c.hooksInfo = d("gpe_ebpf_hooks_info", "How the kernel side sees socket calls: socket (tracepoints, Linux 6.3+), fentry, kprobe or syscall; always 1.", []string{"mode"}, nil)
	c.progRuns = d("gpe_ebpf_program_runs_total", "Times each BPF program ran, counted while kernel.bpf_stats_enabled is 1.", []string{"program"}, nil)
	c.saturation = newSaturation(base, l)
	c.dirty = newDirty(base, l)
	c.downstream = newDownstream(l)
	c.progSeconds = d("gpe_ebpf_program_run_seconds_total", "CPU time spent in each BPF program, counted while kernel.bpf_stats_enabled is 1.", []string{"program"}, nil)
	c.progMisses = d("gpe_ebpf_program_misses_total", "Runs of each BPF program the kernel skipped because one would have nested in another on its CPU.", []string{"program"}, nil)
	return c
}

// Describe sends every descriptor.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.workerRequests, c.workerDuration, c.workerMemory,
		c.workerCPU, c.workerUptime, c.workerState, c.workerFailed, c.workerErrors, c.workerInfo,
		c.masterRestarts, c.masterSignals, c.httpRequests, c.httpDuration, c.httpCPU, c.reqSize, c.respSize,
		c.inFlight, c.busy, c.masterWorkers, c.masterExpected, c.exits, c.masterInfo, c.events,
		c.lostDesc, c.buildInfo, c.hooksInfo, c.progRuns, c.progSeconds, c.progMisses, c.attached, c.ignored, c.queue} {
		ch <- d
	}
	c.saturation.describe(ch)
	c.downstream.describe(ch)
	c.dirty.describe(ch)
}

// Collect takes one snapshot and sends its series.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot(c.monoNow())
	defer c.src.Served(s.ExitMark)
	ch <- prometheus.MustNewConstMetric(c.buildInfo, prometheus.GaugeValue, 1, c.cfg.Version, c.cfg.Revision, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	ch <- prometheus.MustNewConstMetric(c.attached, prometheus.GaugeValue, float64(len(s.Masters)))
	for _, kind := range s.EventKinds {
		ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(c.events, prometheus.CounterValue, float64(s.Events[kind]), c.start, kind)
	}
	if c.lost != nil {
		if n, err := c.lost(); err == nil {
			ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(c.lostDesc, prometheus.CounterValue, float64(n), c.start)
		} else {
			ch <- prometheus.NewInvalidMetric(c.lostDesc, err)
		}
	}
	if c.cfg.Hooks != "" {
		ch <- prometheus.MustNewConstMetric(c.hooksInfo, prometheus.GaugeValue, 1, c.cfg.Hooks)
	}
	c.collectPrograms(ch)
	for i := range s.Masters {
		c.collectMaster(ch, &s.Masters[i])
	}
}

// collectPrograms sends the run counters of the BPF programs, if the kernel counts them.
func (c *Collector) collectPrograms(ch chan<- prometheus.Metric) {
	if c.cfg.Programs == nil {
		return
	}
	stats, on, err := c.cfg.Programs.ProgramStats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.progRuns, err)
		return
	}
	for _, st := range stats {
		ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(c.progMisses, prometheus.CounterValue, float64(st.Misses), c.start, st.Name)
		if !on {
			continue
		}
		ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(c.progRuns, prometheus.CounterValue, float64(st.Runs), c.start, st.Name)
		ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(c.progSeconds, prometheus.CounterValue, st.Runtime.Seconds(), c.start, st.Name)
	}
}

func (c *Collector) collectMaster(ch chan<- prometheus.Metric, m *aggregate.MasterSnapshot) {
	mpid := strconv.FormatUint(uint64(m.PID), 10)
	lv := func(values ...string) []string {
		if c.cfg.MasterLabel {
			return append([]string{mpid}, values...)
		}
		return values
	}
	// The master's series have no known start (its attach time is not in the snapshot): no
	// _created. A worker's began at its fork, or at gpe-ebpf's start for one already running.
	counter := func(d *prometheus.Desc, v float64, values ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, lv(values...)...)
	}
	workerCounter := func(d *prometheus.Desc, v float64, ctime time.Time, values ...string) {
		ch <- prometheus.MustNewConstMetricWithCreatedTimestamp(d, prometheus.CounterValue, v, ctime, lv(values...)...)
	}
	gauge := func(d *prometheus.Desc, v float64, values ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, lv(values...)...)
	}
	hist := func(d *prometheus.Desc, h aggregate.Histogram, ctime time.Time, values ...string) {
		ch <- newHistogramMetric(d, h, ctime, lv(values...))
	}

	ch <- prometheus.MustNewConstMetric(c.masterInfo, prometheus.GaugeValue, 1, mpid, m.App, m.ContainerID, m.PodUID)
	counter(c.masterRestarts, float64(m.Restarts))
	hist(c.queue, m.Queue, time.Time{})
	gauge(c.masterWorkers, float64(m.LiveWorkers))
	if c.cfg.ExpectedWorkers > 0 {
		gauge(c.masterExpected, float64(c.cfg.ExpectedWorkers))
	}
	c.saturation.collect(m, gauge)
	c.dirty.collect(m, gauge)
	for sig, n := range m.Signals {
		counter(c.masterSignals, float64(n), sig)
	}
	for _, reason := range []string{aggregate.ExitGraceful, aggregate.ExitError, aggregate.ExitTimeout, aggregate.ExitOOM, aggregate.ExitSignal} {
		counter(c.exits, float64(m.Exits[reason]), reason)
	}
	for _, h := range m.HTTP {
		counter(c.httpRequests, float64(h.Count), h.Method, h.Endpoint, strconv.Itoa(int(h.Status)))
	}
	for _, r := range m.Routes {
		hist(c.httpDuration, r.Duration, time.Time{}, r.Method, r.Endpoint)
		if r.CPU.Count > 0 {
			hist(c.httpCPU, r.CPU, time.Time{}, r.Method, r.Endpoint)
		}
	}
	c.downstream.collect(m, counter)
	for route, n := range m.Ignored {
		counter(c.ignored, float64(n), route)
	}
	for i := range m.Workers {
		w := &m.Workers[i]
		id := w.ID
		ctime := w.Started
		if ctime.Before(c.start) {
			ctime = c.start
		}
		workerCounter(c.workerRequests, float64(w.Requests), ctime, id)
		hist(c.workerDuration, w.Duration, ctime, id)
		hist(c.reqSize, w.ReqSize, ctime, id)
		hist(c.respSize, w.RespSize, ctime, id)
		gauge(c.workerMemory, float64(w.RSS), id)
		gauge(c.workerCPU, w.CPUPercent, id)
		gauge(c.workerUptime, w.Uptime, id)
		state := 1.0
		if w.State == aggregate.StateExited {
			state = 0
		}
		gauge(c.workerState, state, id, w.State, fmt.Sprint(w.StateSince.Unix()))
		gauge(c.workerInfo, 1, id, strconv.FormatUint(uint64(w.PID), 10), strconv.FormatUint(uint64(w.ContainerPID), 10))
		gauge(c.inFlight, float64(w.InFlight), id)
		workerCounter(c.busy, w.BusySeconds, ctime, id)
		for _, f := range w.Failed {
			workerCounter(c.workerFailed, float64(f.Count), ctime, id, f.Method, f.Endpoint)
		}
		for _, e := range w.Errors {
			workerCounter(c.workerErrors, float64(e.Count), ctime, id, e.Method, e.Endpoint, e.ErrorType)
		}
	}
}
