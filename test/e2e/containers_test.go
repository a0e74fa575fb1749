package e2e

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
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

// Issue 17, part 3: Gunicorn in a container (its own PID, mount and network namespaces, and
// a cgroup named as Kubernetes with containerd names it), gpe-ebpf on the host with
// --discover. A host Gunicorn listens on the same port number in the host's namespace.

// netns is a network namespace made for one test, with its loopback up.
type netns struct{ name, path string }

func newNetns(t *testing.T) *netns {
	t.Helper()
	n := &netns{name: fmt.Sprintf("gpe-e2e-%d-%s", os.Getpid(), randHex(3))}
	n.path = "/run/netns/" + n.name
	if out, err := exec.Command("ip", "netns", "add", n.name).CombinedOutput(); err != nil {
		need(t, "container tests need ip netns (iproute2) and root", fmt.Errorf("%v: %s", err, out))
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", n.name).Run() })
	if out, err := exec.Command("ip", "-n", n.name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", n.name, err, out)
	}
	return n
}

// dial connects to addr from inside the namespace: the socket is made on an OS thread that
// entered the namespace, and stays in it once the thread is back.
func (n *netns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked if the way back fails: the thread then dies
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer self.Close()
		ns, err := os.Open(n.path)
		if err != nil {
			ch <- result{err: err}
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// client is an HTTP client whose connections are made inside the namespace.
func (n *netns) client() *http.Client {
	return &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: n.dial, DisableKeepAlives: true}}
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// cgroupRoot is a writable cgroup hierarchy of the host: cgroup v2 where it is mounted, else
// the v1 pids controller.
func cgroupRoot(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var v1 string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 {
			continue
		}
		if fs[2] == "cgroup2" {
			return fs[1]
		}
		if fs[2] == "cgroup" && strings.Contains(","+fs[3]+",", ",pids,") {
			v1 = fs[1]
		}
	}
	if v1 == "" {
		t.Fatal("no cgroup v2 mount and no v1 pids hierarchy")
	}
	return v1
}

// container is a Gunicorn master started in new PID and mount namespaces, inside netns n, in
// a cgroup path of a Kubernetes pod's containerd container.
type container struct {
	cmd        *exec.Cmd // unshare … ip netns exec … gunicorn
	MasterPID  int       // the master's host PID
	Port       int
	ID, PodUID string
	log        *safeBuffer
}

func startContainer(t *testing.T, n *netns, port int, env []string, app string) *container {
	t.Helper()
	c := &container{Port: port, ID: randHex(32), PodUID: fmt.Sprintf("%s-%s-%s-%s-%s", randHex(4), randHex(2), randHex(2), randHex(2), randHex(6)), log: new(safeBuffer)}
	pod := "kubepods-besteffort-pod" + strings.ReplaceAll(c.PodUID, "-", "_") + ".slice"
	rel := filepath.Join("kubepods.slice", "kubepods-besteffort.slice", pod, "cri-containerd-"+c.ID+".scope")
	root := cgroupRoot(t)
	cg := filepath.Join(root, rel)
	if err := os.MkdirAll(cg, 0o755); err != nil {
		t.Fatalf("make cgroup %s: %v", cg, err)
	}
	t.Cleanup(func() {
		// Leaf first; each level is removed once empty.
		for d := cg; d != root && strings.HasPrefix(d, root); d = filepath.Dir(d) {
			if err := os.Remove(d); err != nil {
				break
			}
		}
	})
	// The shell joins the cgroup (as PID 1 of its namespace: cgroup.procs takes PIDs as the
	// writer sees them) before `ip netns exec` remounts /sys for the network namespace, then
	// becomes the master, so every worker is forked inside both.
	gargs := fmt.Sprintf("exec ip netns exec %s gunicorn -w 2 -k sync -b 127.0.0.1:%d --chdir %s %s", n.name, port, appDir(), app)
	c.cmd = exec.Command("unshare", "--pid", "--fork", "--mount-proc",
		"sh", "-c", fmt.Sprintf("echo $$ > %s/cgroup.procs && %s", cg, gargs))
	c.cmd.Env = append(os.Environ(), env...)
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := c.cmd.Start(); err != nil {
		t.Fatalf("start the container: %v", err)
	}
	t.Cleanup(func() { c.stop() })
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the container's output:\n%s", c.log.String())
		}
	})
	waitFor(t, 30*time.Second, "the container's Gunicorn master and its 2 workers", func() bool {
		kids := children(c.cmd.Process.Pid)
		if len(kids) != 1 {
			return false
		}
		c.MasterPID = kids[0]
		return len(children(c.MasterPID)) == 2
	})
	waitFor(t, 20*time.Second, "the container's Gunicorn to answer", func() bool {
		_, err := c.get(n, "/")
		return err == nil
	})
	return c
}

func (c *container) get(n *netns, path string) (int, error) {
	resp, err := n.client().Get(fmt.Sprintf("http://127.0.0.1:%d%s", c.Port, path))
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

func (c *container) stop() {
	if c.cmd.ProcessState != nil {
		return
	}
	if c.MasterPID != 0 {
		syscall.Kill(c.MasterPID, syscall.SIGTERM)
	}
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		if c.MasterPID != 0 {
			syscall.Kill(c.MasterPID, syscall.SIGKILL) // PID 1 of its namespace: the rest follows
		}
		<-done
	}
}

