package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/gpe-ebpf/gpe-ebpf/internal/agent"
	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/export"
	"github.com/gpe-ebpf/gpe-ebpf/internal/listeners"
	"github.com/gpe-ebpf/gpe-ebpf/internal/multiproc"
	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
	"github.com/gpe-ebpf/gpe-ebpf/internal/redisfwd"
)

// run checks the target and the privileges, loads the probes, attaches, and serves until a
// signal, the agent's end (the last master exited) or a failure.
func run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	a, err := agent.New(cfg.Agent, logger) // the target, before touching the kernel
	if err != nil {
		return err
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
	logger.Info("BPF programs loaded", "hooks", p.Hooks())
	if err := a.Attach(p); err != nil {
		return err
	}
	agg := a.Aggregator()
	logger.Info("attached", "masters", agg.Masters(), "workers", len(agg.LiveWorkers()), "took", time.Since(start).Round(time.Millisecond))

	// The registry: our collector, the app's multiprocess files, Redis's own counters,
	// and gpe-ebpf's Go and process collectors.
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		export.NewCollector(export.CollectorConfig{MasterLabel: cfg.Agent.Discover, ExpectedWorkers: cfg.Workers, Version: version, Hooks: p.Hooks(), Programs: programStats{p}, Revision: commit},
			agg, p.Lost, aggregate.MonotonicNow),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	// The listener gauges: every master's listening sockets, read from sock_diag at scrape time.
	lr := listeners.NewReader(listeners.DefaultConfig(), logger)
	defer lr.Close()
	reg.MustRegister(export.NewListenerCollector(export.CollectorConfig{MasterLabel: cfg.Agent.Discover}, agg.Masters, lr))
	if cfg.Multiproc != "" {
		reg.MustRegister(multiproc.NewCollector(cfg.Multiproc, a.MultiprocLive, logger))
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	agentDone := make(chan error, 1)
	go func() { agentDone <- a.Run(ctx) }()
	// stop ends everything: the agent closes the probes before it returns.
	stop := func(result error) error {
		cancel()
		if agentDone != nil {
			if err := <-agentDone; result == nil {
				result = err
			}
		}
		wg.Wait()
		return result
	}

	var fwd *redisfwd.Forwarder
	if cfg.Redis.Enabled {
		if fwd, err = redisfwd.NewForwarder(cfg.Redis, reg, a.Masters, logger); err != nil {
			return stop(usageError{fmt.Errorf("redis: %w", err)})
		}
		reg.MustRegister(fwd.Collectors()...)
		fwd.NotifyForwarded(agg.BeginForward)
	}

	if cfg.OTLP.Endpoint != "" {
		pusher, err := export.NewOTLPPusher(cfg.OTLP, reg, logger)
		if err != nil {
			return stop(usageError{err})
		}
		reg.MustRegister(pusher)
		wg.Add(1)
		go func() {
			defer wg.Done()
			pusher.Run(ctx)
		}()
		logger.Info("pushing metrics over OTLP", "endpoint", cfg.OTLP.Endpoint, "interval", cfg.OTLP.Interval)
	}

	l, err := export.Listen(ctx, cfg.Server, logger)
	if err != nil && ctx.Err() != nil {
		// SIGINT/SIGTERM while waiting for a taken port is a normal stop (README "Failure behaviour").
		logger.Info("stopping")
		return stop(nil)
	}
	if err != nil {
		if errors.Is(err, export.ErrPortInUse) {
			err = usageError{err}
		}
		return stop(err)
	}
	logger.Info("serving metrics", "address", l.Addr().String(), "path", cfg.Server.MetricsPath)

	errc := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := export.Serve(ctx, l, cfg.Server, export.Handler(cfg.Server, reg, ready(cfg.Agent.Discover, agg), logger), logger); err != nil {
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

	select {
	case <-ctx.Done():
		logger.Info("stopping")
		return stop(nil)
	case err := <-errc:
		return stop(err)
	case err := <-agentDone:
		agentDone = nil
		return stop(err)
	}
}

// programStats hands the probes' run counters to the exporter, which knows no probes.
type programStats struct{ p *probes.Probes }

func (s programStats) ProgramStats() ([]export.ProgramStat, bool, error) {
	stats, on, err := s.p.ProgramStats()
	out := make([]export.ProgramStat, len(stats))
	for i, st := range stats {
		out[i] = export.ProgramStat{Name: st.Name, Runs: st.Runs, Runtime: st.Runtime}
	}
	return out, on, err
}

// ready is /-/ready's test: attached to a master; with --discover, serving at all (the first
// scan ran before the server started), since a node that runs no Gunicorn is in order and
// an unready DaemonSet pod would hold back every rolling update.
func ready(discover bool, agg *aggregate.Aggregator) func() bool {
	return func() bool { return discover || len(agg.Masters()) > 0 }
}
