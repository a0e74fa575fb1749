package main

import (
	"context"
	"fmt"
	"time"
)

// throughputPhase saturates 2 sync workers with wrk on /ok, in rounds that each run every arm
// once: unobserved twice ("off", and "off-again", whose ratio to "off" is the resolution of
// the comparison), observed in each hook mode, and with empty programs on socket mode's hooks
// (emptyArm: the floor). The order flips every round. It yields the
// throughput ratios, the CPU per request of the workers, wrk and gpe-ebpf, and the exactness
// of the counts.
func (s *session) throughputPhase(ctx context.Context, g *gunicorn) error {
	o := s.o
	arms := append(append([]string{"off-again", "off"}, s.modes...), emptyArm)
	fmt.Printf("\n[throughput] %d rounds of %v, wrk -t%d -c%d -d%s %s\n", o.pairs, arms, o.wrkThreads, o.wrkConns, o.run, g.url("/ok"))
	workers := children(g.pid())
	rps := map[string][]float64{}
	byArm := map[string][]run{}
	var socketErrs uint64
	err := eachRound(ctx, o.pairs, arms, func(pair int, arm string) error {
		r, err := s.throughputRun(ctx, g, workers, arm, pair)
		if err != nil {
			return err
		}
		socketErrs += r.Wrk.SocketErrors + r.Wrk.Non2xx
		rps[arm] = append(rps[arm], r.Wrk.PerSec)
		byArm[arm] = append(byArm[arm], r)
		s.res.Runs = append(s.res.Runs, r)
		fmt.Printf("  round %2d %-10s %8.0f req/s %7d requests  CPU µs/request: workers %6.1f wrk %5.1f",
			pair, arm, r.Wrk.PerSec, r.Wrk.Requests, r.WorkerUS, r.WrkUS)
		endRoundLine(r)
		return nil
	})
	if err != nil {
		return err
	}
	field := func(arm string, f func(run) float64) []float64 {
		var out []float64
		for _, r := range byArm[arm] {
			out = append(out, f(r))
		}
		return out
	}
	worker := func(r run) float64 { return r.WorkerUS }
	wrkCPU := func(r run) float64 { return r.WrkUS }
	total := func(r run) float64 { return r.WorkerUS + r.WrkUS + r.ObserverUS }
	minus := func(a, b []float64) []float64 {
		var out []float64
		for i := range min(len(a), len(b)) {
			out = append(out, a[i]-b[i])
		}
		return out
	}
	s.res.add(
		newFigure("control: unobserved ÷ unobserved (the resolution)", "ratio", ratios(rps["off-again"], rps["off"]), "", nil),
		newFigure("unobserved throughput", "req/s", rps["off"], "", nil),
		newFigure("CPU per request, unobserved: workers + wrk", "µs", field("off", total), "", nil),
	)
	for _, m := range s.modes {
		t := targetsFor(m)
		var both []float64
		for i := range rps[m] {
			both = append(both, rps[m][i]/((rps["off"][i]+rps["off-again"][i])/2))
		}
		var diffs, lost []float64
		for _, r := range byArm[m] {
			diffs = append(diffs, r.Counted-float64(r.Wrk.Requests))
			lost = append(lost, r.Lost)
		}
		exact := exactFigure(m+": exactness, counted − wrk completed", diffs, o.wrkConns)
		s.res.add(
			newFigure(m+": throughput ratio", "observed/unobserved", ratios(rps[m], rps["off"]), t.ratio.text, t.ratio.ok),
			newFigure(m+":   same, against both unobserved runs", "observed/unobserved", both, "", nil),
			newFigure(m+": gpe-ebpf CPU per request", "µs", field(m, func(r run) float64 { return r.ObserverUS }), t.observer.text, t.observer.ok),
			newFigure(m+": workers' CPU per request, observed ÷ unobserved", "ratio", ratios(field(m, worker), field("off", worker)), "", nil),
			newFigure(m+":   added: workers (BPF in their socket calls)", "µs", minus(field(m, worker), field("off", worker)), "", nil),
			newFigure(m+":   added: wrk (BPF in its socket calls)", "µs", minus(field(m, wrkCPU), field("off", wrkCPU)), "", nil),
			newFigure(m+":   added: total, gpe-ebpf included", "µs", minus(field(m, total), field("off", total)), "", nil),
			exact,
			zeroFigure(m+": events lost", lost),
		)
		var ticks, reqs float64
		for _, r := range byArm[m] {
			ticks += float64(r.CPUTicks)
			reqs += float64(r.Wrk.Requests)
		}
		s.res.note("%s: gpe-ebpf CPU pooled over its throughput runs: %.2f µs/request (%.0f ticks of 10 ms over %.0f requests)", m, ticks*1e6/clkTck/reqs, ticks, reqs)
	}
	s.res.add(
		newFigure("floor: empty programs on "+fmt.Sprint(floorHooks)+": throughput ratio", "observed/unobserved", ratios(rps[emptyArm], rps["off"]), "", nil),
		newFigure("floor:   added: workers", "µs", minus(field(emptyArm, worker), field("off", worker)), "", nil),
		newFigure("floor:   added: wrk", "µs", minus(field(emptyArm, wrkCPU), field("off", wrkCPU)), "", nil),
	)
	s.res.note("throughput: wrk socket errors + non-2xx over all runs: %d", socketErrs)
	return nil
}

