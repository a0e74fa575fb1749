// Command bench measures what observing a Gunicorn with gpe-ebpf costs, in each hook mode side
// by side. It starts Gunicorn (sync workers, test/app) on loopback, starts and stops
// bin/gpe-ebpf around wrk, dd and socket ping-pongs, prints a table of min/median/max against
// the targets, and writes the same as JSON to bench/out/results-<timestamp>.json. Run it as
// root from the repository root: `make bench`. BENCHMARKS.md describes the method.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	bin        string
	out        string
	modes      string
	pairs      int
	otherPairs int
	kernelRuns int
	run        time.Duration
	wrkThreads int
	wrkConns   int
	ddBytes    int
	pingPongs  int
	memReqs    int
	memWorkers int
	paths      int
	maxEndp    int
	scrapes    int
	budget     time.Duration
	tlsPairs   int
	churnPairs int
	churnRun   time.Duration
	phases     string
}

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "bin/gpe-ebpf", "gpe-ebpf binary (make build)")
	flag.StringVar(&o.out, "out", "bench/out", "directory of the JSON results")
	flag.StringVar(&o.modes, "modes", "", "arms observed by gpe-ebpf, comma-separated: socket, syscall, socket-noqueue (socket with --queue-wait=false), socket-nocpu (socket with --request-cpu=false), socket-nowhy (socket with --request-cpu=false --downstream=false) (default: socket, socket-noqueue, socket-nowhy and syscall when the binary has --downstream)")
	flag.IntVar(&o.pairs, "pairs", 15, "rounds of the throughput comparison (each runs every arm once)")
	flag.IntVar(&o.otherPairs, "other-pairs", 10, "rounds of the other-process comparison")
	flag.IntVar(&o.kernelRuns, "kernel-runs", 3, "runs per mode with BPF run statistics on")
	flag.DurationVar(&o.run, "run", 2*time.Second, "length of one wrk run")
	flag.IntVar(&o.wrkThreads, "wrk-threads", 1, "wrk threads for the throughput comparison")
	flag.IntVar(&o.wrkConns, "wrk-conns", 8, "wrk connections for the throughput comparison")
	flag.IntVar(&o.ddBytes, "dd-bytes", 300000, "bytes dd copies one at a time")
	flag.IntVar(&o.pingPongs, "ping-pongs", 20000, "round trips of each sendto/recvfrom ping-pong")
	flag.IntVar(&o.memReqs, "mem-requests", 1000000, "requests of the memory run (scaled down if the budget is short)")
	flag.IntVar(&o.memWorkers, "mem-workers", 32, "Gunicorn workers of the memory and scrape runs")
	flag.IntVar(&o.paths, "paths", 10000, "distinct request paths of the memory run")
	flag.IntVar(&o.maxEndp, "max-endpoints", 200, "gpe-ebpf --max-endpoints in the memory run")
	flag.IntVar(&o.scrapes, "scrapes", 200, "scrapes timed")
	flag.DurationVar(&o.budget, "budget", 12*time.Minute, "the whole benchmark stops starting work after this")
	flag.IntVar(&o.tlsPairs, "tls-pairs", 5, "rounds of the HTTPS comparison (tls phase)")
	flag.IntVar(&o.churnPairs, "churn-pairs", 3, "rounds of the worker-churn comparison (churn phase)")
	flag.DurationVar(&o.churnRun, "churn-run", 10*time.Second, "length of one wrk run of the churn phase")
	flag.StringVar(&o.phases, "phases", "all", "phases to run, comma-separated: throughput,kernel,others,tls,churn,memory (all: every one)")
	flag.Parse()
	if err := bench(o); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// session is what the phases share: the options, where things are, the results so far and
// every process started, so an interrupt can stop them all.
type session struct {
	o        options
	bin      string
	root     string
	tmp      string
	modes    []string // the hook modes compared; "default" for a binary without --hooks
	deadline time.Time
	res      *results

	gunicorns []*gunicorn
	observers []*observer
	// load drives the throughput and kernel-time runs: wrk, or hey in the tls phase (tls.go).
	load        func(ctx context.Context, url string, conns int, d time.Duration) (wrkResult, error)
	ready, took []float64 // start-up of every observer: exec → /metrics, and its own log figure
}

