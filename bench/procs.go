package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clkTck is USER_HZ, the unit of utime and stime in /proc/<pid>/stat (100 on every Linux
// architecture Go supports; sysconf would need cgo).
const clkTck = 100

// freePort asks the kernel for a free loopback port: other sessions share this machine.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// gunicorn is a Gunicorn master we started, sync workers, test/app on loopback.
type gunicorn struct {
	cmd    *exec.Cmd
	port   int
	log    *bytes.Buffer
	scheme string // https when extra gave it a --certfile
}

// startGunicorn starts it with extra flags (--certfile and --keyfile: it serves HTTPS).
func startGunicorn(root string, workers int, extra ...string) (*gunicorn, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	g := &gunicorn{port: port, log: &bytes.Buffer{}, scheme: "http"}
	if slices.Contains(extra, "--certfile") {
		g.scheme = "https"
	}
	args := []string{"--workers", strconv.Itoa(workers), "--worker-class", "sync",
		"--bind", fmt.Sprintf("127.0.0.1:%d", port), "--chdir", filepath.Join(root, "test", "app"),
		"--log-level", "warning", "--backlog", "2048"}
	g.cmd = exec.Command("gunicorn", append(append(args, extra...), "app:app")...)
	g.cmd.Stdout, g.cmd.Stderr = g.log, g.log
	g.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := g.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start gunicorn: %w", err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if len(children(g.cmd.Process.Pid)) == workers && httpOK(g.url("/ok")) {
			return g, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	g.stop()
	return nil, fmt.Errorf("gunicorn with %d workers not ready after 60s: %s", workers, g.log.String())
}

func (g *gunicorn) pid() int { return g.cmd.Process.Pid }
func (g *gunicorn) url(path string) string {
	return fmt.Sprintf("%s://127.0.0.1:%d%s", g.scheme, g.port, path)
}

func (g *gunicorn) stop() {
	if g == nil || g.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-g.cmd.Process.Pid, syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = g.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-g.cmd.Process.Pid, syscall.SIGKILL)
		<-done
	}
}

// children lists a process's children from /proc/<pid>/task/<pid>/children.
func children(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

func httpOK(url string) bool {
	// The tls phase's Gunicorn has a self-signed certificate the bench just made.
	c := http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	resp, err := c.Get(url)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == 200
}

// observer is a running gpe-ebpf.
type observer struct {
	cmd     *exec.Cmd
	port    int
	out     *os.File // its stdout and stderr, a temporary file the kernel keeps consistent
	started time.Time
	exited  chan struct{}
	// ready is exec to the first answered /metrics; took is what its "attached" line says.
	ready, took time.Duration
}

// output is what the observer has logged so far.
func (o *observer) output() string {
	b, _ := os.ReadFile(o.out.Name())
	return string(b)
}

var tookRE = regexp.MustCompile(`msg=attached .*took=(\S+)`)

func startObserver(bin string, master int, extra ...string) (*observer, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	out, err := os.CreateTemp("", "gpe-bench-observer-*.log")
	if err != nil {
		return nil, err
	}
	o := &observer{port: port, out: out}
	args := append([]string{"--pid", strconv.Itoa(master), "--metrics-port", strconv.Itoa(port),
		"--bind-address", "127.0.0.1"}, extra...)
	o.cmd = exec.Command(bin, args...)
	o.cmd.Stdout, o.cmd.Stderr = out, out
	o.started = time.Now()
	if err := o.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start gpe-ebpf: %w", err)
	}
	o.exited = make(chan struct{})
	go func() { _ = o.cmd.Wait(); close(o.exited) }()
	c := http.Client{Timeout: time.Second}
	deadline := o.started.Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-o.exited:
			msg := o.output()
			o.stop()
			return nil, fmt.Errorf("gpe-ebpf exited: %s", msg)
		default:
		}
		resp, err := c.Get(o.metricsURL())
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				o.ready = time.Since(o.started)
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	if o.ready == 0 {
		msg := o.output()
		o.stop()
		return nil, fmt.Errorf("gpe-ebpf /metrics not answering after 30s: %s", msg)
	}
	if m := tookRE.FindStringSubmatch(o.output()); m != nil {
		o.took, _ = time.ParseDuration(m[1])
	}
	return o, nil
}

