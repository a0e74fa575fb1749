package e2e

// Issue 23 point 5: what Gunicorn 25+ runs besides its HTTP workers, with sid's Gunicorn 26
// (test/roots/sid.root, run as versions_test.go runs it). The control socket (25.1+, on by
// default) is a Unix socket the master listens on and serves itself: it is no HTTP listener and
// its connections are no requests. The dirty arbiter (25+, --dirty-app and --dirty-workers) is
// a child of the master that forks the dirty workers: no HTTP worker, exported as
// gunicorn_dirty_*.

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// gunicorn26Root returns the sid root, checked to hold Gunicorn 26.
func gunicorn26Root(t *testing.T) string {
	t.Helper()
	root := buildRoot(t, "sid", "gunicorn", "python3")
	if got := rootVersion(t, root, "gunicorn"); !strings.HasPrefix(got, "26.") {
		t.Fatalf("the sid root has Gunicorn %q, not 26: the test would not prove what it says", got)
	}
	return root
}

// getN sends n GET url and fails unless each answers 200.
func getN(t *testing.T, url string, n int) {
	t.Helper()
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range n {
		if st, body, err := fetch(c, url, "", ""); err != nil || st != 200 {
			t.Fatalf("GET %s #%d: %d %v %q", url, i, st, err, body)
		}
	}
}

