package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// figure is one row of the table.
type figure struct {
	Name    string    `json:"name"`
	Unit    string    `json:"unit"`
	Samples []float64 `json:"samples"`
	Min     float64   `json:"min"`
	Median  float64   `json:"median"`
	Max     float64   `json:"max"`
	Target  string    `json:"target"`
	Met     string    `json:"met"` // yes, no, or "-" for figures without a target
	Note    string    `json:"note,omitempty"`
}

// results is what one `make bench` prints and writes as JSON.
type results struct {
	Started  string            `json:"started"`
	Command  string            `json:"command"`
	Machine  machine           `json:"machine"`
	Options  map[string]string `json:"options"`
	Modes    []string          `json:"modes"`
	Figures  []figure          `json:"figures"`
	Runs     []run             `json:"runs"`
	Notes    []string          `json:"notes"`
	Elapsed  float64           `json:"elapsed_seconds"`
	LoadAvgs []string          `json:"loadavg_start_end"`
}

// run is one measured run, kept in the JSON so a figure can be recomputed.
type run struct {
	Phase       string    `json:"phase"`
	Arm         string    `json:"arm"`
	Pair        int       `json:"pair"`
	Wrk         wrkResult `json:"wrk,omitzero"`
	Counted     float64   `json:"counted,omitempty"`
	Lost        float64   `json:"lost,omitempty"`
	CPUTicks    uint64    `json:"observer_cpu_ticks,omitempty"`
	Seconds     float64   `json:"seconds,omitempty"` // dd and ping-pong: CPU seconds
	WallSeconds float64   `json:"wall_seconds,omitempty"`
	ObserverPID int       `json:"observer_pid,omitempty"`
	// Throughput runs: CPU per completed request of the Gunicorn workers (scheduler time), of
	// wrk (its rusage) and of gpe-ebpf (scheduler time), in µs.
	WorkerUS   float64 `json:"worker_cpu_us_per_request,omitempty"`
	WrkUS      float64 `json:"wrk_cpu_us_per_request,omitempty"`
	ObserverUS float64 `json:"observer_cpu_us_per_request,omitempty"`
	// Kernel-time runs: the BPF programs' run time and runs per request (bpf_stats).
	BPFUS   float64 `json:"bpf_us_per_request,omitempty"`
	BPFRuns float64 `json:"bpf_runs_per_request,omitempty"`
	// The same by program name.
	Programs map[string]programCost `json:"bpf_programs,omitempty"`
}

// programCost is one program's share of a kernel-time run: runs and µs per request.
type programCost struct {
	Runs float64 `json:"runs_per_request"`
	US   float64 `json:"us_per_request"`
}

func (r *results) add(f ...figure) { r.Figures = append(r.Figures, f...) }
func (r *results) note(format string, a ...any) {
	r.Notes = append(r.Notes, fmt.Sprintf(format, a...))
}

func newFigure(name, unit string, samples []float64, target string, ok func(median float64) bool) figure {
	f := figure{Name: name, Unit: unit, Samples: samples, Target: target, Met: "-"}
	if len(samples) == 0 {
		f.Met, f.Note = "no", "no samples"
		return f
	}
	s := slices.Sorted(slices.Values(samples))
	f.Min, f.Max = s[0], s[len(s)-1]
	f.Median = median(s)
	if ok != nil {
		f.Met = "no"
		if ok(f.Median) {
			f.Met = "yes"
		}
	}
	return f
}

// atMost and atLeast make the target test of a figure.
func atMost(v float64) func(float64) bool  { return func(m float64) bool { return m <= v } }
func atLeast(v float64) func(float64) bool { return func(m float64) bool { return m >= v } }

func median(sorted []float64) float64 {
	if len(sorted)%2 == 1 {
		return sorted[len(sorted)/2]
	}
	return (sorted[len(sorted)/2-1] + sorted[len(sorted)/2]) / 2
}

