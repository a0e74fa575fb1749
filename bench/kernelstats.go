package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	n0, t0, err := programStats(pid)
	if err != nil {
		return r, err
	}
	if r.Wrk, err = s.runLoad(ctx, g.url("/ok")); err != nil {
		return r, err
	}
	n1, t1, err := programStats(pid)
	if err != nil {
		return r, err
	}
	reqs := float64(max(r.Wrk.Requests, 1))
	r.BPFUS = float64(t1-t0) / 1e3 / reqs
	r.BPFRuns = float64(n1-n0) / reqs
	return r, nil
}

// enableRunStats turns on the kernel's BPF run statistics (kernel.bpf_stats_enabled) until the
// returned closer is closed.
func enableRunStats() (io.Closer, error) {
	return ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
}

// programStats sums the run counts and run times of the BPF programs held by process pid.
// With run statistics on, the difference around a workload is what gpe-ebpf's programs did
// meanwhile (whatever else ran on the machine is counted too: every hook checks its caller).
func programStats(pid int) (runs uint64, runtime time.Duration, err error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, err
	}
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
			if st, err := prog.Stats(); err == nil {
				runs += st.RunCount
				runtime += st.Runtime
			}
			prog.Close()
		}
		f.Close()
	}
	if len(seen) == 0 {
		return 0, 0, fmt.Errorf("process %d holds no BPF program", pid)
	}
	return runs, runtime, nil
}
