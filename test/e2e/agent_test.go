package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"
)

// Issue 4: operating gpe-ebpf like a real agent. Bad input from the real binary, attaching by
// pid file, discovery and USR2, the lifecycle, TLS and basic auth, Redis and JSON logs.

// launch starts gpe-ebpf like startGPE (same default flags, later flags win) with extra
// environment, and does not wait for /metrics: the caller does (HTTPS), or expects an exit.
func launch(t *testing.T, env []string, args ...string) *gpe {
	t.Helper()
	return spawnGPE(t, append(cleanEnv(), env...), args...)
}

// cleanEnv is the test's environment without gpe-ebpf's own variables, so that a developer's
// shell cannot change what a test means.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PROMETHEUS_") || strings.HasPrefix(kv, "REDIS_") || strings.HasPrefix(kv, "GUNICORN_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

// wait waits for gpe-ebpf to exit and returns its exit code and how long the wait took.
func (p *gpe) wait(t *testing.T, d time.Duration) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), time.Since(start)
	case <-time.After(d):
		t.Fatalf("gpe-ebpf still running after %v:\n%s", d, p.out.String())
	}
	return 0, 0
}

// requestsOf sums gunicorn_worker_requests_total over the workers with these PIDs, joined
// through gunicorn_worker_info (and its master_pid, when there is one).
func requestsOf(ms metrics, pids []int) float64 {
	var total float64
	for _, pid := range pids {
		for _, info := range ms.series("gunicorn_worker_info", map[string]string{"pid": strconv.Itoa(pid)}) {
			want := map[string]string{"worker_id": label(info, "worker_id")}
			if mp := label(info, "master_pid"); mp != "" {
				want["master_pid"] = mp
			}
			total += ms.sum("gunicorn_worker_requests_total", want)
		}
	}
	return total
}

// seesWorkers says whether every pid has a gunicorn_worker_info series.
func seesWorkers(ms metrics, pids []int) bool {
	if len(pids) == 0 {
		return false
	}
	for _, pid := range pids {
		if len(ms.series("gunicorn_worker_info", map[string]string{"pid": strconv.Itoa(pid)})) == 0 {
			return false
		}
	}
	return true
}

// progIDs lists the BPF programs a process holds (its prog and link descriptors).
func progIDs(t *testing.T, pid int) []ebpf.ProgramID {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("read %s: %v", dir, err)
	}
	seen := map[ebpf.ProgramID]bool{}
	var ids []ebpf.ProgramID
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "prog_id:"); ok {
				if n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32); err == nil && n != 0 && !seen[ebpf.ProgramID(n)] {
					seen[ebpf.ProgramID(n)] = true
					ids = append(ids, ebpf.ProgramID(n))
				}
			}
		}
	}
	return ids
}

// stillLoaded returns the ids that still name a loaded program.
// The kernel frees a detached program once its last reference goes, which for a BTF
// tracepoint can wait for an RCU grace period: a program still there is looked at again for
// up to 2 s.
func stillLoaded(ids []ebpf.ProgramID) []ebpf.ProgramID {
	var out []ebpf.ProgramID
	deadline := time.Now().Add(2 * time.Second)
	for _, id := range ids {
		gone := poll(time.Until(deadline), 10*time.Millisecond, func() bool {
			prog, err := ebpf.NewProgramFromID(id)
			if err != nil {
				return true
			}
			prog.Close()
			return false
		})
		if !gone {
			out = append(out, id)
		}
	}
	return out
}

// --- bad input with the real binary -----------------------------------------------------

// TestAgentWorkerPID: --pid of a worker is refused with the master's PID in the message.
func TestAgentWorkerPID(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	w := g.Workers()[0]
	p := launch(t, nil, "--pid", strconv.Itoa(w))
	code, _ := p.wait(t, 10*time.Second)
	out := p.out.String()
	t.Logf("exit %d: %s", code, strings.TrimSpace(out))
	if code != 2 {
		t.Errorf("exit code %d, want 2", code)
	}
	want := fmt.Sprintf("gpe-ebpf: pid %d is a Gunicorn worker, not the master: its master is pid %d (use --pid %d)", w, g.PID, g.PID)
	if !strings.Contains(out, want) {
		t.Errorf("output %q lacks %q", out, want)
	}
}