// throughputRun is one wrk run of an arm: unobserved, with empty programs on the hooks
// (emptyArm), or with a gpe-ebpf started for it in that hook mode (and stopped after).
func (s *session) throughputRun(ctx context.Context, g *gunicorn, workers []int, arm string, pair int) (run, error) {
	r := run{Phase: "throughput", Arm: arm, Pair: pair}
	var err error
	if arm == "off" || arm == "off-again" || arm == emptyArm {
		if arm == emptyArm {
			undo, err := emptyHooks()
			if err != nil {
				return r, err
			}
			defer undo()
		}
		w0 := onCPU(workers...)
		if r.Wrk, err = s.runLoad(ctx, g.url("/ok")); err != nil {
			return r, err
		}
		r.setCPU(onCPU(workers...) - w0)
		return r, nil
	}
	ob, err := s.observe(g.pid(), arm)
	if err != nil {
		return r, err
	}
	defer ob.stop()
	r.ObserverPID = ob.cmd.Process.Pid
	time.Sleep(200 * time.Millisecond)
	before, err := scrape(ob.metricsURL())
	if err != nil {
		return r, err
	}
	t0, _ := cpuTicks(r.ObserverPID)
	s0 := onCPU(r.ObserverPID)
	w0 := onCPU(workers...)
	if r.Wrk, err = s.runLoad(ctx, g.url("/ok")); err != nil {
		return r, err
	}
	r.setCPU(onCPU(workers...) - w0)
	t1, _ := cpuTicks(r.ObserverPID)
	r.ObserverUS = float64(onCPU(r.ObserverPID)-s0) / 1e3 / float64(max(r.Wrk.Requests, 1))
	r.CPUTicks = t1 - t0
	time.Sleep(400 * time.Millisecond) // batched: the reader drains the ring every 100 ms
	after, err := scrape(ob.metricsURL())
	if err != nil {
		return r, err
	}
	r.Counted = metricSum(after, "gunicorn_worker_requests_total") - metricSum(before, "gunicorn_worker_requests_total")
	r.Lost = metricSum(after, "gpe_ebpf_events_lost_total")
	return r, nil
}

// setCPU fills the per-request CPU of the workers (given) and of wrk (its rusage).
func (r *run) setCPU(workers time.Duration) {
	if r.Wrk.Requests == 0 {
		return
	}
	r.WorkerUS = float64(workers) / 1e3 / float64(r.Wrk.Requests)
	r.WrkUS = r.Wrk.CPUSeconds * 1e6 / float64(r.Wrk.Requests)
}

// endRoundLine ends a round's line with the observer's figures, if the round had one.
func endRoundLine(r run) {
	if r.ObserverPID != 0 {
		fmt.Printf("  gpe-ebpf %5.2f  counted %7.0f  lost %.0f", r.ObserverUS, r.Counted, r.Lost)
	}
	fmt.Println()
}
