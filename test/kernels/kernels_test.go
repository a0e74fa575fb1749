// Package kernels is the kernel matrix: it boots Debian's own kernels under qemu (TCG emulation,
// no KVM needed) with a debootstrap root filesystem as the initramfs, and runs the same smoke test
// of the freshly built gpe-ebpf inside each: attach by PID, 100 requests counted exactly, a HUP
// reload with its restarts, a clean SIGTERM detach (guest/check.py), and what the mode costs other
// processes: the CPU time of a `dd bs=1` with gpe-ebpf attached ÷ without, in pairs measured in the
// guest (under TCG only the ratio means anything). It prints a table of kernel × arch × mode ×
// result × dd ratio; a kernel that refuses a program shows the loader's or the verifier's message.
//
// GPE_KERNELS selects the targets: "all" (the default) or a comma list such as "amd64/6.1,arm64/6.12".
// GPE_KERNELS_DD_PAIRS sets the dd pairs per mode (2 by default).
// The cache (root filesystems, kernels) is built by cache.sh on the first run, under
// $GPE_KERNELS_CACHE or .cache/kernels (gitignored). Booting needs root only to build that cache
// (debootstrap); under CI=true a missing prerequisite fails instead of skipping.
package kernels

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// target is one kernel the matrix boots.
type target struct {
	Arch   string   // Debian architecture: amd64, arm64
	Kernel string   // short name: 5.10, 6.1, 6.12, sid
	Suite  string   // where cache.sh takes it from
	Modes  []string // hook modes run in the guest when gpe-ebpf has --hooks
	Auto   string   // the mode --hooks auto must load there
}

// Debian 11's 5.10 lacks helpers the modern object calls: gpe-ebpf loads the compat one there
// (internal/probes/compat.go); auto takes fentry on amd64 and kprobe on arm64 (no BPF trampolines
// on arm64 before 6.0). Debian 12's 6.1 predates the socket tracepoints (6.3): auto takes the
// fentry hooks there on amd64, and the kprobe hooks on arm64, whose 6.1 refuses to attach fexit
// programs to kernel functions ("create raw tracepoint: not supported"; its 6.12 allows it); the
// other modes the kernel has must work too. The backports' 6.12 takes the socket hooks, and every
// other mode must work there too. Sid's kernel (7.x; the release found is in the table) takes the
// socket hooks, and every other mode must work there too. On every row, each mode's dd ratio is
// measured, and a mode that hooks no syscall must stay within maxOthersCost.
var matrix = []target{
	{Arch: "amd64", Kernel: "5.10", Suite: "bullseye-security", Modes: []string{"fentry", "kprobe", "syscall", "auto"}, Auto: "fentry"},
	{Arch: "arm64", Kernel: "5.10", Suite: "bullseye", Modes: []string{"kprobe", "syscall", "auto"}, Auto: "kprobe"},
	{Arch: "amd64", Kernel: "6.1", Suite: "bookworm", Modes: []string{"fentry", "kprobe", "syscall", "auto"}, Auto: "fentry"},
	{Arch: "amd64", Kernel: "6.12", Suite: "bookworm-backports", Modes: []string{"socket", "fentry", "kprobe", "syscall", "auto"}, Auto: "socket"},
	{Arch: "arm64", Kernel: "6.1", Suite: "bookworm", Modes: []string{"kprobe", "syscall", "auto"}, Auto: "kprobe"},
	{Arch: "arm64", Kernel: "6.12", Suite: "bookworm-backports", Modes: []string{"socket", "fentry", "kprobe", "syscall", "auto"}, Auto: "socket"},
	{Arch: "amd64", Kernel: "sid", Suite: "sid", Modes: []string{"socket", "fentry", "kprobe", "syscall", "auto"}, Auto: "socket"},
	{Arch: "arm64", Kernel: "sid", Suite: "sid", Modes: []string{"socket", "fentry", "kprobe", "syscall", "auto"}, Auto: "socket"},
}

