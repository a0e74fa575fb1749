package e2e

import (
	"bufio"
	"context"
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

	"golang.org/x/sys/unix"
)

// Issue 15 part 1: the listener gauges of real Gunicorn masters, read from sock_diag.

const (
	queueLength = "gunicorn_listen_queue_length"
	queueMax    = "gunicorn_listen_queue_max"
	listenDrops = "gunicorn_listen_drops_total"
)

// slowClient sends one request with its own connection, for requests that queue.
func slowClient(dial func(ctx context.Context, network, addr string) (net.Conn, error)) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, DialContext: dial}}
}

// burst sends n requests at once and returns a channel closed when all are answered, and
// the errors.
func burst(c *http.Client, n int, url string) (<-chan struct{}, *[]error) {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	start := make(chan struct{})
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := c.Get(url)
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					err = fmt.Errorf("GET %s: %s", url, resp.Status)
				}
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	close(start)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	return done, &errs
}

// peakWhile scrapes until done is closed and returns the highest value of name{labels} seen.
func (p *gpe) peakWhile(t *testing.T, done <-chan struct{}, name string, labels map[string]string) float64 {
	t.Helper()
	peak := -1.0
	poll(time.Minute, 10*time.Millisecond, func() bool {
		peak = max(peak, p.scrape(t).sum(name, labels))
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
	return peak
}

// startListening starts a 1-worker sync Gunicorn with args and gpe-ebpf on it, and waits for
// its listener's backlog to be reported as backlog. It returns the listener's labels.
func startListening(t *testing.T, backlog float64, args ...string) (*gunicorn, *gpe, map[string]string) {
	t.Helper()
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{Workers: 1, Args: args})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	lbl := map[string]string{"listener": g.Addr}
	p.waitMetric(t, queueMax, lbl, backlog)
	return g, p, lbl
}

// TestListenQueueTCP: 8 requests at once to one sync worker wait in the accept queue of a
// listener with --backlog 64.
func TestListenQueueTCP(t *testing.T) {
	g, p, lbl := startListening(t, 64, "--backlog", "64")

	done, errs := burst(slowClient(nil), 8, g.URL()+"/sleep/200")
	peak := p.peakWhile(t, done, queueLength, lbl)
	for _, err := range *errs {
		t.Error(err)
	}
	t.Logf("peak %s{listener=%q} = %v", queueLength, g.Addr, peak)
	if peak < 1 || peak > 8 {
		t.Errorf("peak queue length while 8 requests waited for one worker = %v, want 1..8", peak)
	}
	ms := p.waitMetric(t, queueLength, lbl, 0)
	if got := ms.sum(queueMax, lbl); got != 64 {
		t.Errorf("%s = %v, want 64", queueMax, got)
	}
	if s := ms.series(listenDrops, lbl); len(s) != 1 || value(s[0]) != 0 {
		t.Errorf("%s: %v, want one series at 0", listenDrops, s)
	}
	if n := len(ms.series(queueMax, nil)); n != 1 {
		t.Errorf("%d listener series, want 1 (the master listens on one socket)", n)
	}
}

// TestListenQueueUnix: the same over a Unix socket; Unix listeners have no drops series.
func TestListenQueueUnix(t *testing.T) {
	requireE2E(t)
	sock := filepath.Join(t.TempDir(), "gunicorn.sock")
	g := startGunicorn(t, gunicornOpts{Workers: 1, Bind: "unix:" + sock, Args: []string{"--backlog", "32"}})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	lbl := map[string]string{"listener": sock}
	p.waitMetric(t, queueMax, lbl, 32)

	c := slowClient(func(context.Context, string, string) (net.Conn, error) { return net.Dial("unix", sock) })
	done, errs := burst(c, 4, "http://gunicorn/sleep/300")
	peak := p.peakWhile(t, done, queueLength, lbl)
	for _, err := range *errs {
		t.Error(err)
	}
	t.Logf("peak %s{listener=%q} = %v", queueLength, sock, peak)
	if peak < 1 || peak > 4 {
		t.Errorf("peak queue length while 4 requests waited for one worker = %v, want 1..4", peak)
	}
	ms := p.waitMetric(t, queueLength, lbl, 0)
	if s := ms.series(listenDrops, nil); len(s) != 0 {
		t.Errorf("a Unix listener has a drops series: %v", s)
	}
}

// netstatListenDrops reads TcpExt ListenDrops of the network namespace of pid.
func netstatListenDrops(t *testing.T, pid int) float64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/netstat", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) == 0 || fs[0] != "TcpExt:" {
			continue
		}
		if names == nil {
			names = fs
			continue
		}
		for i, n := range names {
			if n == "ListenDrops" && i < len(fs) {
				v, err := strconv.ParseFloat(fs[i], 64)
				if err != nil {
					t.Fatalf("TcpExt ListenDrops %q: %v", fs[i], err)
				}
				return v
			}
		}
	}
	t.Fatalf("no TcpExt ListenDrops in /proc/%d/net/netstat", pid)
	return 0
}