// TestAgentNotGunicorn: a process that is not Gunicorn is refused without --force, and with
// --force it is attached, served, and its exit ends gpe-ebpf with 0.
func TestAgentNotGunicorn(t *testing.T) {
	requireE2E(t)
	port := freePort(t)
	srv := exec.Command("/usr/bin/python3", "-m", "http.server", "--bind", "127.0.0.1", strconv.Itoa(port))
	srv.Dir = t.TempDir()
	if err := srv.Start(); err != nil {
		t.Fatalf("start python3 -m http.server: %v", err)
	}
	srvDone := make(chan struct{})
	go func() { srv.Wait(); close(srvDone) }()
	t.Cleanup(func() { srv.Process.Kill(); <-srvDone })
	pid := strconv.Itoa(srv.Process.Pid)

	p := launch(t, nil, "--pid", pid)
	code, _ := p.wait(t, 10*time.Second)
	out := p.out.String()
	t.Logf("without --force: exit %d: %s", code, strings.TrimSpace(out))
	if code != 2 {
		t.Errorf("without --force: exit code %d, want 2", code)
	}
	for _, w := range []string{"pid " + pid + " (", "http.server", "is not a Gunicorn master", "use --force"} {
		if !strings.Contains(out, w) {
			t.Errorf("without --force: output %q lacks %q", out, w)
		}
	}

	p = startGPE(t, "--pid", pid, "--force")
	ms := p.scrape(t)
	if n := len(ms.series("gunicorn_master_info", map[string]string{"master_pid": pid})); n != 1 {
		t.Errorf("with --force: %d gunicorn_master_info{master_pid=%s} series, want 1", n, pid)
	}
	if !strings.Contains(p.out.String(), "attached to master") {
		t.Errorf("with --force: no attach line in the log")
	}
	srv.Process.Signal(syscall.SIGTERM)
	if code, _ := p.wait(t, 10*time.Second); code != 0 {
		t.Errorf("with --force: exit code %d after the process exited, want 0", code)
	}
}

// TestAgentNoPrivileges: without root, gpe-ebpf names the capabilities it lacks and exits 2.
func TestAgentNoPrivileges(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	// The built binary sits in a 0700 directory: copy it where nobody can run it.
	dir, err := os.MkdirTemp("", "gpe-nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	bin := filepath.Join(dir, "gpe-ebpf")
	b, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--pid", strconv.Itoa(g.PID), "--metrics-port", strconv.Itoa(freePort(t)))
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	code := cmd.ProcessState.ExitCode()
	t.Logf("as nobody: exit %d: %s", code, strings.TrimSpace(string(out)))
	if code != 2 {
		t.Errorf("exit code %d (%v), want 2", code, err)
	}
	for _, w := range []string{"missing privileges", "CAP_BPF", "CAP_PERFMON"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("output %q lacks %q", out, w)
		}
	}
}

// TestAgentPortInUse: a taken metrics port is retried after 2, 4, 6 and 8 s, then gpe-ebpf
// exits 2 naming the port; SIGTERM during the retries is a normal stop (exit 0).
func TestAgentPortInUse(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)

	t.Run("SIGTERM while retrying", func(t *testing.T) {
		p := launch(t, nil, "--pid", strconv.Itoa(g.PID), "--metrics-port", port)
		waitFor(t, 15*time.Second, "the first retry warning", func() bool {
			return strings.Contains(p.out.String(), "metrics port in use, retrying") || !p.running()
		})
		if !p.running() {
			t.Fatalf("gpe-ebpf exited before retrying: %s", p.out.String())
		}
		p.cmd.Process.Signal(syscall.SIGTERM)
		code, took := p.wait(t, 10*time.Second)
		if code != 0 {
			t.Errorf("exit code %d after SIGTERM while retrying, want 0", code)
		}
		if took > 2*time.Second {
			t.Errorf("took %v to stop, want <= 2s", took)
		}
	})

	t.Run("gives up", func(t *testing.T) {
		start := time.Now()
		p := launch(t, nil, "--pid", strconv.Itoa(g.PID), "--metrics-port", port)
		code, _ := p.wait(t, 45*time.Second)
		elapsed := time.Since(start)
		out := p.out.String()
		last := out
		if i := strings.LastIndex(strings.TrimRight(out, "\n"), "\n"); i >= 0 {
			last = out[i+1:]
		}
		t.Logf("exit %d after %v: %s", code, elapsed.Round(time.Second), strings.TrimSpace(last))
		if code != 2 {
			t.Errorf("exit code %d, want 2", code)
		}
		want := "gpe-ebpf: metrics port in use: port " + port + " on 127.0.0.1 is still taken after 5 attempts"
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
		for _, d := range []string{"retry_in=2s", "retry_in=4s", "retry_in=6s", "retry_in=8s"} {
			if !strings.Contains(out, d) {
				t.Errorf("no retry warning with %s", d)
			}
		}
		if elapsed < 20*time.Second {
			t.Errorf("gave up after %v: the retries alone take 20s", elapsed)
		}
	})
}

