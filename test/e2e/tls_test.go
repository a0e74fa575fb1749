package e2e

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// Issue 18: Gunicorn serving HTTPS itself (--certfile/--keyfile, a self-signed certificate made
// by the test), measured through uprobes on the libssl its workers have mapped, in both hook
// modes (GPE_HOOKS).

// tlsGunicorn is a Gunicorn serving HTTPS, with a client that trusts its certificate.
type tlsGunicorn struct {
	*gunicorn
	Base   string // https://127.0.0.1:port
	Client *http.Client
	Cert   string
	Key    string
}

// startTLSGunicorn starts Gunicorn with o and a fresh self-signed certificate.
func startTLSGunicorn(t *testing.T, o gunicornOpts) *tlsGunicorn {
	t.Helper()
	cert, key, pool := selfSigned(t)
	if o.Root != "" { // Gunicorn opens them inside the root
		host, inside := rootTempDir(t, o.Root)
		copyFiles(t, host, cert, key)
		cert, key = filepath.Join(inside, filepath.Base(cert)), filepath.Join(inside, filepath.Base(key))
	}
	o.Args = append(append([]string{}, o.Args...), "--certfile", cert, "--keyfile", key)
	g := startGunicorn(t, o)
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	return &tlsGunicorn{gunicorn: g, Base: "https://" + g.Addr, Client: c, Cert: cert, Key: key}
}

// get sends one HTTPS request on a fresh connection and returns the status.
func (g *tlsGunicorn) get(t *testing.T, path string) int {
	t.Helper()
	st, _, err := fetch(g.Client, g.Base+path, "", "")
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return st
}

var attachedRE = regexp.MustCompile(`msg="tls: uprobes attached" worker_pid=(\d+) lib=(\S+) probes=(\d+) took=(\S+)(?: since_fork=(\S+))?`)

// tlsAttach is one "tls: uprobes attached" line of gpe-ebpf's log.
type tlsAttach struct {
	lib             string
	probes          int
	took, sinceFork time.Duration // sinceFork 0 for a worker running at attach
}

func (p *gpe) tlsAttached() map[int]tlsAttach {
	out := map[int]tlsAttach{}
	for _, m := range attachedRE.FindAllStringSubmatch(p.out.String(), -1) {
		pid, _ := strconv.Atoi(m[1])
		n, _ := strconv.Atoi(m[3])
		took, _ := time.ParseDuration(m[4])
		since, _ := time.ParseDuration(m[5])
		out[pid] = tlsAttach{lib: m[2], probes: n, took: took, sinceFork: since}
	}
	return out
}

// waitTLSAttached waits until gpe-ebpf says it attached the TLS uprobes to every pid, and
// returns what it said.
func (p *gpe) waitTLSAttached(t *testing.T, pids []int) map[int]tlsAttach {
	t.Helper()
	var got map[int]tlsAttach
	waitFor(t, 15*time.Second, fmt.Sprintf("the TLS uprobes on workers %v", pids), func() bool {
		got = p.tlsAttached()
		for _, pid := range pids {
			if a, ok := got[pid]; !ok || a.probes == 0 {
				return false
			}
		}
		return true
	})
	return got
}

// TestTLSWorkerClasses: the worker classes of issue 3 (those that write an access log) serving
// HTTPS, under the same load plan: keep-alive on and off, 404, 5xx, exceptions, 30 ms sleeps, a
// 2 MB response (/big) and 1 MB POSTs (/upload). Counts, endpoints and statuses equal the
// clients' record and the access log; durations agree with the access log's.
// tlsUncounted is how many requests a TLS test under load may find uncounted: TLS under hey's
// 50 concurrent connections has left 1 or 2 of about 1,670 answered requests without an END
// from the kernel side (gthread and gevent; in syscall mode about two runs in three on a loaded
// 2-core machine, in socket mode about one in five). One cause was found and fixed (a CLOSE the
// kernel skipped on_tcp_state for, now ended by on_tcp_destroy); what remains is not found
// (README "Gunicorn serving TLS", known defect).
func tlsUncounted() int { return 2 }

