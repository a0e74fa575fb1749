package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// tlsPhase measures what a request to a Gunicorn serving HTTPS itself costs when gpe-ebpf
// observes it through the libssl uprobes (README "Gunicorn serving TLS"): 2 sync workers with a
// self-signed certificate, saturated by hey over HTTPS (runHey says why not wrk) (sync workers close every connection, so
// each request carries its handshake), in rounds of unobserved twice and observed in each hook
// mode. Then, per mode, one run with the kernel's BPF run statistics on: the programs' time per
// request (the socket hooks and the uprobe programs), and how many uprobe programs ran. A
// uprobe's trap (the breakpoint, its single-step, the return trampoline) is not BPF time: it
// shows in the workers' CPU per request and in the throughput.
func (s *session) tlsPhase(ctx context.Context) error {
	o := s.o
	cert, key := filepath.Join(s.tmp, "tls-cert.pem"), filepath.Join(s.tmp, "tls-key.pem")
	if out, err := exec.Command("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
		"-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert).CombinedOutput(); err != nil {
		return fmt.Errorf("make a certificate: %w: %s", err, out)
	}
	g, err := s.gunicorn(2, "--certfile", cert, "--keyfile", key)
	if err != nil {
		return err
	}
	defer g.stop()
	s.load = runHey
	defer func() { s.load = nil }()
	arms := append([]string{"off-again", "off"}, s.modes...)
	fmt.Printf("\n[tls] %d rounds of %v, hey -c%d -z%s %s\n", o.tlsPairs, arms, o.wrkConns, o.run, g.url("/ok"))
	workers := children(g.pid())
	rps := map[string][]float64{}
	byArm := map[string][]run{}
	err = eachRound(ctx, o.tlsPairs, arms, func(pair int, arm string) error {
		r, err := s.throughputRun(ctx, g, workers, arm, pair)
		if err != nil {
			return err
		}
		r.Phase = "tls"
		rps[arm] = append(rps[arm], r.Wrk.PerSec)
		byArm[arm] = append(byArm[arm], r)
		s.res.Runs = append(s.res.Runs, r)
		fmt.Printf("  round %2d %-10s %8.0f req/s %7d requests  CPU µs/request: workers %6.1f", pair, arm, r.Wrk.PerSec, r.Wrk.Requests, r.WorkerUS)
		endRoundLine(r)
		return nil
	})
	if err != nil {
		return err
	}
	worker := func(arm string) []float64 {
		var out []float64
		for _, r := range byArm[arm] {
			out = append(out, r.WorkerUS)
		}
		return out
	}
	s.res.add(
		newFigure("tls: control, unobserved ÷ unobserved", "ratio", ratios(rps["off-again"], rps["off"]), "", nil),
		newFigure("tls: unobserved HTTPS throughput", "req/s", rps["off"], "", nil),
		newFigure("tls: workers' CPU per HTTPS request, unobserved", "µs", worker("off"), "", nil),
	)
	for _, m := range s.modes {
		var diffs, lost, added, observer []float64
		for i, r := range byArm[m] {
			diffs = append(diffs, r.Counted-float64(r.Wrk.Requests))
			lost = append(lost, r.Lost)
			observer = append(observer, r.ObserverUS)
			if i < len(byArm["off"]) {
				added = append(added, r.WorkerUS-byArm["off"][i].WorkerUS)
			}
		}
		s.res.add(
			newFigure("tls "+m+": throughput ratio", "observed/unobserved", ratios(rps[m], rps["off"]), "", nil),
			newFigure("tls "+m+":   added: workers' CPU per request (uprobe traps + BPF)", "µs", added, "", nil),
			newFigure("tls "+m+": gpe-ebpf CPU per request", "µs", observer, "", nil),
			exactFigure("tls "+m+": exactness, counted − hey completed", diffs, o.wrkConns),
			zeroFigure("tls "+m+": events lost", lost),
		)
	}
	fmt.Printf("\n[tls kernel time] 1 run per mode, BPF run statistics on\n")
	for _, m := range s.modes {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		before := len(s.res.Runs)
		r, err := s.kernelTimeRun(ctx, g, m, 0)
		if err != nil {
			return err
		}
		r.Phase = "tls-kernel-time"
		s.res.Runs = append(s.res.Runs[:before], r)
		fmt.Printf("  %-8s %7d requests  BPF %.2f µs/request in %.1f program runs/request\n", m, r.Wrk.Requests, r.BPFUS, r.BPFRuns)
		s.res.add(
			newFigure("tls "+m+": BPF kernel time per HTTPS request", "µs", []float64{r.BPFUS}, "", nil),
			newFigure("tls "+m+":   program runs per request", "runs", []float64{r.BPFRuns}, "", nil),
		)
	}
	if out, _ := execOutput(s.bin, "--help"); !strings.Contains(out, "--tls-uprobes") {
		s.res.note("tls: %s has no --tls-uprobes: it counts nothing of a TLS Gunicorn, and the observed arms measure only its socket hooks", s.bin)
	}
	return nil
}

// runLoad runs the session's load generator (wrk unless the phase set another) on url.
func (s *session) runLoad(ctx context.Context, url string) (wrkResult, error) {
	if s.load != nil {
		return s.load(ctx, url, s.o.wrkConns, s.o.run)
	}
	return runWrk(ctx, url, s.o.wrkThreads, s.o.wrkConns, s.o.run, "")
}

var (
	heyStatusRE = regexp.MustCompile(`\[(\d{3})\]\s+(\d+) responses`)
	heyErrorRE  = regexp.MustCompile(`(?m)^\s+\[(\d+)\]\s+\S`)
	heyTotalRE  = regexp.MustCompile(`Total:\s+([\d.]+) secs`)
)

// runHey is runWrk's result from hey: the tls phase's load. wrk busy-polls its TLS sockets
// (strace: some 100 reads that fail with EAGAIN per request while it handshakes), which runs
// the socket hooks' filter about 1,500 times per request in socket mode: its own cost, not
// Gunicorn's. hey's Go client waits in epoll.
func runHey(ctx context.Context, url string, conns int, d time.Duration) (wrkResult, error) {
	cmd := exec.CommandContext(ctx, "hey", "-z", d.String(), "-c", strconv.Itoa(conns), "-t", "10", url)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("hey: %w: %s", err, out)
	}
	r, err := parseHey(string(out))
	r.CPUSeconds = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return r, err
}

func parseHey(out string) (wrkResult, error) {
	var r wrkResult
	m := heyTotalRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("hey output not understood: %s", out)
	}
	r.Seconds, _ = strconv.ParseFloat(m[1], 64)
	for _, m := range heyStatusRE.FindAllStringSubmatch(out, -1) {
		n, _ := strconv.ParseUint(m[2], 10, 64)
		r.Requests += n
		if !strings.HasPrefix(m[1], "2") && !strings.HasPrefix(m[1], "3") {
			r.Non2xx += n
		}
	}
	if i := strings.Index(out, "Error distribution:"); i >= 0 {
		for _, m := range heyErrorRE.FindAllStringSubmatch(out[i:], -1) {
			n, _ := strconv.ParseUint(m[1], 10, 64)
			r.SocketErrors += n
		}
	}
	if r.Seconds > 0 {
		r.PerSec = float64(r.Requests) / r.Seconds
	}
	return r, nil
}