// --- attaching --------------------------------------------------------------------------

// TestAgentPIDFile: with --pid-file, a service restart (old master gone, a new one writing
// the same file) is followed without restarting gpe-ebpf.
func TestAgentPIDFile(t *testing.T) {
	requireE2E(t)
	pidFile := filepath.Join(t.TempDir(), "app.pid")
	g1 := startGunicorn(t, gunicornOpts{Args: []string{"--pid", pidFile}})
	p := startGPE(t, "--pid-file", pidFile)
	gpePID := p.cmd.Process.Pid
	for i := 0; i < 3; i++ {
		get(t, g1.URL()+"/ok")
	}
	p.waitScrape(t, 15*time.Second, "3 requests of the first master", func(ms metrics) bool {
		return requestsOf(ms, g1.Workers()) == 3
	})

	g1.Stop()
	p.waitLog(t, fmt.Sprintf(`msg="master exited" master_pid=%d`, g1.PID))
	if !p.running() {
		t.Fatalf("gpe-ebpf exited with the first master in --pid-file mode: %v", p.cmd.ProcessState)
	}

	g2 := startGunicorn(t, gunicornOpts{Args: []string{"--pid", pidFile}})
	if got, _ := os.ReadFile(pidFile); strings.TrimSpace(string(got)) != strconv.Itoa(g2.PID) {
		t.Fatalf("pid file holds %q, want the new master %d", got, g2.PID)
	}
	p.waitScrape(t, 15*time.Second, "the new master's workers", func(ms metrics) bool {
		return len(ms.series("gunicorn_master_info", map[string]string{"master_pid": strconv.Itoa(g2.PID)})) == 1 &&
			seesWorkers(ms, g2.Workers())
	})
	for i := 0; i < 5; i++ {
		get(t, g2.URL()+"/ok")
	}
	ms := p.waitScrape(t, 15*time.Second, "5 requests of the new master", func(ms metrics) bool {
		return requestsOf(ms, g2.Workers()) == 5
	})
	if n := len(ms.series("gunicorn_master_info", map[string]string{"master_pid": strconv.Itoa(g1.PID)})); n != 0 {
		t.Errorf("the old master %d is still reported", g1.PID)
	}
	if !p.running() || p.cmd.Process.Pid != gpePID {
		t.Errorf("gpe-ebpf did not keep running")
	}
}