func (s *session) cleanup() {
	for _, o := range s.observers {
		o.stop()
	}
	for _, g := range s.gunicorns {
		g.stop()
	}
}

func (s *session) gunicorn(workers int, extra ...string) (*gunicorn, error) {
	g, err := startGunicorn(s.root, workers, extra...)
	if err != nil {
		return nil, err
	}
	s.gunicorns = append(s.gunicorns, g)
	return g, nil
}

// noQueue is the suffix of an arm that runs a hook mode with --queue-wait=false: without the
// hook on every TCP state change of the host; noCPU, with --request-cpu=false: without each
// request's CPU time; noWhy, without it and without the downstream calls (--downstream=false).
const (
	noQueue = "-noqueue"
	noCPU   = "-nocpu"
	noWhy   = "-nowhy"
)

// armFlags are the flags each arm suffix adds.
var armFlags = map[string][]string{
	noQueue: {"--queue-wait=false"},
	noCPU:   {"--request-cpu=false"},
	noWhy:   {"--request-cpu=false", "--downstream=false"},
}

// observe starts a gpe-ebpf on master in a hook mode ("" or "default": the binary's default;
// "socket-noqueue": socket hooks, --queue-wait=false; "socket-nocpu": --request-cpu=false;
// "socket-nowhy": --request-cpu=false --downstream=false).
func (s *session) observe(master int, mode string, extra ...string) (*observer, error) {
	for suffix, f := range armFlags {
		if base, ok := strings.CutSuffix(mode, suffix); ok {
			extra = append(append([]string(nil), f...), extra...)
			mode = base
		}
	}
	if mode != "" && mode != "default" {
		extra = append([]string{"--hooks", mode}, extra...)
	}
	ob, err := startObserver(s.bin, master, extra...)
	if err != nil {
		return nil, err
	}
	s.observers = append(s.observers, ob)
	s.ready = append(s.ready, ms(ob.ready))
	if ob.took > 0 {
		s.took = append(s.took, ms(ob.took))
	}
	return ob, nil
}

// hookModes is what -modes says, or both modes when the binary knows --hooks, and socket mode
// without the accept-queue hook too when it knows --queue-wait.
func hookModes(bin, flagValue string) []string {
	if flagValue != "" {
		return strings.Split(flagValue, ",")
	}
	out, _ := execOutput(bin, "--help")
	switch {
	case strings.Contains(out, "--downstream"):
		return []string{"socket", "socket" + noQueue, "socket" + noWhy, "syscall"}
	case strings.Contains(out, "--request-cpu"):
		return []string{"socket", "socket" + noQueue, "socket" + noCPU, "syscall"}
	case strings.Contains(out, "--queue-wait"):
		return []string{"socket", "socket" + noQueue, "syscall"}
	case strings.Contains(out, "--hooks"):
		return []string{"socket", "syscall"}
	}
	return []string{"default"}
}

// newSession checks what the benchmark needs (root, the tools, the repository, the binary) and
// makes its temporary directory.
func newSession(o options) (*session, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("needs root: gpe-ebpf loads BPF programs")
	}
	for _, tool := range []string{"gunicorn", "wrk", "dd"} {
		if _, err := execLookPath(tool); err != nil {
			return nil, fmt.Errorf("%s not found (make deps): %w", tool, err)
		}
	}
	s := &session{o: o}
	var err error
	if s.root, err = os.Getwd(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(s.root, "test", "app", "app.py")); err != nil {
		return nil, errors.New("run from the repository root (make bench)")
	}
	if s.bin, err = filepath.Abs(o.bin); err != nil {
		return nil, err
	}
	if _, err := os.Stat(s.bin); err != nil {
		return nil, fmt.Errorf("%s: %w (make build)", s.bin, err)
	}
	if s.tmp, err = os.MkdirTemp("", "gpe-bench-"); err != nil {
		return nil, err
	}
	return s, nil
}

