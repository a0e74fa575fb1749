package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shirou/gopsutil/v4/process"
)

// FS is a /proc tree: the host's (Host), or a fixture in tests. Sampler always reads the host's.
type FS struct {
	// Root is where the tree is mounted, "/proc" for the host's.
	Root string
}

// Host is the host's /proc.
var Host = FS{Root: "/proc"}

// Info is what gpe-ebpf needs to know about a process.
type Info struct {
	PID     uint32
	PPID    uint32
	Cmdline []string
	Started time.Time
	// Exe is the program the process runs (/proc/PID/exe, as the process's own mount
	// namespace names it), "" when it cannot be read.
	Exe string
}

// ErrNoProcess is wrapped when a PID names no process.
var ErrNoProcess = errors.New("no such process")

func (fs FS) pidDir(pid uint32) string {
	return filepath.Join(fs.Root, strconv.FormatUint(uint64(pid), 10))
}

// Read returns a process's parent, command line and start time.
func (fs FS) Read(pid uint32) (Info, error) {
	dir := fs.pidDir(pid)
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Info{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return Info{}, fmt.Errorf("read pid %d: %w", pid, err)
	}
	ppid, ticks, err := parseStat(stat)
	if err != nil {
		return Info{}, fmt.Errorf("pid %d: %w", pid, err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "cmdline"))
	if err != nil {
		return Info{}, fmt.Errorf("read pid %d cmdline: %w", pid, err)
	}
	info := Info{PID: pid, PPID: ppid, Cmdline: splitCmdline(raw)}
	info.Exe, _ = os.Readlink(filepath.Join(dir, "exe"))
	if bt, err := fs.bootTime(); err == nil {
		info.Started = bt.Add(time.Duration(ticks) * time.Second / clockTicks)
	}
	return info, nil
}

// Alive says whether pid is a running process: not gone, and not a zombie waiting for its
// parent (a zombie's exit has happened; only its /proc entry is left).
func (fs FS) Alive(pid uint32) bool {
	_, ok := fs.Running(pid)
	return ok
}

// Running says whether pid is a running process (as Alive does) and returns its parent.
func (fs FS) Running(pid uint32) (ppid uint32, ok bool) {
	stat, err := os.ReadFile(filepath.Join(fs.pidDir(pid), "stat"))
	if err != nil {
		return 0, false
	}
	f := statFields(stat)
	if len(f) < 2 || f[0] == "Z" || f[0] == "X" || f[0] == "x" {
		return 0, false
	}
	p, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return 0, false
	}
	return uint32(p), true
}

// clockTicks is USER_HZ, 100 on every Linux architecture gpe-ebpf builds for.
const clockTicks = 100

func parseStat(stat []byte) (ppid uint32, startTicks uint64, err error) {
	f := statFields(stat)
	if f == nil {
		return 0, 0, errors.New("malformed stat")
	}
	// f[0] is the state (field 3); ppid is field 4, starttime field 22.
	if len(f) < 20 {
		return 0, 0, errors.New("short stat")
	}
	p, err := strconv.ParseUint(f[1], 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("parse ppid: %w", err)
	}
	st, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse starttime: %w", err)
	}
	return uint32(p), st, nil
}

// statFields are the fields of /proc/PID/stat after the command name, which is in parentheses
// and may contain spaces: the fields start after the last ')'. nil when there is none.
func statFields(stat []byte) []string {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(stat[i+1:]))
}

func splitCmdline(raw []byte) []string {
	raw = bytes.TrimRight(raw, "\x00")
	if len(raw) == 0 {
		return nil
	}
	parts := bytes.Split(raw, []byte{0})
	out := make([]string, len(parts))
	for i, p := range parts {
		out[i] = string(p)
	}
	// setproctitle writes the title as one string padded with spaces.
	if len(out) == 1 {
		out = strings.Fields(out[0])
	}
	return out
}

// bootTimes caches each tree's boot time (btime of its stat), by Root.
var bootTimes sync.Map

func (fs FS) bootTime() (time.Time, error) {
	if bt, ok := bootTimes.Load(fs.Root); ok {
		return bt.(time.Time), nil
	}
	b, err := os.ReadFile(filepath.Join(fs.Root, "stat"))
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "btime "); ok {
			s, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil {
				return time.Time{}, err
			}
			bt := time.Unix(s, 0)
			bootTimes.Store(fs.Root, bt)
			return bt, nil
		}
	}
	return time.Time{}, errors.New("no btime in " + filepath.Join(fs.Root, "stat"))
}