func TestTLSWorkerClasses(t *testing.T) {
	requireE2E(t)
	_, err := exec.LookPath("hey")
	need(t, "the worker-class tests drive load with hey (make deps)", err)
	for _, wc := range workerClasses {
		switch wc.name {
		case "sync", "gthread", "gevent", "eventlet":
		default:
			continue
		}
		wc.uncounted = tlsUncounted()
		t.Run(wc.name, func(t *testing.T) {
			g := startTLSGunicorn(t, gunicornOpts{WorkerClass: wc.class, App: wc.app, Args: wc.args})
			p := startGPE(t, "--pid", strconv.Itoa(g.PID))
			for pid, a := range p.waitTLSAttached(t, g.Workers()) {
				t.Logf("worker %d: %d uprobes on %s in %v", pid, a.probes, a.lib, a.took)
			}
			checkWorkerClass(t, g.gunicorn, p, wc, g.Base)
		})
	}
}

// TestTLSSizes: a 2 MB response and a 1 MB POST over TLS: the sizes are the plaintext's.
func TestTLSSizes(t *testing.T) {
	requireE2E(t)
	g := startTLSGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	p.waitTLSAttached(t, g.Workers())
	if st := g.get(t, "/big"); st != 200 {
		t.Fatalf("GET /big: %d", st)
	}
	resp, err := g.Client.Post(g.Base+"/upload", "application/octet-stream", bytes.NewReader(bytes.Repeat([]byte("u"), 1<<20)))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	ms := p.waitMetric(t, "gunicorn_worker_response_size_bytes", nil, 2)
	for _, want := range []struct {
		method, endpoint string
	}{{"GET", "/big"}, {"POST", "/upload"}} {
		if got := ms.sum("gunicorn_http_requests_total", map[string]string{"method": want.method, "endpoint": want.endpoint, "status": "200"}); got != 1 {
			t.Errorf("%s %s counted %v times, want 1", want.method, want.endpoint, got)
		}
	}
	var in, out float64
	for _, m := range ms.series("gunicorn_worker_request_size_bytes", nil) {
		in += m.GetHistogram().GetSampleSum()
	}
	for _, m := range ms.series("gunicorn_worker_response_size_bytes", nil) {
		out += m.GetHistogram().GetSampleSum()
	}
	t.Logf("request bytes %v, response bytes %v", in, out)
	// Plaintext: the body and the headers, not the records' overhead (a few % more).
	if in < 1<<20 || in > 1<<20+4096 {
		t.Errorf("request bytes %v, want the 1 MiB body and its headers", in)
	}
	if out < 2<<20 || out > 2<<20+4096 {
		t.Errorf("response bytes %v, want the 2 MiB body and the two responses' headers", out)
	}
}

// TestTLSHandshakeNeverFinished: clients that connect and send nothing, or half a ClientHello,
// then leave: no request is counted, none is left in flight, and the next clients are counted.
func TestTLSHandshakeNeverFinished(t *testing.T) {
	requireE2E(t)
	g := startTLSGunicorn(t, gunicornOpts{WorkerClass: "gthread", Args: []string{"--threads", "4"}})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	p.waitTLSAttached(t, g.Workers())
	var conns []net.Conn
	for _, first := range [][]byte{nil, {0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03}} {
		c := g.conn(t)
		if len(first) > 0 {
			if _, err := c.Write(first); err != nil {
				t.Fatal(err)
			}
		}
		conns = append(conns, c)
	}
	// The worker took both (the accept queue is empty again) and read the half ClientHello:
	// whatever gpe-ebpf makes of them is in the records it reads until it is quiet.
	p.waitMetric(t, queueLength, map[string]string{"listener": g.Addr}, 0)
	waitFor(t, 10*time.Second, "the worker to read the half ClientHello", func() bool {
		s, ok := g.serverEnd(t, conns[1])
		return ok && s.rxQueue == 0
	})
	ms := p.quiet(t)
	if got := ms.sum("gunicorn_worker_requests_in_flight", nil); got != 0 {
		t.Errorf("in flight with two handshakes pending: %v, want 0", got)
	}
	for _, c := range conns {
		c.Close()
	}
	for i := 0; i < 5; i++ {
		if st := g.get(t, "/ok"); st != 200 {
			t.Fatalf("GET /ok: %d", st)
		}
	}
	p.settle(t, "gunicorn_worker_requests_total", nil, 5)
	ms = p.quiet(t)
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != 5 {
		t.Errorf("requests_total = %v, want the 5 that completed a handshake", got)
	}
	if got := ms.sum("gunicorn_worker_error_handling_total", nil); got != 0 {
		t.Errorf("error_handling_total = %v, want 0 (an unfinished handshake is no request)", got)
	}
	if got := ms.sum("gunicorn_worker_requests_in_flight", nil); got != 0 {
		t.Errorf("in flight at the end: %v, want 0", got)
	}
	if n := len(accessLogSettled(t, g.gunicorn, 5)); n != 5 {
		t.Errorf("access log has %d lines, want 5", n)
	}
}