func (o *observer) metricsURL() string { return fmt.Sprintf("http://127.0.0.1:%d/metrics", o.port) }

func (o *observer) stop() {
	if o == nil || o.cmd.Process == nil {
		return
	}
	_ = o.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-o.exited:
	case <-time.After(10 * time.Second):
		_ = o.cmd.Process.Kill()
		<-o.exited
	}
	o.out.Close()
	os.Remove(o.out.Name())
}

// cpuTicks is utime+stime of a process, in clock ticks.
func cpuTicks(pid int) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command may hold spaces; fields restart after the last ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, errors.New("short /proc/pid/stat")
	}
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return u + st, nil
}

// onCPU is the time the threads of the given processes have run, from the scheduler's
// /proc/<pid>/task/<tid>/schedstat (nanoseconds, not 10 ms ticks). Threads that exited
// meanwhile are not counted.
func onCPU(pids ...int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
		for _, t := range tasks {
			b, err := os.ReadFile(t)
			if err != nil {
				continue
			}
			if f := strings.Fields(string(b)); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				sum += time.Duration(n)
			}
		}
	}
	return sum
}

// rssBytes is VmRSS from /proc/<pid>/status.
func rssBytes(pid int) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// scrape fetches /metrics and returns its body.
func scrape(url string) (string, error) {
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return "", fmt.Errorf("scrape: %s", resp.Status)
	}
	return string(b), err
}

// scrapeGzip fetches url asking for gzip itself, so that Go's client leaves the body
// compressed, and reads it to the last byte; it returns the compressed size.
func scrapeGzip(url string) (int64, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Accept-Encoding", "gzip")
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
		return 0, fmt.Errorf("scrape: %s, encoding %q", resp.Status, resp.Header.Get("Content-Encoding"))
	}
	return n, err
}

// metricSum adds the values of every series of one metric name.
func metricSum(body, name string) float64 {
	var sum float64
	for _, line := range strings.Split(body, "\n") {
		if !strings.HasPrefix(line, name) {
			continue
		}
		rest := line[len(name):]
		if rest == "" || (rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// wrkResult is what wrk printed.
type wrkResult struct {
	Requests     uint64  `json:"requests"`
	Seconds      float64 `json:"seconds"`
	PerSec       float64 `json:"requests_per_second"`
	SocketErrors uint64  `json:"socket_errors"`
	Non2xx       uint64  `json:"non_2xx_3xx"`
	CPUSeconds   float64 `json:"cpu_seconds,omitempty"` // wrk's own user+system CPU
}

var (
	wrkReqRE  = regexp.MustCompile(`(\d+) requests in ([\d.]+)(ms|s|m|h)`)
	wrkSockRE = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNonRE  = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

func runWrk(ctx context.Context, url string, threads, conns int, d time.Duration, script string) (wrkResult, error) {
	args := []string{"-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-d", fmt.Sprintf("%ds", int(d.Seconds())), "--timeout", "10s"}
	if script != "" {
		args = append(args, "-s", script)
	}
	cmd := exec.CommandContext(ctx, "wrk", append(args, url)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return wrkResult{}, fmt.Errorf("wrk: %w: %s", err, out)
	}
	r, err := parseWrk(string(out))
	r.CPUSeconds = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	return r, err
}

func parseWrk(out string) (wrkResult, error) {
	var r wrkResult
	m := wrkReqRE.FindStringSubmatch(out)
	if m == nil {
		return r, fmt.Errorf("wrk output not understood: %s", out)
	}
	r.Requests, _ = strconv.ParseUint(m[1], 10, 64)
	r.Seconds, _ = strconv.ParseFloat(m[2], 64)
	if m[3] == "ms" {
		r.Seconds /= 1000
	}
	switch m[3] {
	case "m":
		r.Seconds *= 60
	case "h":
		r.Seconds *= 3600
	}
	if r.Seconds > 0 {
		r.PerSec = float64(r.Requests) / r.Seconds
	}
	if m := wrkSockRE.FindStringSubmatch(out); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.ParseUint(s, 10, 64)
			r.SocketErrors += n
		}
	}
	if m := wrkNonRE.FindStringSubmatch(out); m != nil {
		r.Non2xx, _ = strconv.ParseUint(m[1], 10, 64)
	}
	return r, nil
}

func execLookPath(name string) (string, error) { return exec.LookPath(name) }

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