// TestAgentDiscover: --discover finds every master, labels every series with master_pid,
// picks up a master started later and drops one that stops.
func TestAgentDiscover(t *testing.T) {
	requireE2E(t)
	g1 := startGunicorn(t, gunicornOpts{})
	g2 := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--discover")
	m1, m2 := strconv.Itoa(g1.PID), strconv.Itoa(g2.PID)

	for i := 0; i < 3; i++ {
		get(t, g1.URL()+"/ok")
	}
	for i := 0; i < 5; i++ {
		get(t, g2.URL()+"/ok")
	}
	p.waitMetric(t, "gunicorn_worker_requests_total", map[string]string{"master_pid": m1}, 3)
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", map[string]string{"master_pid": m2}, 5)
	for _, g := range []*gunicorn{g1, g2} {
		mp := strconv.Itoa(g.PID)
		info := ms.series("gunicorn_master_info", map[string]string{"master_pid": mp})
		if len(info) != 1 || label(info[0], "app") != "app:app" {
			t.Errorf("gunicorn_master_info{master_pid=%s}: %v, want one series with app=\"app:app\"", mp, info)
		}
		if got := ms.sum("gunicorn_master_workers", map[string]string{"master_pid": mp}); got != 2 {
			t.Errorf("gunicorn_master_workers{master_pid=%s} = %v, want 2", mp, got)
		}
	}
	checked := 0
	for name, f := range ms {
		if !strings.HasPrefix(name, "gunicorn_") {
			continue
		}
		for _, m := range f.GetMetric() {
			checked++
			if label(m, "master_pid") == "" {
				t.Errorf("%s%v has no master_pid", name, m.GetLabel())
			}
		}
	}
	if checked == 0 {
		t.Fatal("no gunicorn_* series to check")
	}

	g3 := startGunicorn(t, gunicornOpts{})
	m3 := strconv.Itoa(g3.PID)
	p.waitScrape(t, 10*time.Second, "the third master to be discovered", func(ms metrics) bool {
		return len(ms.series("gunicorn_master_info", map[string]string{"master_pid": m3})) == 1 &&
			seesWorkers(ms, g3.Workers())
	})
	get(t, g3.URL()+"/ok")
	p.waitMetric(t, "gunicorn_worker_requests_total", map[string]string{"master_pid": m3}, 1)

	g2.Stop()
	ms = p.waitScrape(t, 10*time.Second, "the stopped master to be dropped", func(ms metrics) bool {
		for name, f := range ms {
			if !strings.HasPrefix(name, "gunicorn_") {
				continue
			}
			for _, m := range f.GetMetric() {
				if label(m, "master_pid") == m2 {
					return false
				}
			}
		}
		return true
	})
	if n := ms.sum("gunicorn_worker_requests_total", map[string]string{"master_pid": m1}); n != 3 {
		t.Errorf("requests of the first master after the second stopped: %v, want 3", n)
	}
	if !p.running() {
		t.Errorf("gpe-ebpf exited in --discover mode when a master stopped")
	}
}

// TestAgentUSR2: after a USR2 upgrade and QUIT of the old master, gpe-ebpf follows the new
// master, and exits 0 only when the new master exits.
func TestAgentUSR2(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	// The new master outlives the harness's process: kill the whole group at the end.
	t.Cleanup(func() { syscall.Kill(-g.PID, syscall.SIGKILL) })
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	for i := 0; i < 3; i++ {
		get(t, g.URL()+"/ok")
	}
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, 3)

	syscall.Kill(g.PID, syscall.SIGUSR2)
	// Gunicorn's new master writes <pidfile>.2 while the old one lives.
	var newPID int
	waitFor(t, 20*time.Second, "the new master and its workers", func() bool {
		b, err := os.ReadFile(filepath.Join(g.dir, "gunicorn.pid.2"))
		if err != nil {
			return false
		}
		newPID, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return newPID > 0 && len(children(newPID)) == 2
	})
	syscall.Kill(g.PID, syscall.SIGQUIT)
	// Not g.cmd.Wait: it also waits for Gunicorn's output pipes, which the new master holds.
	waitFor(t, 20*time.Second, "the old master to exit after QUIT", func() bool { return exited(g.PID) })
	p.waitLog(t, fmt.Sprintf(`msg="master exited" master_pid=%d`, g.PID))
	if !p.running() {
		t.Fatalf("gpe-ebpf exited with the old master: %v", p.cmd.ProcessState)
	}

	newWorkers := children(newPID)
	ms := p.waitScrape(t, 10*time.Second, "the new master's workers", func(ms metrics) bool {
		return seesWorkers(ms, newWorkers)
	})
	if n := len(ms.series("gunicorn_master_info", map[string]string{"master_pid": strconv.Itoa(newPID)})); n != 1 {
		t.Errorf("gunicorn_master_info{master_pid=%d}: %d series, want 1", newPID, n)
	}
	for i := 0; i < 5; i++ {
		get(t, g.URL()+"/ok")
	}
	p.waitScrape(t, 15*time.Second, "5 requests counted on the new master's workers", func(ms metrics) bool {
		return requestsOf(ms, newWorkers) == 5
	})

	syscall.Kill(newPID, syscall.SIGTERM)
	if code, _ := p.wait(t, 15*time.Second); code != 0 {
		t.Errorf("exit code %d after the new master exited, want 0", code)
	}
}

