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
	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
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
	logger.Info("BPF programs loaded", "hooks", p.Hooks(), "object", p.Object())
	if err := a.Attach(p); err != nil {
		return err
	}
	agg := a.Aggregator()
	logger.Info("attached", "masters", agg.Masters(), "workers", len(agg.LiveWorkers()), "took", time.Since(start).Round(time.Millisecond))

	// The registry: ours, the listeners' and the drops' (read at scrape time), Go's and the process's.
	reg := prometheus.NewRegistry()
	lr := listeners.NewReader(listeners.DefaultConfig(), logger)
	lr.SetWorkers(agg.WorkersOf)
	defer lr.Close()
	reg.MustRegister(
		export.NewCollector(export.CollectorConfig{MasterLabel: cfg.Agent.Discover, ExpectedWorkers: cfg.Workers, Version: version, Hooks: p.Hooks(), Programs: programStats{p}, Revision: commit},
			agg, p.Lost, events.MonotonicNow),
		export.NewListenerCollector(export.CollectorConfig{MasterLabel: cfg.Agent.Discover}, agg.Masters, lr),
		export.NewDropCollector(p.Dropped),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	if cfg.Multiproc != "" {
		reg.MustRegister(multiproc.NewCollector(cfg.Multiproc, a.MultiprocLive, logger))
	}
	return serve(ctx, cfg, a, reg, logger)
}

// serve runs the attached agent, forwards to Redis and serves reg until a signal, the agent's
// end or a failure.
func serve(ctx context.Context, cfg Config, a *agent.Agent, reg *prometheus.Registry, logger *slog.Logger) error {
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

	agg := a.Aggregator()
	var fwd *redisfwd.Forwarder
	if cfg.Redis.Enabled {
		var err error
		if fwd, err = redisfwd.NewForwarder(cfg.Redis, reg, a.Masters, logger); err != nil {
			return stop(usageError{fmt.Errorf("redis: %w", err)})
		}
		reg.MustRegister(fwd.Collectors()...)
		fwd.NotifyForwarded(agg.BeginForward)
	}

	if err := export.StartOTLP(ctx, cfg.OTLP, reg, &wg, logger); err != nil {
		return stop(usageError{err})
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
	wg.Go(func() {
		if err := export.Serve(ctx, l, cfg.Server, export.Handler(cfg.Server, reg, ready(cfg.Agent.Discover, agg), logger), logger); err != nil {
			errc <- fmt.Errorf("serve metrics: %w", err)
		}
	})
	if fwd != nil {
		wg.Go(func() { fwd.Run(ctx) })
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
		out[i] = export.ProgramStat{Name: st.Name, Runs: st.Runs, Runtime: st.Runtime, Misses: st.Misses}
	}
	return out, on, err
}

// ready is /-/ready's test: attached to a master; with --discover, serving at all (the first
// scan ran before the server started), since a node that runs no Gunicorn is in order and
// an unready DaemonSet pod would hold back every rolling update.
func ready(discover bool, agg *aggregate.Aggregator) func() bool {
	return func() bool { return discover || len(agg.Masters()) > 0 }
}