// ratios divides a[i] by b[i], pair by pair.
func ratios(a, b []float64) []float64 {
	var out []float64
	for i := range min(len(a), len(b)) {
		if b[i] != 0 {
			out = append(out, a[i]/b[i])
		}
	}
	return out
}

// exactFigure: every observed run must count exactly what wrk completed, give or take the
// requests in flight when wrk stops (it closes connections whose response Gunicorn may
// already have written: at most one per connection).
func exactFigure(name string, diffs []float64, conns int) figure {
	f := newFigure(name, "requests", diffs, "= 0", nil)
	f.Met = "yes"
	exact := 0
	for _, d := range diffs {
		if d != 0 {
			f.Met = "no"
		} else {
			exact++
		}
		if d < 0 || d > float64(conns) {
			f.Note = "outside [0, connections]: a real miscount"
		}
	}
	if f.Note == "" {
		f.Note = fmt.Sprintf("%d of %d runs exact; the rest within the %d requests in flight when wrk stops", exact, len(diffs), conns)
	}
	return f
}

func zeroFigure(name string, v []float64) figure {
	f := newFigure(name, "records", v, "0", nil)
	f.Met = "yes"
	if f.Max != 0 {
		f.Met = "no"
	}
	return f
}

func printTable(r *results) {
	fmt.Printf("\ngpe-ebpf benchmark — %s, %d cores, Linux %s, %s; load average %s → %s\n",
		r.Machine.CPU, r.Machine.Cores, r.Machine.Kernel, r.Machine.Go, r.LoadAvgs[0], r.LoadAvgs[len(r.LoadAvgs)-1])
	fmt.Printf("%-58s %-20s %10s %10s %10s  %-22s %s\n", "figure", "unit", "min", "median", "max", "target", "met")
	fmt.Println(strings.Repeat("-", 142))
	for _, f := range r.Figures {
		fmt.Printf("%-58s %-20s %10s %10s %10s  %-22s %s\n", f.Name, f.Unit, num(f.Min), num(f.Median), num(f.Max), f.Target, f.Met)
		if f.Note != "" {
			fmt.Printf("    %s\n", f.Note)
		}
	}
	for _, n := range r.Notes {
		fmt.Printf("note: %s\n", n)
	}
}

func num(v float64) string {
	switch {
	case v == math.Trunc(v) && math.Abs(v) < 1e9:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	case math.Abs(v) >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }

func scale(v []float64, k float64) []float64 {
	out := make([]float64, len(v))
	for i := range v {
		out[i] = v[i] * k
	}
	return out
}

// machine describes where the figures were taken.
type machine struct {
	CPU      string `json:"cpu"`
	Cores    int    `json:"cores"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
	Gunicorn string `json:"gunicorn"`
	Wrk      string `json:"wrk"`
	MemTotal string `json:"mem_total"`
}

func describeMachine() machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemTotal = strings.Join(strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:], " ")
	}
	if out, err := execOutput("gunicorn", "--version"); err == nil {
		m.Gunicorn = strings.TrimSpace(out)
	}
	if out, err := execOutput("wrk", "--version"); err == nil {
		m.Wrk = strings.TrimSpace(strings.SplitN(out, "\n", 2)[0])
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// otherObservers lists gpe-ebpf processes this bench did not start: with one running, syscall
// tracepoints are on for every task all along and the "without" arms measure nothing.
func otherObservers() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile("/proc/" + e.Name() + "/comm"); err == nil && strings.TrimSpace(string(b)) == "gpe-ebpf" {
			pids = append(pids, pid)
		}
	}
	return pids
}

// eachRound runs f for every arm in n rounds, the order reversed every other round, so that
// drift over the run falls on every arm alike.
func eachRound(ctx context.Context, n int, arms []string, f func(round int, arm string) error) error {
	for round := range n {
		order := slices.Clone(arms)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		for _, arm := range order {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := f(round, arm); err != nil {
				return err
			}
		}
	}
	return nil
}