// exited says whether pid is gone or a zombie.
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(b, ')')
	return i < 0 || len(b) < i+3 || b[i+2] == 'Z'
}

func children(pid int) []int {
	out, _ := exec.Command("pgrep", "-P", strconv.Itoa(pid)).Output()
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if n, err := strconv.Atoi(f); err == nil {
			pids = append(pids, n)
		}
	}
	return pids
}

// --- lifecycle --------------------------------------------------------------------------

// TestAgentStaleAfter: the series of a killed worker that only one scrape showed exited (two
// would drop them) go after --stale-after all the same.
func TestAgentStaleAfter(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--stale-after", "2s")
	victim := g.Workers()[0]
	var id string
	p.waitScrape(t, 10*time.Second, "the victim's worker_info", func(ms metrics) bool {
		for _, m := range ms.series("gunicorn_worker_info", map[string]string{"pid": strconv.Itoa(victim)}) {
			id = label(m, "worker_id")
		}
		return id != ""
	})
	hasAny := func(ms metrics) bool {
		for _, f := range ms {
			for _, m := range f.GetMetric() {
				if label(m, "worker_id") == id {
					return true
				}
			}
		}
		return false
	}
	killed := time.Now()
	syscall.Kill(victim, syscall.SIGKILL)
	p.waitScrape(t, 10*time.Second, "the killed worker to be seen exited", func(ms metrics) bool {
		if !hasAny(ms) {
			t.Fatalf("the series of %s vanished before its exit was seen", id)
		}
		return len(ms.series("gunicorn_worker_state", map[string]string{"worker_id": id, "state": "exited"})) == 1
	})
	// No scrape now (it would be the second to show the exit): past --stale-after, and the
	// 500 ms sampling tick that expires series, the next scrape no longer has them. A fixed wait
	// on purpose: the expiry is seen only by scraping (gpe-ebpf logs none), which would change
	// what is tested.
	time.Sleep(time.Until(killed.Add(3 * time.Second)))
	ms := p.scrape(t)
	if hasAny(ms) {
		t.Errorf("series of %s still served %v after the kill, past --stale-after 2s", id, time.Since(killed).Round(time.Millisecond))
	}
	// The replacement is still there.
	if n := len(ms.series("gunicorn_worker_state", map[string]string{"state": "running"})); n != 2 {
		t.Errorf("%d running workers after the replacement, want 2", n)
	}
}

// TestAgentSIGINT: SIGINT detaches and exits 0 within 2 s, and every program it held is
// unloaded.
func TestAgentSIGINT(t *testing.T) {
	requireE2E(t)
	_, p, ids := startServing(t)
	p.cmd.Process.Signal(syscall.SIGINT)
	code, took := p.wait(t, 10*time.Second)
	if code != 0 {
		t.Errorf("exit code %d after SIGINT, want 0", code)
	}
	if took > 2*time.Second {
		t.Errorf("took %v to exit after SIGINT, want <= 2s", took)
	}
	if left := stillLoaded(ids); len(left) > 0 {
		t.Errorf("programs %v still loaded after exit (held %v)", left, ids)
	}
	if !strings.Contains(p.out.String(), "stopping") {
		t.Errorf("no stopping line in the log")
	}
}

const tracefsDir = "/sys/kernel/tracing"

func tracefsMounted(t *testing.T) bool {
	t.Helper()
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == tracefsDir {
			return true
		}
	}
	return false
}