// busyWorker starts a request of ms milliseconds and waits until the worker serves it.
func busyWorker(t *testing.T, p *gpe, c *http.Client, url string) <-chan struct{} {
	t.Helper()
	done, errs := burst(c, 1, url)
	t.Cleanup(func() {
		<-done
		for _, err := range *errs {
			t.Errorf("slow request: %v", err)
		}
	})
	p.waitMetric(t, "gunicorn_worker_requests_in_flight", nil, 1)
	return done
}

// TestListenDrops: with --backlog 1 and the one worker busy, a burst of 50 connects
// overflows the accept queue; the listener's drops rise with the kernel's ListenDrops: by at
// least as much, and at most twice as much, since a handshake's last ACK that finds the queue
// full is counted once in ListenDrops and twice in the socket's sk_drops (tcp_listendrop in
// the overflow, then sk_drops_add when tcp_v4_rcv discards the packet).
func TestListenDrops(t *testing.T) {
	g, p, lbl := startListening(t, 1, "--backlog", "1")
	slow := busyWorker(t, p, slowClient(nil), g.URL()+"/sleep/2000")

	kernel0 := netstatListenDrops(t, g.PID)
	ours0 := p.scrape(t).sum(listenDrops, lbl)
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	parallel(50, 50, func(int) {
		if c, err := net.DialTimeout("tcp", g.Addr, 300*time.Millisecond); err == nil {
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	peak := p.scrape(t).sum(queueLength, lbl)
	for _, c := range conns {
		c.Close()
	}
	<-slow
	t.Logf("%d of 50 connects completed; queue length after the burst %v", len(conns), peak)

	// Drops can still come after the burst (SYN-ACK retransmits to closed clients): compare
	// once both counters are still between two reads of the kernel's.
	var kernel, ours float64
	poll(15*time.Second, 200*time.Millisecond, func() bool {
		k1 := netstatListenDrops(t, g.PID)
		ours = p.scrape(t).sum(listenDrops, lbl) - ours0
		kernel = netstatListenDrops(t, g.PID) - kernel0
		return k1-kernel0 == kernel && ours >= kernel
	})
	t.Logf("%s rose by %v; TcpExt ListenDrops rose by %v", listenDrops, ours, kernel)
	if ours < 1 {
		t.Errorf("%s rose by %v over a burst of 50 connects into a full queue, want >= 1", listenDrops, ours)
	}
	if ours < kernel || ours > 2*kernel {
		t.Errorf("%s rose by %v, TcpExt ListenDrops by %v: want from once to twice as much", listenDrops, ours, kernel)
	}
}

// inNetns runs f on a thread inside the network namespace of pid: the sockets f creates
// belong to that namespace. The thread is thrown away if it cannot get back.
func inNetns(t *testing.T, pid int, f func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns: %w", err)
			return
		}
		f()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns back: %w", err) // still locked: the thread exits with us
			return
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}

func netnsOf(t *testing.T, pid int) string {
	t.Helper()
	s, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startGunicornNetns starts a 1-worker Gunicorn in a network namespace of its own (through a
// gunicorn on PATH that execs the real one under unshare --net: the same PID throughout),
// listening on tcp (inside the namespace) and on a Unix socket, which the harness reaches from
// the host to see it answer.
func startGunicornNetns(t *testing.T, tcp string, args ...string) (*gunicorn, string) {
	t.Helper()
	gunicornPath, err := exec.LookPath("gunicorn")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	wrapper := fmt.Sprintf("#!/bin/sh\nexec unshare --net -- /bin/sh -c 'ip link set lo up && exec %s \"$@\"' gunicorn \"$@\"\n", gunicornPath)
	if err := os.WriteFile(filepath.Join(bin, "gunicorn"), []byte(wrapper), 0o755); err != nil {
		t.Fatal(err)
	}
	path := os.Getenv("PATH")
	os.Setenv("PATH", bin+string(os.PathListSeparator)+path)
	defer os.Setenv("PATH", path)
	sock := filepath.Join(t.TempDir(), "netns.sock")
	g := startGunicorn(t, gunicornOpts{Workers: 1, Bind: "unix:" + sock, Args: append([]string{"-b", tcp}, args...)})
	if a, b := netnsOf(t, os.Getpid()), netnsOf(t, g.PID); a == b {
		t.Fatalf("Gunicorn in our network namespace %s: the test would prove nothing", a)
	}
	return g, sock
}

// TestListenNetns: two masters on the same address 127.0.0.1:P, one in a network namespace
// of its own (Gunicorn in a container, gpe-ebpf on the host), each seen with its own backlog
// and its own queue under --discover.
func TestListenNetns(t *testing.T) {
	requireE2E(t)
	host := startGunicorn(t, gunicornOpts{Workers: 1, Args: []string{"--backlog", "64"}})
	inner, sock := startGunicornNetns(t, host.Addr, "--backlog", "16")

	p := startGPE(t, "--discover")
	hostL := map[string]string{"master_pid": strconv.Itoa(host.PID), "listener": host.Addr}
	innerL := map[string]string{"master_pid": strconv.Itoa(inner.PID), "listener": host.Addr}
	innerU := map[string]string{"master_pid": strconv.Itoa(inner.PID), "listener": sock}
	p.waitMetric(t, queueMax, hostL, 64)
	p.waitMetric(t, queueMax, innerL, 16)
	p.waitMetric(t, queueMax, innerU, 16)

	// The inner worker busy on a request over the Unix socket; 3 TCP clients connected inside
	// the namespace wait in the inner listener's queue, none in the host's.
	unixClient := slowClient(func(context.Context, string, string) (net.Conn, error) { return net.Dial("unix", sock) })
	busyWorker(t, p, unixClient, "http://gunicorn/sleep/2000")
	var conns []net.Conn
	inNetns(t, inner.PID, func() {
		for i := 0; i < 3; i++ {
			if c, err := net.DialTimeout("tcp", host.Addr, 2*time.Second); err == nil {
				conns = append(conns, c)
			}
		}
	})
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if len(conns) != 3 {
		t.Fatalf("%d of 3 connects inside the namespace completed", len(conns))
	}
	ms := p.waitMetric(t, queueLength, innerL, 3)
	if got := ms.sum(queueLength, hostL); got != 0 {
		t.Errorf("host master's %s on the same address = %v, want 0", queueLength, got)
	}
	if got := ms.sum(queueMax, hostL); got != 64 {
		t.Errorf("host master's %s = %v, want 64", queueMax, got)
	}
	if n := len(ms.series(queueMax, map[string]string{"master_pid": strconv.Itoa(host.PID)})); n != 1 {
		t.Errorf("host master has %d listener series, want 1", n)
	}
}

// TestListenClosed: a master that has closed its listening socket (SIGTERM: Gunicorn closes
// its listeners, then waits for the busy worker, which still holds the socket) loses its
// listener series, logged once; gpe-ebpf keeps serving the rest.
func TestListenClosed(t *testing.T) {
	g, p, _ := startListening(t, 2048) // Gunicorn's default backlog
	busyWorker(t, p, slowClient(nil), g.URL()+"/sleep/4000")

	if err := syscall.Kill(g.PID, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	ms := p.waitScrape(t, 3*time.Second, "the closed listener's series to go", func(ms metrics) bool {
		return len(ms.series(queueMax, nil))+len(ms.series(queueLength, nil))+len(ms.series(listenDrops, nil)) == 0
	})
	for i := 0; i < 3; i++ {
		ms = p.scrape(t)
	}
	if syscall.Kill(g.PID, 0) != nil {
		t.Fatal("the master exited before the check: it proves nothing")
	}
	if got := ms.sum("gunicorn_master_workers", nil); got != 1 {
		t.Errorf("gunicorn_master_workers = %v after the listener closed, want 1 (gpe-ebpf keeps serving)", got)
	}
	if len(ms.series(queueMax, nil)) != 0 {
		t.Errorf("listener series after the master closed its socket: %v", ms.series(queueMax, nil))
	}
	pid := "master_pid=" + strconv.Itoa(g.PID)
	n := 0
	for _, line := range strings.Split(p.out.String(), "\n") {
		if strings.Contains(line, "not resolved") && strings.Contains(line, pid) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("unresolved listener logged %d times, want once:\n%s", n, p.out.String())
	}
}

// TestListenNoListener: a process with no listening socket at all (attached with --force)
// has no listener series, and gpe-ebpf serves.
func TestListenNoListener(t *testing.T) {
	requireE2E(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	p := startGPE(t, "--force", "--pid", strconv.Itoa(cmd.Process.Pid))
	var ms metrics
	for i := 0; i < 3; i++ {
		ms = p.scrape(t)
	}
	if len(ms.series("gunicorn_master_info", nil)) != 1 {
		t.Fatalf("the process is not attached: %v", ms.series("gunicorn_master_info", nil))
	}
	for _, name := range []string{queueLength, queueMax, listenDrops} {
		if s := ms.series(name, nil); len(s) != 0 {
			t.Errorf("%s for a process with no listener: %v", name, s)
		}
	}
	if n := strings.Count(p.out.String(), "not resolved"); n != 1 {
		t.Errorf("unresolved listener logged %d times, want once", n)
	}
}

// TestListenNetnsNoCapability: without CAP_SYS_ADMIN gpe-ebpf cannot enter another network
// namespace: that master's listener series are left out and the missing capability is said
// once, while a master in gpe-ebpf's own namespace is still read (no privilege needed).
func TestListenNetnsNoCapability(t *testing.T) {
	requireE2E(t)
	host := startGunicorn(t, gunicornOpts{Workers: 1, Args: []string{"--backlog", "64"}})
	inner, _ := startGunicornNetns(t, host.Addr, "--backlog", "16")

	// gpe-ebpf run through setpriv, its bounding set without CAP_SYS_ADMIN.
	wrapper := filepath.Join(t.TempDir(), "gpe-ebpf")
	script := fmt.Sprintf("#!/bin/sh\nexec setpriv --bounding-set=-sys_admin -- %s \"$@\"\n", binPath)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	p := func() *gpe {
		bin := binPath
		binPath = wrapper
		defer func() { binPath = bin }()
		return startGPE(t, "--discover")
	}()

	hostL := map[string]string{"master_pid": strconv.Itoa(host.PID), "listener": host.Addr}
	p.waitMetric(t, queueMax, hostL, 64)
	ms := p.waitScrape(t, 10*time.Second, "the namespaced master to be attached", func(ms metrics) bool {
		return len(ms.series("gunicorn_master_info", map[string]string{"master_pid": strconv.Itoa(inner.PID)})) == 1
	})
	for i := 0; i < 3; i++ {
		ms = p.scrape(t)
	}
	if s := ms.series(queueMax, map[string]string{"master_pid": strconv.Itoa(inner.PID)}); len(s) != 0 {
		t.Errorf("listener series of a master gpe-ebpf could not enter the namespace of: %v", s)
	}
	if n := strings.Count(p.out.String(), "needs CAP_SYS_ADMIN"); n != 1 {
		t.Errorf("missing CAP_SYS_ADMIN said %d times, want once:\n%s", n, p.out.String())
	}
}