// nspid is the PID a process sees itself, from /proc/PID/status.
func nspid(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, "NSpid:"); ok {
			f := strings.Fields(rest)
			n, _ := strconv.Atoi(f[len(f)-1])
			return n
		}
	}
	t.Fatalf("no NSpid for pid %d", pid)
	return 0
}

// TestContainerAndHost: the container's master is found by --discover and labelled with its
// container and pod, its workers with the PIDs they see; requests to the container's and the
// host's Gunicorn on the same port number are counted for each master apart.
func TestContainerAndHost(t *testing.T) {
	requireE2E(t)
	n := newNetns(t)
	host := startGunicorn(t, gunicornOpts{})
	ct := startContainer(t, n, host.Port, nil, "app:app")
	p := startGPE(t, "--discover")

	const nHost, nCt = 20, 30
	parallel(nHost, 4, func(int) { get(t, host.URL()+"/ok") })
	parallel(nCt, 4, func(int) {
		if s, err := ct.get(n, "/ok"); err != nil || s != 200 {
			t.Errorf("container /ok: %d %v", s, err)
		}
	})
	hostM := map[string]string{"master_pid": strconv.Itoa(host.PID)}
	ctM := map[string]string{"master_pid": strconv.Itoa(ct.MasterPID)}
	p.waitMetric(t, "gunicorn_worker_requests_total", ctM, nCt)
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", hostM, nHost)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"master_pid": strconv.Itoa(ct.MasterPID), "endpoint": "/ok"}); got != nCt {
		t.Errorf("container master: http_requests_total{/ok} = %v, want %d", got, nCt)
	}

	info := ms.series("gunicorn_master_info", ctM)
	if len(info) != 1 {
		t.Fatalf("gunicorn_master_info for the container's master %d: %d series", ct.MasterPID, len(info))
	}
	if id, pod := label(info[0], "container_id"), label(info[0], "pod_uid"); id != ct.ID || pod != ct.PodUID {
		t.Errorf("container master: container_id %q pod_uid %q, want %q %q", id, pod, ct.ID, ct.PodUID)
	}
	for _, m := range ms.series("gunicorn_master_info", hostM) {
		if label(m, "container_id") != "" || label(m, "pod_uid") != "" {
			t.Errorf("host master labelled as in a container: %v", m.GetLabel())
		}
	}
	workers := children(ct.MasterPID)
	for _, w := range workers {
		series := ms.series("gunicorn_worker_info", map[string]string{"pid": strconv.Itoa(w)})
		if len(series) != 1 {
			t.Errorf("gunicorn_worker_info{pid=%d}: %d series", w, len(series))
			continue
		}
		if got, want := label(series[0], "container_pid"), strconv.Itoa(nspid(t, w)); got != want || got == strconv.Itoa(w) {
			t.Errorf("worker %d: container_pid %q, want %s (the PID it sees, not the host's)", w, got, want)
		}
	}
	for _, w := range host.Workers() {
		for _, m := range ms.series("gunicorn_worker_info", map[string]string{"pid": strconv.Itoa(w)}) {
			if label(m, "container_pid") != strconv.Itoa(w) {
				t.Errorf("host worker %d: container_pid %q, want its own PID", w, label(m, "container_pid"))
			}
		}
	}
}

// TestContainerMultiproc: the app in the container names its multiprocess files by the PIDs
// it sees; gpe-ebpf on the host maps them to the workers it observes, so the livesum gauge
// drops a worker killed with -9 once its exit is seen, as on the host.
func TestContainerMultiproc(t *testing.T) {
	requireE2E(t)
	n := newNetns(t)
	dir := t.TempDir()
	ct := startContainer(t, n, 8000, []string{"PROMETHEUS_MULTIPROC_DIR=" + dir}, "custom_metrics:app")
	p := startGPE(t, "--pid", strconv.Itoa(ct.MasterPID), "--multiproc-dir", dir)

	const hold = 6 * time.Second
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ct.get(n, fmt.Sprintf("/hold/%g", hold.Seconds()))
		}()
	}
	t.Cleanup(wg.Wait)
	waitFor(t, 5*time.Second, "app_inflight to be 2 (both workers holding)", func() bool {
		return inflight(t, p.scrape(t)) == 2
	})
	workers := children(ct.MasterPID)
	if len(workers) != 2 {
		t.Fatalf("container workers: %v", workers)
	}
	victim := workers[0]
	inner := nspid(t, victim)
	if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("gauge_livesum_%d.db", inner))); err != nil {
		t.Fatalf("the worker's gauge file is not named by the PID it sees (%d): %v", inner, err)
	}
	start := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "app_inflight to drop to 1 once the killed worker is seen exited", func() bool {
		return inflight(t, p.scrape(t)) == 1
	})
	if time.Since(start) >= hold-time.Second {
		t.Fatalf("the drop took %v, too close to the end of the surviving hold", time.Since(start))
	}
}
