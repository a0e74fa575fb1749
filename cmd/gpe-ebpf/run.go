package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/export"
	"github.com/gpe-ebpf/gpe-ebpf/internal/listeners"
	"github.com/gpe-ebpf/gpe-ebpf/internal/multiproc"
	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
	"github.com/gpe-ebpf/gpe-ebpf/internal/redisfwd"
)

// agent ties the kernel side, the aggregate and the exporter together.
type agent struct {
	cfg    Config
	log    *slog.Logger
	probes *probes.Probes
	agg    *aggregate.Aggregator

	mu       sync.Mutex
	attached map[uint32]bool // masters attached by us (not via USR2 exec)

	masterGone chan uint32
}

// checkTarget refuses a PID that is not a Gunicorn master (unless --force).
func checkTarget(pid uint32, force bool) (proc.Info, error) {
	info, err := proc.Read(pid)
	if errors.Is(err, proc.ErrNoProcess) {
		return info, usagef("pid %d: no such process", pid)
	}
	if err != nil {
		return info, usagef("pid %d: %v", pid, err)
	}
	if force {
		return info, nil
	}
	if !proc.LooksLikeGunicorn(info.Cmdline) {
		return info, usagef("pid %d (%s) is not a Gunicorn master: no \"gunicorn\" in its command line or title; use --force to attach anyway", pid, shortCmd(info.Cmdline))
	}
	if parent, err := proc.Read(info.PPID); err == nil && proc.LooksLikeGunicorn(parent.Cmdline) {
		return info, usagef("pid %d is a Gunicorn worker, not the master: its master is pid %d (use --pid %d)", pid, info.PPID, info.PPID)
	}
	return info, nil
}

func shortCmd(c []string) string {
	s := strings.Join(c, " ")
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	if s == "" {
		s = "no command line"
	}
	return s
}

// readPIDFile reads a Gunicorn pid file.
func readPIDFile(path string) (uint32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("--pid-file: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("--pid-file %s: no PID in it (%q)", path, strings.TrimSpace(string(b)))
	}
	return uint32(n), nil
}

func run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	// Validate the target before touching the kernel.
	var first []proc.Info
	switch {
	case cfg.PID != 0:
		info, err := checkTarget(cfg.PID, cfg.Force)
		if err != nil {
			return err
		}
		first = append(first, info)
	case cfg.PIDFile != "":
		pid, err := readPIDFile(cfg.PIDFile)
		if err != nil {
			return usageError{err}
		}
		info, err := checkTarget(pid, cfg.Force)
		if err != nil {
			return err
		}
		first = append(first, info)
	}
	if err := probes.CheckPrivileges(); err != nil {
		return usageError{err}
	}

	start := time.Now()
	p, err := probes.Load(cfg.Probes)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return usageError{fmt.Errorf("load BPF programs: %w (needs root, or CAP_BPF and CAP_PERFMON)", err)}
		}
		return fmt.Errorf("load BPF programs: %w", err)
	}
	defer p.Close()

	a := &agent{
		cfg: cfg, log: logger, probes: p, agg: aggregate.New(cfg.Aggregate),
		attached: make(map[uint32]bool), masterGone: make(chan uint32, 16),
	}
	for _, info := range first {
		if err := a.attach(info); err != nil {
			return err
		}
	}
	if cfg.Discover {
		a.discover()
	}
	logger.Info("attached", "masters", a.agg.Masters(), "workers", len(a.agg.LiveWorkers()), "took", time.Since(start).Round(time.Millisecond))

	// The registry: our collector, the app's multiprocess files, Redis's own counters,
	// and gpe-ebpf's Go and process collectors.
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		export.NewCollector(export.CollectorConfig{MasterLabel: cfg.Discover, ExpectedWorkers: cfg.Workers, Version: version},
			a.agg, p.Lost, aggregate.MonotonicNow),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// The listener gauges: every master's listening sockets, read from sock_diag at scrape time.
	lr := listeners.NewReader(listeners.DefaultConfig(), logger)
	defer lr.Close()
	reg.MustRegister(export.NewListenerCollector(export.CollectorConfig{MasterLabel: cfg.Discover}, a.agg.Masters, lr))
	if cfg.Multiproc != "" {
		reg.MustRegister(multiproc.NewCollector(cfg.Multiproc, a.multiprocLive, logger))
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	readerDone := make(chan struct{})
	go func() {
		defer wg.Done()
		defer close(readerDone)
		a.read()
	}()

	var fwd *redisfwd.Forwarder
	if cfg.Redis.Enabled {
		fwd, err = redisfwd.NewForwarder(cfg.Redis, reg, func() []int {
			var out []int
			for _, m := range a.agg.Masters() {
				out = append(out, int(m))
			}
			return out
		}, logger)
		if err != nil {
			return usageError{fmt.Errorf("redis: %w", err)}
		}
		reg.MustRegister(fwd.Collectors()...)
	}

	l, err := export.Listen(ctx, cfg.Server, logger)
	if err != nil && ctx.Err() != nil {
		// SIGINT/SIGTERM while waiting for a taken port is a normal stop (CONTRACT §7).
		logger.Info("stopping")
		cancel()
		p.Close()
		wg.Wait()
		return nil
	}
	if err != nil {
		if errors.Is(err, export.ErrPortInUse) {
			return usageError{err}
		}
		return err
	}
	logger.Info("serving metrics", "address", l.Addr().String(), "path", cfg.Server.MetricsPath)

	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := export.Serve(ctx, l, cfg.Server, export.Handler(cfg.Server, reg, logger), logger); err != nil {
			errc <- fmt.Errorf("serve metrics: %w", err)
		}
	}()
	if fwd != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fwd.Run(ctx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		a.housekeeping(ctx)
	}()

	var result error