// TestAgentMountsTracefs: with tracefs unmounted, gpe-ebpf mounts it and works. The mount is
// restored whatever happens. Other tests loading probes at this moment would see no tracefs:
// gpe-ebpf mounts it for them too, which is what is tested here.
func TestAgentMountsTracefs(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	t.Cleanup(func() {
		if !tracefsMounted(t) {
			if err := unix.Mount("tracefs", tracefsDir, "tracefs", 0, ""); err != nil {
				t.Errorf("restore the tracefs mount: %v", err)
			}
		}
	})
	for i := 0; i < 5 && tracefsMounted(t); i++ {
		need(t, "unmount "+tracefsDir, unix.Unmount(tracefsDir, 0))
	}
	if tracefsMounted(t) {
		t.Fatalf("%s still mounted after unmounting", tracefsDir)
	}
	if _, err := os.Stat(tracefsDir + "/events"); err == nil {
		t.Fatalf("%s/events exists with tracefs unmounted: the test would prove nothing", tracefsDir)
	}
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	if !tracefsMounted(t) {
		t.Fatalf("gpe-ebpf runs but %s is not mounted", tracefsDir)
	}
	get(t, g.URL()+"/ok")
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, 1)
}

// --- web --------------------------------------------------------------------------------

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key; it returns their
// paths and a pool that trusts the certificate.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "gpe-ebpf e2e"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func httpsClient(pool *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
}

// fetch GETs url, with basic auth when user is set; status 0 means no HTTP answer.
func fetch(c *http.Client, url, user, pass string) (int, []byte, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return 0, nil, err
	}
	if user != "" {
		req.SetBasicAuth(user, pass)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// waitAnswer waits until the endpoint answers HTTP at all.
func (p *gpe) waitAnswer(t *testing.T, c *http.Client, url string) {
	t.Helper()
	waitFor(t, 15*time.Second, "gpe-ebpf to answer on "+url, func() bool {
		if !p.running() {
			t.Fatalf("gpe-ebpf exited early: %v\n%s", p.cmd.ProcessState, p.out.String())
		}
		code, _, _ := fetch(c, url, "", "")
		return code != 0
	})
}

func checkExposition(t *testing.T, body []byte) {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	if _, ok := fams["gunicorn_worker_info"]; !ok {
		t.Errorf("no gunicorn_worker_info in the exposition")
	}
}

// TestAgentWebConfig: an exporter-toolkit web config with TLS and basic auth.
func TestAgentWebConfig(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	cert, key, pool := selfSigned(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	web := filepath.Join(t.TempDir(), "web.yml")
	conf := fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\nbasic_auth_users:\n  prom: %s\n", cert, key, hash)
	if err := os.WriteFile(web, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	p := launch(t, nil, "--pid", strconv.Itoa(g.PID), "--web.config.file", web)
	url := fmt.Sprintf("https://127.0.0.1:%d/metrics", p.Port)
	c := httpsClient(pool)
	p.waitAnswer(t, c, url)

	if code, _, err := fetch(c, url, "", ""); code != http.StatusUnauthorized {
		t.Errorf("HTTPS without credentials: %d (%v), want 401", code, err)
	}
	if code, _, err := fetch(c, url, "prom", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("HTTPS with a wrong password: %d (%v), want 401", code, err)
	}
	code, body, err := fetch(c, url, "prom", "s3cret")
	if code != http.StatusOK {
		t.Fatalf("HTTPS with credentials: %d (%v), want 200", code, err)
	}
	checkExposition(t, body)
	if code, _, _ := fetch(&http.Client{Timeout: 5 * time.Second}, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.Port), "prom", "s3cret"); code == http.StatusOK {
		t.Errorf("plain HTTP answered 200 on a TLS endpoint")
	}
}

// TestAgentTLS: --tls-cert-file/--tls-key-file and PROMETHEUS_SSL_CERTFILE/KEYFILE serve HTTPS.
func TestAgentTLS(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	cert, key, pool := selfSigned(t)
	for _, c := range []struct {
		name string
		env  []string
		args []string
	}{
		{"flags", nil, []string{"--tls-cert-file", cert, "--tls-key-file", key}},
		{"environment", []string{"PROMETHEUS_SSL_CERTFILE=" + cert, "PROMETHEUS_SSL_KEYFILE=" + key}, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := launch(t, c.env, append([]string{"--pid", strconv.Itoa(g.PID)}, c.args...)...)
			url := fmt.Sprintf("https://127.0.0.1:%d/metrics", p.Port)
			cl := httpsClient(pool)
			p.waitAnswer(t, cl, url)
			code, body, err := fetch(cl, url, "", "")
			if code != http.StatusOK {
				t.Fatalf("HTTPS: %d (%v), want 200", code, err)
			}
			checkExposition(t, body)
			if code, _, _ := fetch(&http.Client{Timeout: 5 * time.Second}, fmt.Sprintf("http://127.0.0.1:%d/metrics", p.Port), "", ""); code == http.StatusOK {
				t.Errorf("plain HTTP answered 200 on a TLS endpoint")
			}
		})
	}
}

// --- Redis ------------------------------------------------------------------------------

// redisServer is a real redis-server on a free loopback port, with no persistence; the same
// pattern as internal/redisfwd's tests (test helpers are not imported across packages).
type redisServer struct {
	port   int
	dir    string
	cmd    *exec.Cmd
	exited chan struct{}
}

func startRedisServer(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if _, serr := os.Stat("/usr/bin/redis-server"); serr == nil {
			bin, err = "/usr/bin/redis-server", nil
		}
	}
	need(t, "the Redis test needs Debian's redis-server (make deps)", err)
	s := &redisServer{port: freePort(t), dir: t.TempDir(), exited: make(chan struct{})}
	logf, err := os.Create(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.cmd = exec.Command(bin, "--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir)
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.exited
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	waitFor(t, 10*time.Second, "redis-server to answer", func() bool {
		select {
		case <-s.exited:
			b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
			t.Fatalf("redis-server exited at start:\n%s", b)
		default:
		}
		// Plain dials first: go-redis would log each refusal.
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		c.Close()
		cl := s.client()
		defer cl.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return cl.Ping(ctx).Err() == nil
	})
	return s
}

func (s *redisServer) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Protocol: 2, DisableIdentity: true, MaxRetries: -1})
}

