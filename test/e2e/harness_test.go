package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/cilium/ebpf"

	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
)

// These tests start a real Gunicorn (Debian's) and the real gpe-ebpf binary, and scrape real
// /metrics. They need root to load BPF programs; under CI=true a missing prerequisite fails
// the test instead of skipping it.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s: %v", what, err)
}

// requireE2E checks root (BPF), Gunicorn and the worker libraries, and builds gpe-ebpf once.
func requireE2E(t *testing.T) {
	t.Helper()
	need(t, "end-to-end tests load BPF programs and need root (CAP_BPF, CAP_PERFMON)", probes.CheckPrivileges())
	_, err := exec.LookPath("gunicorn")
	need(t, "end-to-end tests need Debian's gunicorn (make deps)", err)
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gpe-e2e-bin")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "gpe-ebpf")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/gpe-ebpf")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("build gpe-ebpf: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
}

func appDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "app")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// gunicorn is a running Gunicorn master.
type gunicorn struct {
	cmd       *exec.Cmd
	PID       int
	Port      int
	Addr      string // host:port, or the unix socket path
	AccessLog string
	Log       *bytes.Buffer
	dir       string
}

type gunicornOpts struct {
	WorkerClass string // sync by default
	Workers     int    // 2 by default
	App         string // app:app by default
	Args        []string
	Bind        string   // default 127.0.0.1:<free port>
	Env         []string // KEY=value appended to the test process environment for Gunicorn
	// Root is a root filesystem built by test/roots/build.sh: when set, Gunicorn is that root's,
	// run by test/roots/run.sh (its own mount namespace, the host's network), with the test app
	// copied into the root's /tmp. Its PID is still the host's PID of the master.
	Root string
	// PlainChroot runs a Root's Gunicorn under a plain chroot in the host's mount namespace
	// (test/roots/chroot.sh) rather than in a mount namespace of its own.
	PlainChroot bool
	// Others is how many children of the master are not HTTP workers (a dirty arbiter): the
	// start waits for Workers + Others children.
	Others int
}

// startGunicorn starts Gunicorn with an access log that records method, path, status and
// microseconds, and waits until it answers.
func startGunicorn(t *testing.T, o gunicornOpts) *gunicorn {
	t.Helper()
	if o.WorkerClass == "" {
		o.WorkerClass = "sync"
	}
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.App == "" {
		o.App = "app:app"
	}
	// dir is where the test finds Gunicorn's files, inner where Gunicorn does: the same on the
	// host, the root's /tmp/<dir> seen from the host and from inside for a root.
	dir, inner, app := t.TempDir(), "", appDir()
	if o.Root != "" {
		dir, inner = rootTempDir(t, o.Root)
		copyApp(t, dir)
		app = inner
	} else {
		inner = dir
	}
	g := &gunicorn{Log: new(bytes.Buffer), dir: dir, AccessLog: filepath.Join(dir, "access.log")}
	bind := o.Bind
	if bind == "" {
		g.Port = freePort(t)
		bind = fmt.Sprintf("127.0.0.1:%d", g.Port)
	}
	g.Addr = strings.TrimPrefix(bind, "unix:")
	args := []string{"-w", strconv.Itoa(o.Workers), "-k", o.WorkerClass, "-b", bind,
		"--pid", filepath.Join(inner, "gunicorn.pid"),
		"--access-logfile", filepath.Join(inner, "access.log"), "--access-logformat", "%(m)s %(U)s %(s)s %(D)s",
		"--chdir", app}
	args = append(args, o.Args...)
	args = append(args, o.App)
	if o.Root != "" {
		// run.sh execs unshare, which execs chroot, which execs gunicorn: one PID all along
		// (chroot.sh execs chroot).
		script := "test/roots/run.sh"
		if o.PlainChroot {
			script = "test/roots/chroot.sh"
			t.Cleanup(func() {
				if out, err := exec.Command("bash", filepath.Join(repoDir(), script), "--unmount", o.Root).CombinedOutput(); err != nil {
					t.Errorf("unmount the chroot's /proc and /dev: %v: %s", err, out)
				}
			})
		}
		g.cmd = exec.Command("bash", append([]string{filepath.Join(repoDir(), script), o.Root, "gunicorn"}, args...)...)
	} else {
		g.cmd = exec.Command("gunicorn", args...)
	}
	if len(o.Env) > 0 {
		g.cmd.Env = append(os.Environ(), o.Env...)
	}
	g.cmd.Stdout = g.Log
	g.cmd.Stderr = g.Log
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start gunicorn: %v", err)
	}
	g.PID = g.cmd.Process.Pid
	t.Cleanup(func() {
		g.Stop()
		if t.Failed() && o.Root != "" {
			t.Logf("gunicorn's output:\n%s", g.Log.String())
		}
	})
	waitFor(t, 20*time.Second, "gunicorn to answer", func() bool {
		return len(g.Workers()) == o.Workers+o.Others && g.answers()
	})
	return g
}

