package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// enableRunStats turns on the kernel's BPF run statistics (kernel.bpf_stats_enabled) until the
// returned closer is closed.
func enableRunStats() (io.Closer, error) {
	return ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
}

// programRuns is how many times the BPF programs held by process pid have run, summed: with
// run statistics on, the difference around a dd says how often gpe-ebpf's code ran while dd
// made its syscalls (whatever else ran on the machine meanwhile is counted too).
func programRuns(pid int) (uint64, error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	seen := map[uint64]bool{}
	var total uint64
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
				total += st.RunCount
			}
			prog.Close()
		}
		f.Close()
	}
	if len(seen) == 0 {
		return 0, fmt.Errorf("process %d holds no BPF program", pid)
	}
	return total, nil
}