// expectNoFalseRequests checks that gpe-ebpf counted exactly n answered requests, no failure
// and nothing in flight.
func expectNoFalseRequests(t *testing.T, ms metrics, n int) {
	t.Helper()
	for name, want := range map[string]float64{
		"gunicorn_worker_requests_total": float64(n), "gunicorn_http_requests_total": float64(n),
		"gunicorn_worker_failed_requests_total": 0, "gunicorn_worker_error_handling_total": 0,
		"gunicorn_worker_requests_in_flight": 0, "gpe_ebpf_events_lost_total": 0,
	} {
		if got := ms.sum(name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if t.Failed() {
		for _, m := range ms.series("gunicorn_worker_error_handling_total", nil) {
			t.Logf("gunicorn_worker_error_handling_total%v = %v", m.GetLabel(), value(m))
		}
	}
}

// listenerNames lists the listener label values of gunicorn_listen_queue_max.
func listenerNames(ms metrics) []string {
	var out []string
	for _, m := range ms.series("gunicorn_listen_queue_max", nil) {
		for _, l := range m.GetLabel() {
			if l.GetName() == "listener" {
				out = append(out, l.GetValue())
			}
		}
	}
	slices.Sort(out)
	return out
}

// ctlCommand sends one command to Gunicorn's control socket as gunicornc does (a 4-byte
// big-endian length, then JSON) and returns the reply.
func ctlCommand(t *testing.T, path, command string) map[string]any {
	t.Helper()
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		t.Fatalf("connect to the control socket: %v", err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg, _ := json.Marshal(map[string]any{"id": 1, "command": command})
	if _, err := c.Write(binary.BigEndian.AppendUint32(nil, uint32(len(msg)))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var n [4]byte
	if _, err := io.ReadFull(c, n[:]); err != nil {
		t.Fatalf("control socket reply: %v", err)
	}
	body := make([]byte, binary.BigEndian.Uint32(n[:]))
	if _, err := io.ReadFull(c, body); err != nil {
		t.Fatalf("control socket reply: %v", err)
	}
	var reply map[string]any
	if err := json.Unmarshal(body, &reply); err != nil {
		t.Fatalf("control socket reply %q: %v", body, err)
	}
	return reply
}

// TestGunicorn26ControlSocket: Gunicorn 26 listens on its control socket beside its HTTP port.
// gpe-ebpf exports the HTTP port as a listener and not the control socket, and commands sent to
// the control socket (gunicornc from the root, and a raw connection from the host) book no
// request and no failure.
func TestGunicorn26ControlSocket(t *testing.T) {
	requireE2E(t)
	root := gunicorn26Root(t)
	host, inside := rootTempDir(t, root)
	ctl, hostCtl := inside+"/gunicorn.ctl", filepath.Join(host, "gunicorn.ctl")
	g := startGunicorn(t, gunicornOpts{Root: root, Args: []string{"--control-socket", ctl}})
	waitFor(t, 20*time.Second, "the control socket", func() bool {
		st, err := os.Stat(hostCtl)
		return err == nil && st.Mode()&os.ModeSocket != 0
	})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))

	const n = 10
	getN(t, g.URL()+"/ok", n)
	p.settle(t, "gunicorn_worker_requests_total", nil, n)
	ms := p.quiet(t)
	if got, want := listenerNames(ms), []string{g.Addr}; !slices.Equal(got, want) {
		t.Errorf("listeners %v, want %v only (not the control socket %s)", got, want, ctl)
	}

	// gunicornc, Gunicorn's own client, from the root; then the same protocol from the host.
	out, err := exec.Command("bash", filepath.Join(repoDir(), "test/roots/run.sh"), root, "gunicornc", "-s", ctl, "-j", "-c", "show workers").CombinedOutput()
	if err != nil {
		t.Fatalf("gunicornc: %v\n%s", err, out)
	}
	t.Logf("gunicornc -c 'show workers': %s", strings.TrimSpace(string(out)))
	for _, pid := range g.Workers() {
		if !strings.Contains(string(out), strconv.Itoa(pid)) {
			t.Errorf("gunicornc's workers do not name worker %d: the control socket was not answered", pid)
		}
	}
	for _, cmd := range []string{"show workers", "show stats", "help", "no such command"} {
		reply := ctlCommand(t, hostCtl, cmd)
		if _, ok := reply["status"]; !ok {
			t.Errorf("control socket reply to %q has no status: %v", cmd, reply)
		}
	}
	ms = p.quiet(t)
	expectNoFalseRequests(t, ms, n)
	if got, want := listenerNames(ms), []string{g.Addr}; !slices.Equal(got, want) {
		t.Errorf("listeners after the commands %v, want %v", got, want)
	}
}

// dirtyTree waits for Gunicorn's dirty arbiter to have its dirty workers and returns it: the
// child of the master that has children.
func dirtyTree(t *testing.T, g *gunicorn, workers int) (arbiter int, dirty []int) {
	t.Helper()
	waitFor(t, 30*time.Second, "the dirty arbiter and its workers", func() bool {
		arbiter, dirty = dirtyTreeNow(g)
		return arbiter != 0 && len(dirty) == workers
	})
	return arbiter, dirty
}

// workerInfoPIDs lists the pid label values of gunicorn_worker_info of running workers.
func workerInfoPIDs(ms metrics) []int {
	running := map[string]bool{}
	for _, m := range ms.series("gunicorn_worker_state", map[string]string{"state": "running"}) {
		for _, l := range m.GetLabel() {
			if l.GetName() == "worker_id" {
				running[l.GetValue()] = true
			}
		}
	}
	var out []int
	for _, m := range ms.series("gunicorn_worker_info", nil) {
		var id, pid string
		for _, l := range m.GetLabel() {
			switch l.GetName() {
			case "worker_id":
				id = l.GetValue()
			case "pid":
				pid = l.GetValue()
			}
		}
		if n, err := strconv.Atoi(pid); err == nil && running[id] {
			out = append(out, n)
		}
	}
	slices.Sort(out)
	return out
}

// TestGunicorn26DirtyArbiter: Gunicorn 26 with two HTTP workers and a dirty arbiter of two dirty
// workers; each request sends a job to the dirty workers. gpe-ebpf, attached after they all
// started, counts the two HTTP workers only, exports the arbiter and its workers as
// gunicorn_dirty_*, and counts the requests exactly with no false one from the dirty socket's
// traffic. The arbiter killed, the master forks a new one: gpe-ebpf sees its fork as a worker's
// and moves it to the dirty processes; no worker exit and no restart is counted.
func TestGunicorn26DirtyArbiter(t *testing.T) {
	requireE2E(t)
	root := gunicorn26Root(t)
	const httpWorkers, dirtyWorkers = 2, 2
	g := startGunicorn(t, gunicornOpts{Root: root, App: "dirty:app", Workers: httpWorkers, Others: 1,
		Args: []string{"--dirty-app", "dirty:Jobs", "--dirty-workers", strconv.Itoa(dirtyWorkers)}})
	arbiter, dirty := dirtyTree(t, g, dirtyWorkers)
	logProc := func(what string, pid int) {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		t.Logf("%s %d: %q", what, pid, strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " "))
	}
	logProc("master", g.PID)
	logProc("dirty arbiter", arbiter)
	for _, d := range dirty {
		logProc("dirty worker", d)
	}
	var httpPIDs []int
	for _, c := range g.Workers() {
		if c != arbiter {
			httpPIDs = append(httpPIDs, c)
		}
	}
	slices.Sort(httpPIDs)
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--sample-interval", "1s")

	check := func(when string, arbiter int, httpPIDs []int, requests int) {
		t.Helper()
		ms := p.waitScrape(t, 20*time.Second, "the dirty workers sampled "+when, func(ms metrics) bool {
			return ms.sum("gunicorn_dirty_workers", nil) == dirtyWorkers && ms.sum("gunicorn_master_workers", nil) == httpWorkers
		})
		ms = p.quiet(t)
		for name, want := range map[string]float64{
			"gunicorn_master_workers": httpWorkers, "gunicorn_dirty_arbiters": 1, "gunicorn_dirty_workers": dirtyWorkers,
			"gunicorn_master_worker_restarts_total": 0, "gunicorn_worker_exits_total": 0,
		} {
			if got := ms.sum(name, nil); got != want {
				t.Errorf("%s: %s = %v, want %v", when, name, got, want)
			}
		}
		if got := workerInfoPIDs(ms); !slices.Equal(got, httpPIDs) {
			t.Errorf("%s: running workers' pids %v, want the HTTP workers %v (the dirty arbiter is %d)", when, got, httpPIDs, arbiter)
		}
		// Each dirty worker holds 16 MB it touched; the arbiter is a Python process too.
		if got := ms.sum("gunicorn_dirty_memory_bytes", map[string]string{"process": "worker"}); got < dirtyWorkers*16<<20 {
			t.Errorf("%s: dirty workers' memory %v, want at least %d", when, got, dirtyWorkers*16<<20)
		}
		if got := ms.sum("gunicorn_dirty_memory_bytes", map[string]string{"process": "arbiter"}); got <= 0 {
			t.Errorf("%s: dirty arbiter's memory %v, want > 0", when, got)
		}
		if len(ms.series("gunicorn_dirty_cpu_percent", nil)) != 2 {
			t.Errorf("%s: gunicorn_dirty_cpu_percent series %d, want 2 (arbiter, worker)", when, len(ms.series("gunicorn_dirty_cpu_percent", nil)))
		}
		expectNoFalseRequests(t, ms, requests)
	}

	const n = 20
	getN(t, g.URL()+"/job", n) // each one a job for the dirty workers
	p.settle(t, "gunicorn_worker_requests_total", nil, n)
	check("attached to a running dirty arbiter", arbiter, httpPIDs, n)

	// The master respawns a killed dirty arbiter: a fork gpe-ebpf first takes for a worker's.
	if err := syscall.Kill(arbiter, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a new dirty arbiter", func() bool {
		a, _ := dirtyTreeNow(g)
		return a != 0 && a != arbiter
	})
	arbiter2, dirty2 := dirtyTree(t, g, dirtyWorkers)
	logProc("respawned dirty arbiter", arbiter2)
	// The new dirty workers are up (listening on their sockets) before they are counted.
	waitFor(t, 30*time.Second, "the new dirty workers to listen", func() bool {
		for _, d := range dirty2 {
			if !listensOn(d, "worker-") {
				return false
			}
		}
		return true
	})
	// No job after the respawn: with 26.2, an HTTP worker's first job then fails on its
	// connection to the old arbiter (a 500) and its next one hung until the dirty timeout (30 s)
	// in this test; what is proven here is how the new arbiter is seen, with plain requests.
	getN(t, g.URL()+"/plain", n)
	p.settle(t, "gunicorn_worker_requests_total", nil, 2*n)
	check("after the dirty arbiter's respawn", arbiter2, httpPIDs, 2*n)
}

// listensOn says whether process pid holds a Unix socket whose file name starts with prefix.
func listensOn(pid int, prefix string) bool {
	socks, _, err := proc.Host.SocketInodes(uint32(pid))
	if err != nil {
		return false
	}
	paths, err := proc.Host.UnixPaths(uint32(pid))
	if err != nil {
		return false
	}
	for ino := range socks {
		if strings.HasPrefix(filepath.Base(paths[ino]), prefix) {
			return true
		}
	}
	return false
}

// dirtyTreeNow is the child of the master that has children now, and its children.
func dirtyTreeNow(g *gunicorn) (int, []int) {
	for _, c := range g.Workers() {
		if k := children(c); len(k) > 0 {
			return c, k
		}
	}
	return 0, nil
}