// latestRequests reads {prefix}{instance}:latest and returns its requests total; ok is false
// while the key is missing.
func latestRequests(t *testing.T, rc *redis.Client, instance string) (float64, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	text, err := rc.Get(ctx, "gunicorn:metrics:"+instance+":latest").Result()
	if errors.Is(err, redis.Nil) {
		return 0, false
	}
	if err != nil {
		t.Fatalf("GET latest: %v", err)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("the latest key is not an exposition: %v\n%s", err, text)
	}
	if _, ok := fams["gunicorn_worker_info"]; !ok {
		t.Fatalf("the latest key has no gunicorn_worker_info:\n%s", text)
	}
	return metrics(fams).sum("gunicorn_worker_requests_total", nil), true
}

// TestAgentRedis: the real binary forwards what /metrics serves to a real Redis, and makes a
// final forward on SIGTERM.
func TestAgentRedis(t *testing.T) {
	requireE2E(t)
	rs := startRedisServer(t)
	rc := rs.client()
	defer rc.Close()
	g := startGunicorn(t, gunicornOpts{})
	redisArgs := func(instance, interval string) []string {
		return []string{"--pid", strconv.Itoa(g.PID), "--redis-enabled", "true", "--redis-host", "127.0.0.1",
			"--redis-port", strconv.Itoa(rs.port), "--redis-forward-interval", interval, "--redis-instance", instance}
	}

	t.Run("every interval", func(t *testing.T) {
		p := startGPE(t, redisArgs("e2e", "1")...)
		for i := 0; i < 7; i++ {
			get(t, g.URL()+"/ok")
		}
		ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, 7)
		scraped := ms.sum("gunicorn_worker_requests_total", nil)
		var stored float64
		waitFor(t, 10*time.Second, "the latest key to hold the scrape's requests", func() bool {
			n, ok := latestRequests(t, rc, "e2e")
			stored = n
			return ok && n == scraped
		})
		ctx := context.Background()
		if ok, err := rc.SIsMember(ctx, "gunicorn:metrics:instances", "e2e").Result(); err != nil || !ok {
			t.Errorf("e2e not in the instances set (%v)", err)
		}
		var meta struct {
			Forwarder string `json:"forwarder"`
			Port      int    `json:"port"`
			Masters   []int  `json:"masters"`
		}
		raw, err := rc.Get(ctx, "gunicorn:metrics:e2e:metadata").Result()
		if err != nil || json.Unmarshal([]byte(raw), &meta) != nil {
			t.Fatalf("metadata %q: %v", raw, err)
		}
		if meta.Forwarder != "redis" || meta.Port != p.Port || len(meta.Masters) != 1 || meta.Masters[0] != g.PID {
			t.Errorf("metadata %s: want forwarder redis, port %d, masters [%d]", raw, p.Port, g.PID)
		}
		keys, err := rc.Keys(ctx, "gunicorn:metrics:e2e:1*").Result()
		if err != nil || len(keys) == 0 {
			t.Errorf("no timestamped keys (%v)", err)
		} else if ttl, err := rc.TTL(ctx, keys[0]).Result(); err != nil || ttl <= 0 || ttl > 3*time.Second {
			t.Errorf("TTL of %s: %v (%v), want at most 3 x 1s", keys[0], ttl, err)
		}
		t.Logf("scraped %v, stored %v", scraped, stored)
		p.Stop(t)
	})

	t.Run("final forward on SIGTERM", func(t *testing.T) {
		// A 60 s interval: after the forward at start, only the final one can write again.
		p := startGPE(t, redisArgs("e2e-final", "60")...)
		var first float64
		waitFor(t, 10*time.Second, "the forward at start", func() bool {
			n, ok := latestRequests(t, rc, "e2e-final")
			first = n
			return ok
		})
		if first != 0 {
			t.Fatalf("the forward at start holds %v requests, want 0", first)
		}
		for i := 0; i < 4; i++ {
			get(t, g.URL()+"/ok")
		}
		p.waitMetric(t, "gunicorn_worker_requests_total", nil, 4)
		if n, _ := latestRequests(t, rc, "e2e-final"); n != 0 {
			t.Fatalf("the latest key changed before SIGTERM (%v): the test would prove nothing", n)
		}
		if _, code := p.Stop(t); code != 0 {
			t.Errorf("exit code %d after SIGTERM, want 0", code)
		}
		if n, _ := latestRequests(t, rc, "e2e-final"); n != 4 {
			t.Errorf("latest key after SIGTERM holds %v requests, want 4 (the final forward)", n)
		}
		if !strings.Contains(p.out.String(), "redis forwarding stopped after a final forward") {
			t.Errorf("no final forward in the log")
		}
	})
}