func (g *gunicorn) answers() bool {
	c, err := g.dial()
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func (g *gunicorn) dial() (net.Conn, error) {
	if g.Port == 0 {
		return net.Dial("unix", g.Addr)
	}
	return net.Dial("tcp", g.Addr)
}

// conn is a fresh connection to Gunicorn.
func (g *gunicorn) conn(t *testing.T) net.Conn {
	t.Helper()
	c, err := g.dial()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Stop terminates Gunicorn and its workers.
func (g *gunicorn) Stop() {
	if g.cmd.ProcessState != nil {
		return
	}
	syscall.Kill(g.PID, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		syscall.Kill(-g.PID, syscall.SIGKILL)
		<-done
	}
}

// Workers lists the master's children.
func (g *gunicorn) Workers() []int { return children(g.PID) }

// URL is the base URL of a TCP-bound Gunicorn.
func (g *gunicorn) URL() string { return "http://" + g.Addr }

// accessEntry is one access-log line.
type accessEntry struct {
	Method, Path string
	Status       int
	Micros       int64
}

// AccessLog reads Gunicorn's access log.
func (g *gunicorn) Access(t *testing.T) []accessEntry {
	t.Helper()
	f, err := os.Open(g.AccessLog)
	if err != nil {
		t.Fatalf("access log: %v", err)
	}
	defer f.Close()
	var out []accessEntry
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) != 4 {
			continue
		}
		st, _ := strconv.Atoi(fs[2])
		us, _ := strconv.ParseInt(fs[3], 10, 64)
		out = append(out, accessEntry{fs[0], fs[1], st, us})
	}
	return out
}

// tcpSocket is one socket of /proc/net/tcp (this network namespace, IPv4).
type tcpSocket struct {
	local, remote int // ports
	state         int // the kernel's TCP state: 1 established, 3 SYN received, 8 close wait, 10 listen, ...
	rxQueue       int // bytes received that the process has not read
}

func tcpSockets(t *testing.T) []tcpSocket {
	t.Helper()
	b, err := os.ReadFile("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	port := func(addr string) int {
		n, _ := strconv.ParseUint(addr[strings.IndexByte(addr, ':')+1:], 16, 16)
		return int(n)
	}
	var out []tcpSocket
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line) // sl local_address rem_address st tx_queue:rx_queue ...
		if len(f) < 5 {
			continue
		}
		st, _ := strconv.ParseUint(f[3], 16, 8)
		rx, _ := strconv.ParseUint(f[4][strings.IndexByte(f[4], ':')+1:], 16, 32)
		out = append(out, tcpSocket{port(f[1]), port(f[2]), int(st), int(rx)})
	}
	return out
}

// serverEnd is Gunicorn's end of the client connection c, until it is closed.
func (g *gunicorn) serverEnd(t *testing.T, c net.Conn) (tcpSocket, bool) {
	t.Helper()
	for _, s := range tcpSockets(t) {
		if s.local == g.Port && s.remote == c.LocalAddr().(*net.TCPAddr).Port {
			return s, true
		}
	}
	return tcpSocket{}, false
}

// idle waits until Gunicorn (on TCP) holds no connection open: every request it took was
// answered, into the void or not, and its connection closed by the worker.
func (g *gunicorn) idle(t *testing.T) {
	t.Helper()
	waitFor(t, 10*time.Second, "Gunicorn to close every connection it took", func() bool {
		for _, s := range tcpSockets(t) {
			if s.local == g.Port && (s.state == 1 || s.state == 3 || s.state == 8) {
				return false
			}
		}
		return true
	})
}

// gpe is a running gpe-ebpf.
type gpe struct {
	cmd  *exec.Cmd
	Port int
	out  *safeBuffer
	done chan struct{}
}

type safeBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *safeBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *safeBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// defaultArgs are the flags every test's gpe-ebpf gets before its own (which win): the metrics
// port, a short sampling interval, debug logs, and --hooks $GPE_HOOKS when that is set, so the
// whole suite runs in either hook mode (make test-e2e runs it in both).
func defaultArgs(port int) []string {
	args := []string{"--metrics-port", strconv.Itoa(port), "--bind-address", "127.0.0.1", "--sample-interval", "500ms", "--log-level", "debug"}
	if h := os.Getenv("GPE_HOOKS"); h != "" {
		args = append(args, "--hooks", h)
	}
	return args
}

// spawnGPE starts gpe-ebpf with the default flags and args (later flags win) and does not wait
// for it to serve. env nil inherits the test's environment; otherwise it is the whole of it.
func spawnGPE(t *testing.T, env []string, args ...string) *gpe {
	t.Helper()
	p := &gpe{Port: freePort(t), out: new(safeBuffer), done: make(chan struct{})}
	args = append(defaultArgs(p.Port), args...)
	p.cmd = exec.Command(binPath, args...)
	p.cmd.Env = env
	p.cmd.Stdout = p.out
	p.cmd.Stderr = p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start gpe-ebpf: %v", err)
	}
	go func() { p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("gpe-ebpf %v output:\n%s", args, p.out.String())
		}
	})
	return p
}

// startGPE starts gpe-ebpf with args (plus a free --metrics-port) and waits for /metrics.
func startGPE(t *testing.T, args ...string) *gpe {
	t.Helper()
	p := spawnGPE(t, nil, args...)
	waitFor(t, 15*time.Second, "gpe-ebpf to serve /metrics", func() bool {
		if !p.running() {
			t.Fatalf("gpe-ebpf exited early: %v\n%s", p.cmd.ProcessState, p.out.String())
		}
		resp, err := http.Get(p.url())
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return p
}

func (p *gpe) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// waitLog waits until a line of gpe-ebpf's log holds every one of words.
func (p *gpe) waitLog(t *testing.T, words ...string) {
	t.Helper()
	waitFor(t, 10*time.Second, fmt.Sprintf("a log line with %q", words), func() bool {
		for _, line := range strings.Split(p.out.String(), "\n") {
			n := 0
			for _, w := range words {
				if strings.Contains(line, w) {
					n++
				}
			}
			if n == len(words) {
				return true
			}
		}
		return false
	})
}

func (p *gpe) url() string { return fmt.Sprintf("http://127.0.0.1:%d/metrics", p.Port) }

// Stop sends SIGTERM and returns how long gpe-ebpf took to exit, and its exit code.
func (p *gpe) Stop(t *testing.T) (time.Duration, int) {
	select {
	case <-p.done:
		return 0, p.cmd.ProcessState.ExitCode()
	default:
	}
	start := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	return time.Since(start), p.cmd.ProcessState.ExitCode()
}

// metrics is one parsed scrape.
type metrics map[string]*dto.MetricFamily

func (p *gpe) scrape(t *testing.T) metrics {
	t.Helper()
	resp, err := http.Get(p.url())
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("parse scrape: %v\n%s", err, body)
	}
	return fams
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Histogram != nil:
		return float64(m.Histogram.GetSampleCount())
	case m.Untyped != nil:
		return m.Untyped.GetValue()
	}
	return 0
}

// sum adds the values (for histograms, the counts) of every series of name whose labels
// include want.
func (ms metrics) sum(name string, want map[string]string) float64 {
	f, ok := ms[name]
	if !ok {
		return 0
	}
	var s float64
	for _, m := range f.GetMetric() {
		if labelsMatch(m, want) {
			s += value(m)
		}
	}
	return s
}

// series returns every series of name whose labels include want.
func (ms metrics) series(name string, want map[string]string) []*dto.Metric {
	f, ok := ms[name]
	if !ok {
		return nil
	}
	var out []*dto.Metric
	for _, m := range f.GetMetric() {
		if labelsMatch(m, want) {
			out = append(out, m)
		}
	}
	return out
}

// bucket sums the cumulative count at upper bound le over the histograms matching want.
func (ms metrics) bucket(name string, want map[string]string, le float64) uint64 {
	var n uint64
	for _, m := range ms.series(name, want) {
		for _, b := range m.GetHistogram().GetBucket() {
			if b.GetUpperBound() == le {
				n += b.GetCumulativeCount()
			}
		}
	}
	return n
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// poll calls cond every interval until it holds or d has passed, and says whether it held. It
// is the suite's one polling loop: every wait of the suite is built on it.
func poll(d, every time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(every)
	}
}