// maxOthersCost is the most a mode that hooks no syscall may add to a dd's CPU in the guest: these
// modes put nothing on dd's path, and under -icount the ratio is reproducible to about 1%.
const maxOthersCost = 1.03

// row is one line of the printed table.
type row struct {
	Kernel, Release, Arch, Mode, Result, Detail string
	Boot                                        time.Duration
	DD                                          ddCost
	order                                       int // the target's place in the matrix, then the mode's
}

var (
	rowsMu sync.Mutex
	rows   []row
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

func selected(t *testing.T) []target {
	sel := os.Getenv("GPE_KERNELS")
	if sel == "" || sel == "all" {
		return matrix
	}
	var out []target
	var known []string
	for _, tg := range matrix {
		known = append(known, tg.Arch+"/"+tg.Kernel)
	}
	for _, name := range strings.Split(sel, ",") {
		i := slices.Index(known, strings.TrimSpace(name))
		if i < 0 {
			t.Fatalf("GPE_KERNELS: unknown target %q (known: %s)", name, strings.Join(known, " "))
		}
		out = append(out, matrix[i])
	}
	return out
}

func TestKernels(t *testing.T) {
	targets := selected(t)
	if missing := prerequisites(targets); len(missing) > 0 {
		msg := "the kernel matrix needs " + strings.Join(missing, ", ") + " (make deps, as root)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	root := repoRoot()
	hooksFlag, err := hasHooksFlag(t, root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { printTable(t, root) })
	// Guests boot side by side, each on one host thread (one vCPU under -icount): what a guest
	// measures counts its own instructions, so a neighbour slows it down without changing its
	// figures. GPE_KERNELS_PARALLEL sets how many at once (default: the host's CPUs).
	slots := make(chan struct{}, parallelBoots(t))
	for i, tg := range targets {
		t.Run(tg.Arch+"/"+tg.Kernel, func(t *testing.T) {
			t.Parallel()
			slots <- struct{}{}
			defer func() { <-slots }()
			runTarget(t, root, tg, hooksFlag, i)
		})
	}
}

// parallelBoots is how many guests run at once.
func parallelBoots(t *testing.T) int {
	v := os.Getenv("GPE_KERNELS_PARALLEL")
	if v == "" {
		return runtime.NumCPU()
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("GPE_KERNELS_PARALLEL=%q: want a number, 1 or more", v)
	}
	return n
}

// prerequisites lists what is missing: root (debootstrap builds the root filesystems) and the tools.
func prerequisites(targets []target) []string {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	tools := []string{"debootstrap", "cpio", "gzip", "apt-get", "dpkg-deb"}
	for _, tg := range targets {
		qemu, _, _ := qemuFor(tg.Arch)
		tools = append(tools, qemu)
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil && !slices.Contains(missing, tool) {
			missing = append(missing, tool)
		}
	}
	return missing
}

// hasHooksFlag builds gpe-ebpf for the host and asks its --help whether it has --hooks: without
// it, the guest runs the default (the socket hooks) and the table calls that mode "socket".
func hasHooksFlag(t *testing.T, root string) (bool, error) {
	bin, err := buildFor(t, root, runtime.GOARCH)
	if err != nil {
		return false, err
	}
	out, _ := exec.Command(bin, "--help").CombinedOutput()
	return bytes.Contains(out, []byte("--hooks")), nil
}

var (
	builtMu sync.Mutex
	built   = map[string]string{}
)

// buildFor builds gpe-ebpf for one architecture, once per test run.
func buildFor(t *testing.T, root, goarch string) (string, error) {
	builtMu.Lock()
	defer builtMu.Unlock()
	if p, ok := built[goarch]; ok {
		return p, nil
	}
	dir, err := os.MkdirTemp("", "gpe-kernels-bin")
	if err != nil {
		return "", err
	}
	p := filepath.Join(dir, "gpe-ebpf-"+goarch)
	cmd := exec.Command("go", "build", "-trimpath", "-o", p, "./cmd/gpe-ebpf")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+goarch)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build gpe-ebpf for %s: %v\n%s", goarch, err, out)
	}
	built[goarch] = p
	return p, nil
}