// TestTLSPlainHTTPToTLSPort: a plain-HTTP request sent to the TLS port. Gunicorn's libssl
// rejects it in the handshake (it is not a TLS record); Gunicorn answers nothing and logs
// nothing. No request was ever decrypted, so gpe-ebpf counts nothing either (README "Gunicorn
// serving TLS"), and the next HTTPS request is counted as usual.
func TestTLSPlainHTTPToTLSPort(t *testing.T) {
	requireE2E(t)
	g := startTLSGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	p.waitTLSAttached(t, g.Workers())
	c := g.conn(t)
	fmt.Fprintf(c, "GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer, _ := io.ReadAll(c)
	c.Close()
	t.Logf("Gunicorn's answer to plain HTTP on its TLS port: %q", answer)
	if bytes.HasPrefix(answer, []byte("HTTP/")) {
		t.Errorf("Gunicorn answered HTTP on its TLS port (%q): this test's premise is wrong", answer)
	}
	if st := g.get(t, "/ok"); st != 200 {
		t.Fatalf("GET /ok: %d", st)
	}
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, 1)
	ms := p.quiet(t)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}); got != 1 {
		t.Errorf("GET /ok counted %v times, want 1", got)
	}
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != 1 {
		t.Errorf("requests_total = %v, want 1 (the plain-HTTP bytes are no request)", got)
	}
	if got := ms.sum("gunicorn_worker_error_handling_total", nil); got != 0 {
		t.Errorf("error_handling_total = %v, want 0", got)
	}
	if got := ms.sum("gunicorn_worker_requests_in_flight", nil); got != 0 {
		t.Errorf("in flight: %v, want 0", got)
	}
	entries := accessLogSettled(t, g.gunicorn, 1)
	if len(entries) != 1 || entries[0].Path != "/ok" {
		t.Errorf("access log %v, want the one /ok", entries)
	}
}

// TestTLSOtherProcess: another TLS server on the host (openssl s_server, the same libssl) and
// its clients (curl, the same libssl) while gpe-ebpf is attached to a TLS Gunicorn: none of
// gpe-ebpf's uprobe programs runs for them (the kernel's run counts, on only during this check),
// their libssl carries no breakpoint (its code pages are the file's: no anonymous copy, which a
// breakpoint makes), and nothing of theirs is counted. The same counts grow for Gunicorn's
// requests, so the check would see a leak.
// It runs with the uprobe_multi links (auto, on this kernel) and with perf-event uprobes (perf).
func TestTLSOtherProcess(t *testing.T) {
	requireE2E(t)
	for _, tool := range []string{"openssl", "curl"} {
		_, err := exec.LookPath(tool)
		need(t, "the other-process check runs "+tool+" (make deps)", err)
	}
	for _, mode := range []string{"auto", "perf"} {
		t.Run(mode, func(t *testing.T) { testTLSOtherProcess(t, mode) })
	}
}