// unchanged is a condition for poll that holds once read gives the same value twice running:
// with poll's interval between the reads, nothing changed over that long.
func unchanged[T comparable](read func() T) func() bool {
	var last T
	seen := false
	return func() bool {
		v := read()
		same := seen && v == last
		last, seen = v, true
		return same
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	if !poll(d, 50*time.Millisecond, cond) {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// scrapeUntil scrapes every 100 ms until ok says yes or d has passed, and returns the last
// scrape either way and whether ok said yes. It fails at once if gpe-ebpf has exited.
func (p *gpe) scrapeUntil(t *testing.T, d time.Duration, ok func(metrics) bool) (metrics, bool) {
	t.Helper()
	var ms metrics
	held := poll(d, 100*time.Millisecond, func() bool {
		if !p.running() {
			t.Fatalf("gpe-ebpf exited: %v\n%s", p.cmd.ProcessState, p.out.String())
		}
		ms = p.scrape(t)
		return ok(ms)
	})
	return ms, held
}

// waitScrape scrapes until ok says yes, and returns that scrape.
func (p *gpe) waitScrape(t *testing.T, d time.Duration, what string, ok func(metrics) bool) metrics {
	t.Helper()
	ms, held := p.scrapeUntil(t, d, ok)
	if !held {
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
	return ms
}

// waitMetric waits until sum(name, labels) == want, then returns the final scrape.
// It fails with the last value seen if that never happens.
func (p *gpe) waitMetric(t *testing.T, name string, labels map[string]string, want float64) metrics {
	t.Helper()
	ms := p.settle(t, name, labels, want)
	if last := ms.sum(name, labels); last != want {
		t.Fatalf("%s%v = %v, want %v", name, labels, last, want)
	}
	return ms
}

// settle waits up to 15 s for sum(name, labels) to reach want and returns the last scrape
// either way, so the caller's finer assertions say what is off.
func (p *gpe) settle(t *testing.T, name string, labels map[string]string, want float64) metrics {
	t.Helper()
	ms, _ := p.scrapeUntil(t, 15*time.Second, func(ms metrics) bool { return ms.sum(name, labels) == want })
	return ms
}

// quietWindow is the time between the two scrapes of quiet: three drains of gpe-ebpf's ring
// buffer reader (one every 100 ms), so a record the kernel wrote before the first scrape is
// counted by the second.
const quietWindow = 300 * time.Millisecond

// quiet waits until gpe-ebpf reads no more records (gpe_ebpf_events_total unchanged across two
// scrapes quietWindow apart) and returns the last scrape: every record of what happened before
// the first of them is in it. It is the wait for "nothing more arrives" once a count is reached,
// for TCP (a Unix connection's end waits for a sweep, every 500 ms).
func (p *gpe) quiet(t *testing.T) metrics {
	t.Helper()
	var ms metrics
	if !poll(15*time.Second, quietWindow, unchanged(func() float64 {
		ms = p.scrape(t)
		return ms.sum("gpe_ebpf_events_total", nil)
	})) {
		t.Fatalf("gpe_ebpf_events_total still growing after 15 s: %v", ms.sum("gpe_ebpf_events_total", nil))
	}
	return ms
}

// startServing starts Gunicorn and gpe-ebpf, serves one request, and returns the IDs of the
// BPF programs that gpe-ebpf holds, so a test can check none outlives it.
func startServing(t *testing.T) (*gunicorn, *gpe, []ebpf.ProgramID) {
	t.Helper()
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	get(t, g.URL()+"/ok")
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, 1)
	// By ID: other gpe-ebpf processes may run alongside.
	ids := progIDs(t, p.cmd.Process.Pid)
	if len(ids) == 0 {
		t.Fatalf("no BPF program held by gpe-ebpf while it runs: a check that none outlives it would prove nothing")
	}
	return g, p, ids
}

// get sends one request with a fresh connection and returns the status.
func get(t *testing.T, url string) int {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// parallel runs n calls of f over c goroutines.
func parallel(n, c int, f func(i int)) {
	var wg sync.WaitGroup
	ch := make(chan int)
	for w := 0; w < c; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range ch {
				f(i)
			}
		}()
	}
	for i := 0; i < n; i++ {
		ch <- i
	}
	close(ch)
	wg.Wait()
}