loop:
	for {
		select {
		case <-ctx.Done():
			logger.Info("stopping")
			break loop
		case err := <-errc:
			result = err
			break loop
		case <-readerDone:
			result = errors.New("ring buffer reader stopped")
			break loop
		case pid := <-a.masterGone:
			logger.Info("master exited", "master_pid", pid)
			if len(a.agg.Masters()) > 0 || cfg.Discover {
				continue
			}
			if cfg.PIDFile != "" {
				logger.Info("waiting for the pid file to name a new master", "pid_file", cfg.PIDFile)
				continue
			}
			logger.Info("no master left to observe, exiting")
			break loop
		}
	}
	cancel()
	// Close the reader first so a blocked Read returns, then wait for everything.
	p.Close()
	wg.Wait()
	return result
}

// attach tracks a master and the workers it already has.
func (a *agent) attach(info proc.Info) error {
	m := info.PID
	if err := a.probes.Track(m, m, probes.ProcMaster); err != nil {
		return err
	}
	a.agg.AddMaster(m, info.Started, proc.App(info.Cmdline))
	// Listed after the master is tracked, so a worker forked meanwhile is seen either way.
	kids, err := proc.Children(m)
	if err != nil {
		return err
	}
	var pids []uint32
	var started []time.Time
	for _, k := range kids {
		if err := a.probes.Track(k.PID, m, probes.ProcWorker); err != nil {
			return err
		}
		pids = append(pids, k.PID)
		started = append(started, k.Started)
	}
	a.agg.SeedWorkers(m, pids, started)
	a.mu.Lock()
	a.attached[m] = true
	a.mu.Unlock()
	a.log.Info("attached to master", "master_pid", m, "app", proc.App(info.Cmdline), "workers", pids)
	return nil
}

// read turns ring-buffer records into aggregate updates until the probes are closed.
func (a *agent) read() {
	var ev probes.Event
	for {
		err := a.probes.Read(&ev)
		if errors.Is(err, probes.ErrClosed) {
			return
		}
		if err != nil {
			a.log.Warn("read event", "error", err)
			continue
		}
		a.agg.Handle(&ev)
		switch {
		case ev.Kind == probes.KindExit && ev.ProcKind == probes.ProcMaster:
			a.mu.Lock()
			delete(a.attached, ev.TGID)
			a.mu.Unlock()
			select {
			case a.masterGone <- ev.TGID:
			default:
			}
		case ev.Kind == probes.KindExec && ev.ProcKind == probes.ProcWorker:
			a.log.Info("new master after an upgrade (USR2)", "master_pid", ev.TGID, "old_master_pid", ev.Other)
		case ev.Kind == probes.KindSignal && ev.ProcKind == probes.ProcWorker:
			a.log.Debug("worker signalled", "master_pid", ev.Master, "worker_pid", ev.TGID, "sender_pid", ev.Other,
				"signal", aggregate.SignalName(ev.Code), "state", a.agg.State(ev.TGID))
		case ev.Kind == probes.KindFork:
			a.log.Debug("worker spawned", "master_pid", ev.Other, "worker_pid", ev.TGID)
		case ev.Kind == probes.KindExit:
			a.log.Debug("worker exited", "master_pid", ev.Master, "worker_pid", ev.TGID, "status", ev.Code)
		}
	}
}

