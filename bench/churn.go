package main

import (
	"context"
	"fmt"
	"slices"
	"time"
)

// churnArms are the arms of the churn phase: gpe-ebpf with the TLS uprobes in auto (the
// default) and off, on a plain-HTTP Gunicorn whose workers restart every 50 requests, and the
// same gpe-ebpf on a Gunicorn without --max-requests (the cost of the requests alone), and
// with no load at all (its cost per second: the ring drains and the sampling).
var churnArms = []string{"idle", "steady", "churn-off", "churn-auto"}

// churnPhase measures what worker churn costs gpe-ebpf (issue 25): 2 sync workers on plain
// HTTP with --max-requests 50, saturated by wrk, observed in the first hook mode. Each run
// reads gpe-ebpf's CPU (scheduler time of all its threads) and the restarts it counted
// (gunicorn_master_worker_restarts_total). Per restart, the idle cost of the run's time and
// the steady cost of its requests are taken off: what remains is what a restart itself costs.
func (s *session) churnPhase(ctx context.Context) error {
	o := s.o
	churning, err := s.gunicorn(2, "--max-requests", "50")
	if err != nil {
		return err
	}
	defer churning.stop()
	steady, err := s.gunicorn(2)
	if err != nil {
		return err
	}
	defer steady.stop()
	mode := s.modes[0]
	fmt.Printf("\n[churn] %d rounds of %v in %s mode, wrk -t%d -c%d -d%s, --max-requests 50 (steady: none)\n",
		o.churnPairs, churnArms, mode, o.wrkThreads, o.wrkConns, o.churnRun)
	type churnRun struct{ cpuMS, requests, restarts float64 }
	byArm := map[string][]churnRun{}
	err = eachRound(ctx, o.churnPairs, churnArms, func(pair int, arm string) error {
		g, tls := churning, "auto"
		switch arm {
		case "idle", "steady":
			g = steady
		case "churn-off":
			tls = "off"
		}
		ob, err := s.observe(g.pid(), mode, "--tls-uprobes", tls)
		if err != nil {
			return err
		}
		defer ob.stop()
		pid := ob.cmd.Process.Pid
		time.Sleep(200 * time.Millisecond)
		before, err := scrape(ob.metricsURL())
		if err != nil {
			return err
		}
		c0 := onCPU(pid)
		var w wrkResult
		if arm == "idle" {
			time.Sleep(o.churnRun)
		} else if w, err = runWrk(ctx, g.url("/ok"), o.wrkThreads, o.wrkConns, o.churnRun, ""); err != nil {
			return err
		}
		time.Sleep(400 * time.Millisecond) // the last exits and forks are read and handled
		cpu := onCPU(pid) - c0
		after, err := scrape(ob.metricsURL())
		if err != nil {
			return err
		}
		const restarts = "gunicorn_master_worker_restarts_total"
		r := churnRun{cpuMS: ms(cpu), requests: float64(w.Requests), restarts: metricSum(after, restarts) - metricSum(before, restarts)}
		byArm[arm] = append(byArm[arm], r)
		s.res.Runs = append(s.res.Runs, run{Phase: "churn", Arm: arm, Pair: pair, Wrk: w, ObserverPID: pid,
			ObserverUS: float64(cpu) / 1e3 / max(r.requests, 1), Lost: metricSum(after, "gpe_ebpf_events_lost_total")})
		fmt.Printf("  round %2d %-10s %7.0f requests %5.0f restarts  gpe-ebpf CPU %7.1f ms\n", pair, arm, r.requests, r.restarts, r.cpuMS)
		return nil
	})
	if err != nil {
		return err
	}
	// gpe-ebpf's CPU is idle time (per second) + requests + restarts: the idle arm gives the
	// first, the steady arm the second, and what remains of a churn run is its restarts'.
	secs := o.churnRun.Seconds()
	var idlePerSec, steadyPerReq []float64
	for _, r := range byArm["idle"] {
		idlePerSec = append(idlePerSec, r.cpuMS/secs)
	}
	idle := median(slices.Sorted(slices.Values(idlePerSec)))
	for _, r := range byArm["steady"] {
		steadyPerReq = append(steadyPerReq, (r.cpuMS-idle*secs)/max(r.requests, 1))
		if r.restarts != 0 {
			s.res.note("churn: the steady Gunicorn restarted %v workers in a run", r.restarts)
		}
	}
	perReq := median(slices.Sorted(slices.Values(steadyPerReq)))
	s.res.add(
		newFigure("churn: gpe-ebpf CPU per second, idle", "ms", idlePerSec, "", nil),
		newFigure("churn: gpe-ebpf CPU per 1,000 requests, no churn, less idle", "ms", scale(steadyPerReq, 1000), "", nil),
	)
	for _, arm := range churnArms[2:] { // the churn arms
		var per1000, perRestart, marginal []float64
		for _, r := range byArm[arm] {
			per1000 = append(per1000, 1000*r.cpuMS/max(r.requests, 1))
			perRestart = append(perRestart, r.cpuMS/max(r.restarts, 1))
			marginal = append(marginal, (r.cpuMS-idle*secs-perReq*r.requests)/max(r.restarts, 1))
		}
		target, ok := "", (func(float64) bool)(nil)
		if arm == "churn-auto" {
			target, ok = "≤ 1", atMost(1)
		}
		s.res.add(
			newFigure("churn "+arm+": gpe-ebpf CPU per 1,000 requests", "ms", per1000, "", nil),
			newFigure("churn "+arm+": gpe-ebpf CPU per restart, all of it", "ms", perRestart, "", nil),
			newFigure("churn "+arm+": gpe-ebpf CPU per restart, less idle and requests", "ms", marginal, target, ok),
		)
	}
	return nil
}