func testTLSOtherProcess(t *testing.T, mode string) {
	g := startTLSGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--tls-uprobes", mode)
	p.waitTLSAttached(t, g.Workers())

	port := freePort(t)
	srv := exec.Command("openssl", "s_server", "-quiet", "-www", "-accept", fmt.Sprintf("127.0.0.1:%d", port), "-cert", g.Cert, "-key", g.Key)
	srv.Stdout, srv.Stderr = io.Discard, io.Discard
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	other := fmt.Sprintf("https://127.0.0.1:%d/", port)
	waitFor(t, 10*time.Second, "openssl s_server to answer", func() bool {
		return exec.Command("curl", "-sk", "-o", "/dev/null", other).Run() == nil
	})

	restore := enableBPFStats(t)
	defer restore()
	ids := progIDs(t, p.cmd.Process.Pid)
	before := uprobeRuns(t, ids)
	if len(before) == 0 {
		t.Fatalf("gpe-ebpf holds no on_ssl_* program: the check would prove nothing")
	}
	const n = 20
	for i := 0; i < n; i++ {
		if out, err := exec.Command("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", other).Output(); err != nil || string(out) != "200" {
			t.Fatalf("curl %s: %q, %v", other, out, err)
		}
	}
	mid := uprobeRuns(t, ids)
	for name, runs := range mid {
		if runs != before[name] {
			t.Errorf("%s ran %d times during %d HTTPS requests to openssl s_server by curl", name, runs-before[name], n)
		}
	}
	if anon, err := libsslAnon(srv.Process.Pid); err != nil {
		t.Errorf("openssl s_server's libssl: %v", err)
	} else if anon != 0 {
		t.Errorf("openssl s_server's libssl code has %d kB of anonymous pages: a breakpoint was written in it", anon)
	}
	for _, w := range g.Workers() {
		if anon, err := libsslAnon(w); err != nil || anon == 0 {
			t.Errorf("worker %d's libssl code: %d kB anonymous (%v), want the breakpoints' copied pages: the check of s_server would prove nothing", w, anon, err)
		}
	}
	for i := 0; i < n; i++ {
		if out, err := exec.Command("curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", g.Base+"/ok").Output(); err != nil || string(out) != "200" {
			t.Fatalf("curl %s/ok: %q, %v", g.Base, out, err)
		}
	}
	after := uprobeRuns(t, ids)
	var grew uint64
	for name, runs := range after {
		t.Logf("%s: %d runs for %d requests to s_server, %d for %d to Gunicorn", name, mid[name]-before[name], n, runs-mid[name], n)
		grew += runs - mid[name]
	}
	if grew == 0 {
		t.Errorf("no uprobe program ran for Gunicorn's %d HTTPS requests: the check would prove nothing", n)
	}
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, n)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok"}); got != n {
		t.Errorf("/ok counted %v, want %d", got, n)
	}
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/"}); got != 0 {
		t.Errorf("s_server's / counted %v times", got)
	}
}

// enableBPFStats turns kernel.bpf_stats_enabled on and returns what puts it back.
func enableBPFStats(t *testing.T) func() {
	t.Helper()
	const path = "/proc/sys/kernel/bpf_stats_enabled"
	old, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("bpf run statistics: %v", err)
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		t.Fatalf("enable bpf run statistics: %v", err)
	}
	return func() { os.WriteFile(path, old, 0o644) }
}

// uprobeRuns is the run count of each on_ssl_* program among ids.
func uprobeRuns(t *testing.T, ids []ebpf.ProgramID) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, id := range ids {
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := prog.Info()
		if err == nil && strings.HasPrefix(info.Name, "on_ssl_") {
			st, err := prog.Stats()
			if err != nil {
				t.Fatalf("stats of %s: %v", info.Name, err)
			}
			out[info.Name] = st.RunCount
		}
		prog.Close()
	}
	return out
}

// libsslAnon sums the Anonymous kB of pid's executable libssl mappings: writing a breakpoint
// into a file's code gives the process a private (anonymous) copy of that page.
func libsslAnon(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/smaps", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	in, found, anon := false, false, 0
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && strings.Contains(fields[5], "/libssl.so") && strings.Contains(fields[1], "x")
			found = found || in
			continue
		}
		if in && len(fields) >= 2 && fields[0] == "Anonymous:" {
			n, _ := strconv.Atoi(fields[1])
			anon += n
		}
	}
	if !found {
		return 0, fmt.Errorf("no executable libssl mapping in pid %d", pid)
	}
	return anon, sc.Err()
}