// --- logs -------------------------------------------------------------------------------

// TestAgentJSONLogs: with --log-format json every line gpe-ebpf writes is JSON, go-redis's
// own messages (failed dials to an absent Redis) included, and the attach line carries
// master_pid.
func TestAgentJSONLogs(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	dead := freePort(t) // nothing listens there
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--log-format", "json",
		"--redis-enabled", "true", "--redis-host", "127.0.0.1", "--redis-port", strconv.Itoa(dead), "--redis-forward-interval", "1")
	get(t, g.URL()+"/ok")
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, 1)
	p.waitLog(t, "redis forward failed")
	if _, code := p.Stop(t); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	attach, goRedis := false, false
	sc := bufio.NewScanner(strings.NewReader(p.out.String()))
	lines := 0
	for sc.Scan() {
		lines++
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Errorf("not JSON: %q", sc.Text())
			continue
		}
		if rec["msg"] == "attached to master" {
			attach = true
			if mp, ok := rec["master_pid"].(float64); !ok || int(mp) != g.PID {
				t.Errorf("attach line master_pid %v, want %d: %s", rec["master_pid"], g.PID, sc.Text())
			}
		}
		if rec["component"] == "go-redis" {
			goRedis = true
		}
	}
	if lines < 3 {
		t.Errorf("only %d log lines", lines)
	}
	if !attach {
		t.Errorf("no attached to master line")
	}
	if !goRedis {
		t.Errorf("no go-redis record: its messages are not routed through slog")
	}
}