func bench(o options) error {
	s, err := newSession(o)
	if err != nil {
		return err
	}
	defer os.RemoveAll(s.tmp)
	s.modes = hookModes(s.bin, o.modes)

	start := time.Now()
	s.deadline = start.Add(o.budget)
	s.res = &results{
		Started: start.UTC().Format(time.RFC3339),
		Command: "make bench  (go run ./bench " + strings.Join(os.Args[1:], " ") + ")",
		Machine: describeMachine(),
		Modes:   s.modes,
		Options: map[string]string{
			"pairs": fmt.Sprint(o.pairs), "other_pairs": fmt.Sprint(o.otherPairs), "kernel_runs": fmt.Sprint(o.kernelRuns),
			"run": o.run.String(), "wrk": fmt.Sprintf("-t%d -c%d", o.wrkThreads, o.wrkConns),
			"dd_bytes": fmt.Sprint(o.ddBytes), "ping_pongs": fmt.Sprint(o.pingPongs),
			"mem_requests": fmt.Sprint(o.memReqs), "mem_workers": fmt.Sprint(o.memWorkers),
			"paths": fmt.Sprint(o.paths), "max_endpoints": fmt.Sprint(o.maxEndp), "scrapes": fmt.Sprint(o.scrapes),
			"tls_pairs": fmt.Sprint(o.tlsPairs), "churn_pairs": fmt.Sprint(o.churnPairs), "churn_run": o.churnRun.String(),
			"phases": o.phases,
		},
		LoadAvgs: []string{loadAvg()},
	}
	defer s.cleanup()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	go func() {
		<-ctx.Done()
		s.cleanup()
	}()

	fmt.Printf("gpe-ebpf benchmark on %s, %d cores, Linux %s (load average %s), hook modes %v\n",
		s.res.Machine.CPU, s.res.Machine.Cores, s.res.Machine.Kernel, s.res.LoadAvgs[0], s.modes)
	if others := otherObservers(); len(others) > 0 {
		s.res.note("WARNING: other gpe-ebpf processes were running at the start (pids %v): their hooks are on in every arm, so the unobserved arms are not unobserved", others)
		fmt.Println(s.res.Notes[len(s.res.Notes)-1])
	}

	// Throughput, kernel time and the cost to other processes share one 2-worker Gunicorn.
	if s.runs("throughput") || s.runs("kernel") || s.runs("others") {
		g, err := s.gunicorn(2)
		if err != nil {
			return err
		}
		if s.runs("throughput") {
			if err := s.throughputPhase(ctx, g); err != nil {
				return err
			}
		}
		if s.runs("kernel") {
			if err := s.kernelTimePhase(ctx, g); err != nil {
				return err
			}
		}
		if s.runs("others") {
			if err := s.othersPhase(ctx, g); err != nil {
				return err
			}
		}
		g.stop()
		s.gunicorns = nil
	}
	if s.runs("tls") {
		if err := s.tlsPhase(ctx); err != nil {
			return err
		}
		s.gunicorns = nil
	}
	if s.runs("churn") {
		if err := s.churnPhase(ctx); err != nil {
			return err
		}
		s.gunicorns = nil
	}

	if s.runs("memory") {
		ob, body, err := s.memoryPhase(ctx)
		if err != nil {
			return err
		}
		s.scrapePhase(ctx, ob, body)
	}
	s.cleanup()
	s.gunicorns, s.observers = nil, nil
	s.res.add(
		newFigure("start-up: exec to /metrics answering", "ms", s.ready, "≤ 1000", atMost(1000)),
		newFigure("start-up: the 'attached ... took=' log line", "ms", s.took, "", nil),
	)
	return s.write(start)
}

// runs says whether -phases asks for phase.
func (s *session) runs(phase string) bool {
	return s.o.phases == "all" || slices.Contains(strings.Split(s.o.phases, ","), phase)
}

// write prints the table and writes the JSON.
func (s *session) write(start time.Time) error {
	s.res.Elapsed = time.Since(start).Seconds()
	s.res.LoadAvgs = append(s.res.LoadAvgs, loadAvg())
	printTable(s.res)
	if err := os.MkdirAll(s.o.out, 0o755); err != nil {
		return err
	}
	name := filepath.Join(s.o.out, "results-"+start.UTC().Format("20060102T150405Z")+".json")
	b, err := json.MarshalIndent(s.res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(name, append(b, '\n'), 0o644); err != nil {
		return err
	}
	fmt.Printf("\nwrote %s (%.0fs)\n", name, s.res.Elapsed)
	return nil
}