// TestTLSReload: after a HUP the master forks new workers; gpe-ebpf attaches the TLS uprobes to
// each (how long after its fork is logged: connections the worker wrapped before that are tied
// to their socket only by a socket call inside SSL_read/SSL_write, in socket mode), and their
// requests are counted.
func TestTLSReload(t *testing.T) {
	requireE2E(t)
	g := startTLSGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	old := g.Workers()
	p.waitTLSAttached(t, old)
	syscall.Kill(g.PID, syscall.SIGHUP)
	var fresh []int
	waitFor(t, 20*time.Second, "two new workers", func() bool {
		fresh = fresh[:0]
		for _, w := range g.Workers() {
			isOld := false
			for _, o := range old {
				isOld = isOld || o == w
			}
			if !isOld {
				fresh = append(fresh, w)
			}
		}
		return len(fresh) == 2 && len(g.Workers()) == 2
	})
	for _, pid := range fresh {
		a := p.waitTLSAttached(t, []int{pid})[pid]
		t.Logf("new worker %d: %d uprobes attached %v after its fork (attaching took %v)", pid, a.probes, a.sinceFork, a.took)
		if a.sinceFork == 0 {
			t.Errorf("new worker %d: no time since fork logged", pid)
		}
	}
	waitFor(t, 10*time.Second, "Gunicorn to answer after the reload", func() bool {
		st, _, err := fetch(g.Client, g.Base+"/ok", "", "")
		return err == nil && st == 200
	})
	const n = 20
	for i := 0; i < n; i++ {
		if st := g.get(t, "/ok"); st != 200 {
			t.Fatalf("GET /ok: %d", st)
		}
	}
	entries := accessLogSettled(t, g.gunicorn, n+1)
	ms := p.settle(t, "gunicorn_worker_requests_total", nil, float64(len(entries)))
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != float64(len(entries)) {
		t.Errorf("requests_total = %v, the access log has %d lines", got, len(entries))
	}
	var byNew float64
	for _, m := range ms.series("gunicorn_worker_info", nil) {
		for _, pid := range fresh {
			if label(m, "pid") == strconv.Itoa(pid) {
				byNew += ms.sum("gunicorn_worker_requests_total", map[string]string{"worker_id": label(m, "worker_id")})
			}
		}
	}
	if byNew < n {
		t.Errorf("the new workers are counted %v requests, want at least %d", byNew, n)
	}
}

// TestTLSContainer: a TLS Gunicorn in its own PID, mount and network namespaces whose libssl is
// another file than the host's (a copy bind-mounted over the same path, visible only inside).
// gpe-ebpf on the host must open the worker's library through /proc/PID/root to put the
// uprobes on the inode the worker runs: the host's file at that path would never trap.
func TestTLSContainer(t *testing.T) {
	requireE2E(t)
	n := newNetns(t)
	cert, key, pool := selfSigned(t)
	port := freePort(t)
	const lib = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
	if _, err := os.Stat(lib); err != nil {
		need(t, "the container test copies Debian's amd64 libssl", err)
	}
	dir := t.TempDir()
	script := fmt.Sprintf("cp %s %s/libssl.so.3 && mount --bind %s/libssl.so.3 %s && "+
		"exec ip netns exec %s gunicorn -w 2 -k sync -b 127.0.0.1:%d --certfile %s --keyfile %s --chdir %s app:app",
		lib, dir, dir, lib, n.name, port, cert, key, appDir())
	cmd := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script)
	out := new(safeBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start the container: %v", err)
	}
	var master int
	t.Cleanup(func() {
		if master != 0 {
			syscall.Kill(master, syscall.SIGTERM)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("the container's output:\n%s", out.String())
		}
	})
	waitFor(t, 30*time.Second, "the container's Gunicorn master and its 2 workers", func() bool {
		kids := children(cmd.Process.Pid)
		if len(kids) != 1 {
			return false
		}
		master = kids[0]
		return len(children(master)) == 2
	})
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DialContext: n.dial,
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	waitFor(t, 20*time.Second, "the container's Gunicorn to answer HTTPS", func() bool {
		st, _, err := fetch(client, base+"/", "", "")
		return err == nil && st != 0
	})
	workers := children(master)
	for _, w := range workers {
		inside, err1 := os.Stat(fmt.Sprintf("/proc/%d/root%s", w, lib))
		host, err2 := os.Stat(lib)
		if err1 != nil || err2 != nil || os.SameFile(inside, host) {
			t.Fatalf("worker %d's libssl is the host's file (%v, %v): the test would prove nothing", w, err1, err2)
		}
	}
	p := startGPE(t, "--pid", strconv.Itoa(master))
	p.waitTLSAttached(t, workers)
	const nReq = 20
	for i := 0; i < nReq; i++ {
		if st, _, err := fetch(client, base+"/ok", "", ""); err != nil || st != 200 {
			t.Fatalf("GET /ok in the container: %d, %v", st, err)
		}
	}
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, nReq)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}); got != nReq {
		t.Errorf("/ok counted %v, want %d", got, nReq)
	}
	for _, w := range workers {
		if anon, err := libsslAnon(w); err != nil || anon == 0 {
			t.Errorf("worker %d: %d kB anonymous in its libssl code (%v), want the breakpoints' pages", w, anon, err)
		}
	}
}

