package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// kernelTimePhase measures the BPF programs' own time per request in each hook mode: the
// kernel's run statistics (kernel.bpf_stats_enabled) are on only during these runs, since
// they add two clock reads to every program run, which the other phases would pay.
func (s *session) kernelTimePhase(ctx context.Context, g *gunicorn) error {
	o := s.o
	fmt.Printf("\n[kernel time] %d runs per mode of wrk -t%d -c%d -d%s, BPF run statistics on\n", o.kernelRuns, o.wrkThreads, o.wrkConns, o.run)
	us := map[string][]float64{}
	runs := map[string][]float64{}
	for i := range o.kernelRuns {
		for _, m := range append(append([]string{}, s.modes...), emptyArm) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			r, err := s.kernelTimeRun(ctx, g, m, i)
			if err != nil {
				return err
			}
			us[m] = append(us[m], r.BPFUS)
			runs[m] = append(runs[m], r.BPFRuns)
			s.res.Runs = append(s.res.Runs, r)
			fmt.Printf("  run %d %-8s %7d requests  BPF %.2f µs/request in %.1f program runs/request\n", i, m, r.Wrk.Requests, r.BPFUS, r.BPFRuns)
			for _, name := range slices.Sorted(maps.Keys(r.Programs)) {
				c := r.Programs[name]
				fmt.Printf("        %-22s %5.2f runs  %5.3f µs\n", name, c.Runs, c.US)
			}
		}
	}
	for _, m := range s.modes {
		t := targetsFor(m).bpf
		s.res.add(
			newFigure(m+": BPF kernel time per request", "µs", us[m], t.text, t.ok),
			newFigure(m+":   program runs per request", "runs", runs[m], "", nil),
		)
	}
	s.res.add(
		newFigure("floor: empty programs: BPF kernel time per request", "µs", us[emptyArm], "", nil),
		newFigure("floor:   program runs per request", "runs", runs[emptyArm], "", nil),
	)
	return nil
}

func (s *session) kernelTimeRun(ctx context.Context, g *gunicorn, mode string, i int) (run, error) {
	r := run{Phase: "kernel-time", Arm: mode, Pair: i}
	pid := os.Getpid() // emptyArm: the programs are this process's
	if mode == emptyArm {
		undo, err := emptyHooks()
		if err != nil {
			return r, err
		}
		defer undo()
	} else {
		ob, err := s.observe(g.pid(), mode)
		if err != nil {
			return r, err
		}
		defer ob.stop()
		r.ObserverPID = ob.cmd.Process.Pid
		pid = r.ObserverPID
		time.Sleep(200 * time.Millisecond)
	}
	stats, err := enableRunStats()
	if err != nil {
		return r, fmt.Errorf("enable BPF run statistics: %w", err)
	}
	defer stats.Close()
	before, err := programStats(pid)
	if err != nil {
		return r, err
	}
	if r.Wrk, err = s.runLoad(ctx, g.url("/ok")); err != nil {
		return r, err
	}
	after, err := programStats(pid)
	if err != nil {
		return r, err
	}
	reqs := float64(max(r.Wrk.Requests, 1))
	r.Programs = map[string]programCost{}
	for name, a := range after {
		b := before[name]
		if a.runs == b.runs {
			continue
		}
		c := programCost{Runs: float64(a.runs-b.runs) / reqs, US: float64(a.runtime-b.runtime) / 1e3 / reqs}
		r.Programs[name] = c
		r.BPFUS += c.US
		r.BPFRuns += c.Runs
	}
	return r, nil
}

// enableRunStats turns on the kernel's BPF run statistics (kernel.bpf_stats_enabled) until the
// returned closer is closed.
func enableRunStats() (io.Closer, error) {
	return ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
}

// progStat is one program's run count and run time, as the kernel counts them.
type progStat struct {
	runs    uint64
	runtime time.Duration
}

// programStats gives the run counts and run times of the BPF programs held by process pid, by
// program name (programs of one name, e.g. a uprobe attached per worker, are summed). With run
// statistics on, the difference around a workload is what gpe-ebpf's programs did meanwhile
// (whatever else ran on the machine is counted too: every hook checks its caller).
func programStats(pid int) (map[string]progStat, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	stats := map[string]progStat{}
	seen := map[uint64]bool{}
	for _, e := range ents {
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			v, ok := strings.CutPrefix(sc.Text(), "prog_id:")
			if !ok {
				continue
			}
			id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
			if err != nil || seen[id] {
				continue
			}
			seen[id] = true
			prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
			if err != nil {
				continue
			}
			st, err := prog.Stats()
			info, ierr := prog.Info()
			if err == nil && ierr == nil {
				ps := stats[info.Name]
				ps.runs += st.RunCount
				ps.runtime += st.Runtime
				stats[info.Name] = ps
			}
			prog.Close()
		}
		f.Close()
	}
	if len(seen) == 0 {
		return nil, fmt.Errorf("process %d holds no BPF program", pid)
	}
	return stats, nil
}

// totalRuns is the sum of the programs' run counts.
func totalRuns(stats map[string]progStat) uint64 {
	var n uint64
	for _, st := range stats {
		n += st.runs
	}
	return n
}