// housekeeping samples workers, drops stale series, and follows the pid file or the host's
// masters.
func (a *agent) housekeeping(ctx context.Context) {
	sampler := proc.NewSampler()
	a.sample(sampler)
	sample := time.NewTicker(a.cfg.SampleInterval)
	defer sample.Stop()
	rescan := time.NewTicker(a.cfg.RescanInterval)
	defer rescan.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-sample.C:
			a.sample(sampler)
			a.agg.Expire()
		case <-rescan.C:
			a.dropGoneMasters()
			if a.cfg.Discover {
				a.discover()
			}
			if a.cfg.PIDFile != "" {
				a.followPIDFile()
			}
		}
	}
}

// dropGoneMasters forgets masters whose process is gone although no exit event said so: an
// exit record dropped in the kernel (gpe_ebpf_events_lost_total) must not leave a master
// observed, and its series served, forever, nor keep --pid from exiting.
func (a *agent) dropGoneMasters() {
	for _, m := range a.agg.Masters() {
		if proc.Alive(m) {
			continue
		}
		a.log.Warn("master is gone but its exit was not seen (events lost?); dropping it", "master_pid", m)
		a.agg.RemoveMaster(m)
		if err := a.probes.Untrack(m); err != nil {
			a.log.Debug("untrack", "master_pid", m, "error", err)
		}
		select {
		case a.masterGone <- m:
		default:
		}
	}
}

func (a *agent) sample(s *proc.Sampler) {
	live := make(map[uint32]bool)
	for _, pid := range a.agg.LiveWorkers() {
		info, err := proc.Read(pid)
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
	s.Forget(live)
}

// discover attaches every Gunicorn master not observed yet. Masters that exit are dropped
// by their exit event.
func (a *agent) discover() {
	masters, err := proc.Masters()
	if err != nil {
		a.log.Warn("discover masters", "error", err)
		return
	}
	known := make(map[uint32]bool)
	for _, m := range a.agg.Masters() {
		known[m] = true
	}
	for _, m := range masters {
		if known[m.PID] {
			continue
		}
		if err := a.attach(m); err != nil {
			a.log.Warn("attach discovered master", "master_pid", m.PID, "error", err)
		}
	}
}

// followPIDFile attaches the master the pid file names, if it is a new one.
func (a *agent) followPIDFile() {
	pid, err := readPIDFile(a.cfg.PIDFile)
	if err != nil {
		return // between a service's stop and start the file may be missing
	}
	for _, m := range a.agg.Masters() {
		if m == pid {
			return
		}
	}
	info, err := checkTarget(pid, a.cfg.Force)
	if err != nil {
		a.log.Warn("pid file names a process that is not a Gunicorn master", "pid", pid, "error", err)
		return
	}
	if err := a.attach(info); err != nil {
		a.log.Warn("re-attach", "master_pid", pid, "error", err)
	}
}

// multiprocLive tells the multiprocess collector whether the process that wrote a live*
// gauge file still runs. A worker of a master we observe is alive until we see its exit from
// the kernel (its /proc entry outlives that event for a moment). Any other process writing
// to the directory (a cron job, a sidecar, a worker's own subprocess) is alive while /proc
// shows it running and not a zombie: without that fallback it would never count, where the
// Python exporter counted it.
func (a *agent) multiprocLive(pid int) bool {
	if pid <= 0 || pid > 1<<22 {
		return false
	}
	if a.agg.IsLive(uint32(pid)) {
		return true
	}
	stat, err := os.ReadFile(filepath.Join(proc.Root, strconv.Itoa(pid), "stat"))
	if err != nil {
		return false
	}
	// "pid (comm) state ppid ...": the fields after the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 2 || f[0] == "Z" || f[0] == "X" || f[0] == "x" {
		return false
	}
	ppid, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return false
	}
	for _, m := range a.agg.Masters() {
		if uint32(ppid) == m {
			return false // one of our workers: it exited, as we saw
		}
	}
	return true
}