// TestTLSPerfEvents: --tls-uprobes perf (the perf-event uprobes that kernels before 6.10 get)
// measures sync and gthread workers (their threads included) as exactly as the uprobe_multi
// links: counts, endpoints and statuses equal the clients' record and the access log.
func TestTLSPerfEvents(t *testing.T) {
	requireE2E(t)
	_, err := exec.LookPath("hey")
	need(t, "this test drives load with hey (make deps)", err)
	for _, wc := range workerClasses {
		if wc.name != "sync" && wc.name != "gthread" {
			continue
		}
		t.Run(wc.name, func(t *testing.T) {
			g := startTLSGunicorn(t, gunicornOpts{WorkerClass: wc.class, Args: wc.args})
			p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--tls-uprobes", "perf")
			for pid, a := range p.waitTLSAttached(t, g.Workers()) {
				if a.probes != 10 {
					t.Errorf("worker %d: %d perf-event uprobes, want 10", pid, a.probes)
				}
			}
			dir := t.TempDir()
			var all []response
			// hey sends n/c requests per connection: n is a multiple of c.
			for _, l := range []load{{path: "/ok", n: 320, c: 8, keepAlive: true}, {path: "/missing", n: 96, c: 8}, {path: "/status/503", n: 48, c: 4, keepAlive: true}} {
				rs := runHey(t, g.Base, l, dir)
				if len(rs) != l.n {
					t.Fatalf("%s: %d responses of %d", l.path, len(rs), l.n)
				}
				all = append(all, rs...)
			}
			entries := accessLogSettled(t, g.gunicorn, len(all))
			ms := p.settle(t, "gunicorn_worker_requests_total", nil, float64(len(all)))
			slack := float64(tlsUncounted()) // the known defect (README), never more
			got := ms.sum("gunicorn_worker_requests_total", nil)
			if got > float64(len(all)) || got < float64(len(all))-slack || len(entries) != len(all) {
				t.Errorf("requests_total = %v, the clients saw %d, the access log has %d", got, len(all), len(entries))
			} else if got < float64(len(all)) {
				t.Logf("KNOWN DEFECT (README, TLS under load): %v of %d requests not counted (TLS calls on an untied SSL: %v)",
					float64(len(all))-got, len(all), ms.sum("gpe_ebpf_connections_dropped_total", map[string]string{"reason": "tls_untied"}))
			}
			for _, want := range []struct {
				endpoint string
				status   string
				n        float64
			}{{"/ok", "200", 320}, {"/missing", "404", 96}, {"/status/{id}", "503", 48}} {
				if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": want.endpoint, "status": want.status}); got > want.n || got < want.n-slack {
					t.Errorf("%s %s: %v, want %v", want.endpoint, want.status, got, want.n)
				}
			}
		})
	}
}