// qemuFor is the emulator, machine and console of one architecture.
func qemuFor(arch string) (bin string, args []string, console string) {
	if arch == "arm64" {
		// pauth-impdef: QEMU's own pointer-authentication hash, much cheaper to emulate than QARMA.
		return "qemu-system-aarch64", []string{"-M", "virt", "-cpu", "max,pauth-impdef=on"}, "ttyAMA0"
	}
	// No CMPXCHG16B: with it, the 6.12 kernel crashed in 3 of 8 boots under QEMU 7.2's TCG, each
	// time in SLUB right after its %gs-relative cmpxchg16b (double faults with a garbage RFLAGS,
	// list corruption in kmem_cache_alloc); without it the kernel takes its plain path.
	return "qemu-system-x86_64", []string{"-M", "pc", "-cpu", "max,-cx16"}, "ttyS0"
}

func runTarget(t *testing.T, root string, tg target, hooksFlag bool, order int) {
	qemu, machine, console := qemuFor(tg.Arch)
	start := time.Now()
	cache := exec.Command("bash", filepath.Join(root, "test", "kernels", "cache.sh"), tg.Arch, tg.Suite)
	var cacheErr bytes.Buffer
	cache.Stderr = &cacheErr
	out, err := cache.Output()
	if err != nil {
		t.Fatalf("cache.sh %s %s: %v\n%s", tg.Arch, tg.Suite, err, cacheErr.String())
	}
	paths := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			paths[k] = v
		}
	}
	t.Logf("cache ready in %s: %s (%s)", time.Since(start).Round(time.Second), paths["release"], strings.TrimSpace(cacheErr.String()))

	bin, err := buildFor(t, root, tg.Arch)
	if err != nil {
		t.Fatal(err)
	}
	modes := tg.Modes
	if !hooksFlag {
		modes = []string{"socket"}
	}
	pairs := 2
	if v := os.Getenv("GPE_KERNELS_DD_PAIRS"); v != "" {
		if pairs, err = strconv.Atoi(v); err != nil || pairs < 2 {
			t.Fatalf("GPE_KERNELS_DD_PAIRS=%q: want a number, 2 or more", v)
		}
	}
	initrd, err := guestInitrd(t, root, paths["rootfs"], bin, modes, hooksFlag, pairs)
	if err != nil {
		t.Fatal(err)
	}

	timeout := 20 * time.Minute
	if v := os.Getenv("GPE_KERNELS_BOOT_TIMEOUT"); v != "" {
		if timeout, err = time.ParseDuration(v); err != nil {
			t.Fatalf("GPE_KERNELS_BOOT_TIMEOUT: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// -icount: the guest's clock counts the instructions it executes (8 ns each), not the host's
	// time, so a dd's CPU time in the guest is what it executed: the host's other work and TCG's
	// own translation costs stay out of the dd ratios. One vCPU: icount runs vCPUs in turn on one
	// host thread anyway, and Debian's 6.1 amd64 never brought its second CPU up under it.
	args := append(machine, "-icount", "shift=3,sleep=on", "-m", "2560", "-smp", "1", "-nographic", "-no-reboot", "-nic", "none",
		"-kernel", paths["kernel"], "-initrd", initrd,
		"-append", "console="+console+" panic=-1 quiet loglevel=3 rdinit=/init")
	logPath := filepath.Join(filepath.Dir(paths["rootfs"]), "boot-"+tg.Arch+"-"+tg.Kernel+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, qemu, args...)
	var serial bytes.Buffer
	cmd.Stdout = io.MultiWriter(&serial, logFile)
	cmd.Stderr = cmd.Stdout
	bootStart := time.Now()
	runErr := cmd.Run()
	boot := time.Since(bootStart)
	logFile.Close()
	t.Logf("%s %s: qemu ran %s (serial log %s)", tg.Arch, tg.Kernel, boot.Round(time.Second), logPath)
	if ctx.Err() != nil {
		runErr = fmt.Errorf("no power-off within %s", timeout)
	}

	res := parseSerial(serial.String())
	for j, mode := range modes {
		r := row{Kernel: tg.Kernel, Release: res.release, Arch: tg.Arch, Mode: mode, Boot: boot, order: order*100 + j}
		got, ok := res.results[mode]
		switch {
		case ok:
			r.Result, r.Detail = got.result, got.detail
			r.DD = costOf(res.dd[mode])
			// The mode gpe-ebpf says it loaded must be the one asked for, or auto's choice here.
			want := mode
			if mode == "auto" {
				want = tg.Auto
			}
			if hooksFlag && got.hooks != want {
				r.Result, r.Detail = "fail", fmt.Sprintf("gpe-ebpf loaded hooks=%q, want %q: %s", got.hooks, want, got.detail)
			}
			// Every mode that passed has its cost to others measured, each pair of it.
			if r.Result == "pass" && len(res.dd[mode]) != pairs {
				r.Result, r.Detail = "fail", fmt.Sprintf("%d dd pairs measured, want %d", len(res.dd[mode]), pairs)
			}
			if r.Result == "pass" && got.hooks != "syscall" && r.DD.Median > maxOthersCost {
				r.Result, r.Detail = "fail", fmt.Sprintf("hooks=%s cost a dd %.3f× its CPU, want at most %.2f×", got.hooks, r.DD.Median, maxOthersCost)
			}
		case runErr != nil:
			r.Result, r.Detail = "fail", fmt.Sprintf("qemu: %v", runErr)
		default:
			r.Result, r.Detail = "fail", "the guest printed no result for this mode"
		}
		if r.Result != "pass" {
			t.Errorf("%s %s (%s) mode %s: %s\n%s", tg.Arch, tg.Kernel, r.Release, mode, r.Detail,
				strings.Join(res.lines[mode], "\n"))
			if !ok {
				t.Logf("end of the serial log:\n%s", tail(serial.String(), 40))
			}
		}
		rowsMu.Lock()
		rows = append(rows, r)
		rowsMu.Unlock()
	}
}

// guestInitrd writes the initramfs of one boot: the cached root filesystem's cpio.gz followed by
// a small one with /init, the checks, the test app, the gpe-ebpf binary and the modes to run (the
// kernel unpacks concatenated archives in order, so the second adds to the first).
func guestInitrd(t *testing.T, root, rootfs, bin string, modes []string, hooksFlag bool, ddPairs int) (string, error) {
	dir := t.TempDir()
	stage := filepath.Join(dir, "stage")
	flag := "no"
	if hooksFlag {
		flag = "yes"
	}
	files := []struct {
		src, dst string
		mode     os.FileMode
	}{
		{filepath.Join(root, "test", "kernels", "guest", "init"), "init", 0o755},
		{filepath.Join(root, "test", "kernels", "guest", "check.py"), "gpe/check.py", 0o644},
		{filepath.Join(root, "test", "app", "app.py"), "gpe/app/app.py", 0o644},
		{bin, "gpe/gpe-ebpf", 0o755},
	}
	for _, f := range files {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return "", err
		}
		dst := filepath.Join(stage, f.dst)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(dst, data, f.mode); err != nil {
			return "", err
		}
	}
	conf := fmt.Sprintf("modes=%s\nhooks_flag=%s\ndd_pairs=%d\n", strings.Join(modes, " "), flag, ddPairs)
	if err := os.WriteFile(filepath.Join(stage, "gpe", "config"), []byte(conf), 0o644); err != nil {
		return "", err
	}
	initrd := filepath.Join(dir, "initrd")
	script := fmt.Sprintf("cat %q > %q && cd %q && find . | cpio -o -H newc --quiet | gzip -1 >> %q", rootfs, initrd, stage, initrd)
	if out, err := exec.Command("bash", "-c", "set -o pipefail; "+script).CombinedOutput(); err != nil {
		return "", fmt.Errorf("pack the initramfs: %v\n%s", err, out)
	}
	return initrd, nil
}

type modeResult struct{ result, detail, hooks string }

type serialResult struct {
	release string
	results map[string]modeResult
	lines   map[string][]string // failed checks and gpe-ebpf's log, by mode
	dd      map[string][]float64
}

// ddCost is what a mode costs other processes: the ratios of the dd pairs (attached ÷ without).
type ddCost struct {
	Median, Min, Max float64
	Pairs            int
}

func costOf(ratios []float64) ddCost {
	if len(ratios) == 0 {
		return ddCost{}
	}
	s := slices.Clone(ratios)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return ddCost{Median: m, Min: s[0], Max: s[len(s)-1], Pairs: len(s)}
}

func (c ddCost) String() string {
	if c.Pairs == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f (%.2f–%.2f)", c.Median, c.Min, c.Max)
}

// parseSerial reads the guest's GPE-* lines. The console can repeat a line; the first counts.
func parseSerial(s string) serialResult {
	r := serialResult{results: map[string]modeResult{}, lines: map[string][]string{}, dd: map[string][]float64{}}
	seenPair := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		i := strings.Index(line, "GPE-")
		if i < 0 {
			continue
		}
		line = line[i:]
		kind, rest, _ := strings.Cut(line, " ")
		fields := map[string]string{}
		// key=value pairs up to detail=, which takes the rest of the line
		for rest != "" {
			kv, more, _ := strings.Cut(rest, " ")
			k, v, _ := strings.Cut(kv, "=")
			if k == "detail" {
				v = strings.TrimPrefix(rest, "detail=")
				more = ""
			}
			fields[k] = v
			rest = more
			if kind == "GPE-LOG" && k == "mode" {
				fields["text"] = more
				break
			}
		}
		mode := fields["mode"]
		switch kind {
		case "GPE-KERNEL":
			r.release = fields["release"]
		case "GPE-RESULT":
			if _, seen := r.results[mode]; !seen {
				r.results[mode] = modeResult{fields["result"], fields["detail"], fields["hooks"]}
			}
		case "GPE-DD":
			without, err1 := strconv.ParseFloat(fields["without"], 64)
			with, err2 := strconv.ParseFloat(fields["with"], 64)
			if key := mode + "/" + fields["pair"]; err1 == nil && err2 == nil && without > 0 && !seenPair[key] {
				seenPair[key] = true
				r.dd[mode] = append(r.dd[mode], with/without)
			}
		case "GPE-CHECK":
			if fields["ok"] == "false" {
				r.lines[mode] = append(r.lines[mode], "  check "+fields["name"]+": "+fields["detail"])
			}
		case "GPE-LOG":
			r.lines[mode] = append(r.lines[mode], "  gpe-ebpf: "+fields["text"])
		}
	}
	return r
}