// App is the WSGI/ASGI application argument of a Gunicorn command line ("module:app"), or "".
func App(cmdline []string) string {
	if len(cmdline) >= 2 && cmdline[0] == "gunicorn:" {
		// setproctitle title: "gunicorn: master [app]"
		t := strings.Join(cmdline[1:], " ")
		if i, j := strings.IndexByte(t, '['), strings.LastIndexByte(t, ']'); i >= 0 && j > i {
			return t[i+1 : j]
		}
	}
	app := ""
	skip := false
	for i, a := range cmdline {
		if i == 0 || skip {
			skip = false
			continue
		}
		if strings.HasPrefix(a, "-") {
			// Options taking a separate value; the app is the first positional argument.
			if !strings.Contains(a, "=") && takesValue(a) {
				skip = true
			}
			continue
		}
		if strings.Contains(a, ":") || app == "" && !strings.HasSuffix(a, "gunicorn") && !strings.HasPrefix(filepath.Base(a), "python") {
			app = a
			if strings.Contains(a, ":") {
				return a
			}
		}
	}
	return app
}

func takesValue(opt string) bool {
	switch opt {
	case "-m":
		return true
	}
	if strings.HasPrefix(opt, "--") {
		switch opt {
		case "--daemon", "--reload", "--preload", "--no-sendfile", "--reuse-port", "--check-config",
			"--print-config", "--spew", "--capture-output", "--enable-stdio-inheritance",
			"--strip-header-spaces", "--suppress-ragged-eofs", "--do-handshake-on-connect":
			return false
		}
		return true
	}
	switch opt {
	case "-D", "-R", "-v", "-h":
		return false
	}
	return len(opt) == 2
}

// Children lists the processes whose parent is pid, oldest first.
func (fs FS) Children(pid uint32) ([]Info, error) {
	all, err := fs.All()
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, p := range all {
		if p.PPID == pid {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out, nil
}

// All reads every process in the tree; processes that vanish while reading are skipped.
func (fs FS) All() ([]Info, error) {
	ents, err := os.ReadDir(fs.Root)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", fs.Root, err)
	}
	var out []Info
	for _, e := range ents {
		n, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		if info, err := fs.Read(uint32(n)); err == nil {
			out = append(out, info)
		}
	}
	return out, nil
}

// Usage is one sample of a process's resources.
type Usage struct {
	RSS        uint64
	CPUPercent float64 // over the time since the previous sample, percent of one core
}

// Sampler samples processes and remembers each one's CPU time to compute the percentage
// over the interval between two samples.
type Sampler struct {
	prev map[uint32]cpuSample
}

type cpuSample struct {
	cpu  float64 // user+system seconds
	when time.Time
}

// NewSampler returns a sampler with no history.
func NewSampler() *Sampler { return &Sampler{prev: make(map[uint32]cpuSample)} }

// Sample reads pid's RSS and CPU. The first sample of a process measures CPU since it started.
func (s *Sampler) Sample(pid uint32, started time.Time) (Usage, error) {
	p, err := process.NewProcess(int32(pid))
	if err != nil {
		return Usage{}, fmt.Errorf("sample %d: %w", pid, err)
	}
	mem, err := p.MemoryInfo()
	if err != nil {
		return Usage{}, fmt.Errorf("sample %d memory: %w", pid, err)
	}
	t, err := p.Times()
	if err != nil {
		return Usage{}, fmt.Errorf("sample %d cpu: %w", pid, err)
	}
	now := time.Now()
	cpu := t.User + t.System
	prev, ok := s.prev[pid]
	if !ok {
		prev = cpuSample{cpu: 0, when: started}
	}
	s.prev[pid] = cpuSample{cpu: cpu, when: now}
	u := Usage{RSS: mem.RSS}
	if dt := now.Sub(prev.when).Seconds(); dt > 0 {
		u.CPUPercent = 100 * (cpu - prev.cpu) / dt
	}
	return u, nil
}

// Forget drops the history of processes no longer sampled.
func (s *Sampler) Forget(keep map[uint32]bool) {
	for pid := range s.prev {
		if !keep[pid] {
			delete(s.prev, pid)
		}
	}
}