func printTable(t *testing.T, root string) {
	rowsMu.Lock()
	defer rowsMu.Unlock()
	if len(rows) == 0 {
		return
	}
	slices.SortFunc(rows, func(a, b row) int { return a.order - b.order })
	var b strings.Builder
	fmt.Fprintf(&b, "%-7s %-26s %-6s %-8s %-7s %-17s %-7s %s\n", "kernel", "release", "arch", "mode", "result",
		"dd ratio", "boot", "detail")
	for _, r := range rows {
		fmt.Fprintf(&b, "%-7s %-26s %-6s %-8s %-7s %-17s %-7s %s\n", r.Kernel, r.Release, r.Arch, r.Mode, r.Result,
			r.DD, r.Boot.Round(time.Second), r.Detail)
	}
	fmt.Fprintf(&b, "dd ratio: CPU of `dd bs=1` with gpe-ebpf attached ÷ without, median (min–max) of the pairs\n")
	fmt.Print("\nkernel matrix:\n" + b.String())
	cache := os.Getenv("GPE_KERNELS_CACHE")
	if cache == "" {
		cache = filepath.Join(root, ".cache", "kernels")
	}
	if err := os.WriteFile(filepath.Join(cache, "matrix.txt"), []byte(b.String()), 0o644); err != nil {
		t.Logf("write the table: %v", err)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
