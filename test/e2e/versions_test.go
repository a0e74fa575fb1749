package e2e

// Issue 23: the Gunicorn people install today, not only Debian 12's 20.1. Debian 13's Gunicorn 23
// (Python 3.13, OpenSSL 3.5) and sid's 26 (Python 3.14, OpenSSL 3.6) run from the roots that
// test/roots/build.sh builds (trixie.root, sid.root), in their own mount namespace with the
// host's network, as a container would; gpe-ebpf runs on the host with --pid of the master.

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// versionClass is a worker class of one Gunicorn version.
type versionClass struct {
	name, class, app string
	args             []string
	tls              bool // also proven serving TLS itself (--certfile/--keyfile)
	uvloop           bool // on uvloop (libuv), which Debian's python3-uvicorn pulls in: both take it when it is there
}

// gunicornVersion is a Gunicorn version and the root it comes from.
type gunicornVersion struct {
	major   string // the subtests' name
	root    string // test/roots/<root>.root
	classes []versionClass
}

var (
	gthreadClass = versionClass{name: "gthread", class: "gthread", args: []string{"--threads", "4"}, tls: true}
	// uvicorn's worker serves TLS over memory BIOs (no SSL_set_fd), with uvloop's SSL protocol
	// when uvloop is there, asyncio's otherwise.
	uvicornClass = versionClass{name: "uvicorn", class: "uvicorn.workers.UvicornWorker", app: "asgi:app", tls: true, uvloop: true}
	// Gunicorn 24+'s own ASGI worker, the same way.
	asgiClass = versionClass{name: "asgi", class: "asgi", app: "asgi:app", tls: true, uvloop: true}
	// The same on Python's own asyncio loop instead of uvloop (which Debian's python3-uvicorn
	// pulls in, and both take when it is there).
	uvicornH11Class  = versionClass{name: "uvicorn-h11", class: "uvicorn.workers.UvicornH11Worker", app: "asgi:app", tls: true}
	asgiAsyncioClass = versionClass{name: "asgi-asyncio", class: "asgi", app: "asgi:app", args: []string{"--asgi-loop", "asyncio"}, tls: true}
)

var gunicornVersions = []gunicornVersion{
	{major: "23", root: "trixie", classes: []versionClass{
		{name: "sync", class: "sync", tls: true}, gthreadClass,
		{name: "gevent", class: "gevent"}, {name: "eventlet", class: "eventlet"}, {name: "tornado", class: "tornado"},
		uvicornClass, uvicornH11Class,
	}},
	// Gunicorn 26 has no eventlet worker any more.
	{major: "26", root: "sid", classes: []versionClass{
		{name: "sync", class: "sync", tls: true}, gthreadClass,
		{name: "gevent", class: "gevent"}, {name: "tornado", class: "tornado"},
		asgiClass, asgiAsyncioClass, uvicornClass, uvicornH11Class,
	}},
}

// TestGunicornVersions: per Gunicorn version, every worker class it ships plus uvicorn's, plain
// and (sync, gthread, the ASGI ones) TLS: fresh connections and keep-alive ones, 200, 404
// and 503 answers. What gpe-ebpf counts equals what the client got, by endpoint and status;
// the 503s are the only failures (no no_response), and nothing stays in flight. On 26, HTTP/2
// (TestGunicornVersions/26/h2-*) is counted the same, per stream.
func TestGunicornVersions(t *testing.T) {
	requireE2E(t)
	var table versionTable
	t.Cleanup(func() { table.print(t) })
	for _, v := range gunicornVersions {
		t.Run(v.major, func(t *testing.T) {
			root := buildRoot(t, v.root, "gunicorn", "python3", "libssl3t64", "python3-uvicorn")
			if got := rootVersion(t, root, "gunicorn"); !strings.HasPrefix(got, v.major+".") {
				t.Fatalf("the %s root has Gunicorn %q, not %s: the matrix would not prove what it says", v.root, got, v.major)
			}
			syscall := os.Getenv("GPE_HOOKS") == "syscall"
			for _, c := range v.classes {
				if c.uvloop && syscall {
					// Known defect (README "Gunicorn versions"): libuv reads and writes
					// sockets with read(2), write(2) and writev(2), which syscall mode does
					// not hook; it sees none of these workers' requests.
					t.Logf("%s not run in syscall mode: uvloop's read/write/writev are not hooked there (known defect)", c.name)
					continue
				}
				// Each in a mount namespace of its own, then under a plain chroot in the host's
				// mount namespace, where /proc/PID/* name the root's files with its directory in
				// front; plain, then TLS.
				for _, tls := range []bool{false, true} {
					if tls && !c.tls {
						continue
					}
					for _, chroot := range []bool{false, true} {
						name := versionRowName(c.name, tls, chroot)
						ok := t.Run(name, func(t *testing.T) { testVersionClass(t, root, c, tls, chroot) })
						table.add(v.major, name, ok)
					}
				}
			}
			if v.major == "26" {
				asgi := asgiClass
				if syscall {
					asgi = asgiAsyncioClass // uvloop is not seen in syscall mode (above)
				}
				for _, c := range []versionClass{gthreadClass, asgi} {
					table.add(v.major, "h2-"+c.name+"-tls", t.Run("h2-"+c.name+"-tls", func(t *testing.T) { testHTTP2(t, root, c, true) }))
					table.add(v.major, "h2c-"+c.name, t.Run("h2c-"+c.name, func(t *testing.T) { testHTTP2(t, root, c, false) }))
				}
			}
		})
	}
}

// startVersion starts Gunicorn with class c from root, plain or TLS, and gpe-ebpf on its
// master, and returns them with the base URL and a TLS config that trusts the server.
func startVersion(t *testing.T, root string, c versionClass, args []string, withTLS, plainChroot bool) (*gunicorn, *gpe, string, *tls.Config) {
	t.Helper()
	o := gunicornOpts{WorkerClass: c.class, App: c.app, Args: append(append([]string{}, c.args...), args...), Root: root,
		PlainChroot: plainChroot}
	var g *gunicorn
	var base string
	var tc *tls.Config
	if withTLS {
		tg := startTLSGunicorn(t, o)
		g, base, tc = tg.gunicorn, tg.Base, tg.Client.Transport.(*http.Transport).TLSClientConfig
	} else {
		g = startGunicorn(t, o)
		base = g.URL()
	}
	if plainChroot && withTLS {
		for _, w := range g.Workers() {
			if lib := mappedLibssl(t, w); !strings.HasPrefix(lib, root+"/") {
				t.Fatalf("worker %d maps libssl as %q, not under the chroot %s: the test would prove nothing", w, lib, root)
			}
		}
	}
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	if withTLS {
		p.waitTLSAttached(t, g.Workers())
	}
	return g, p, base, tc
}

// versionLoad is one batch of requests of the matrix.
type versionLoad struct {
	path, endpoint string
	status, n      int
	keepAlive      bool
}

// versionConcurrency is how many clients send the plan's requests at once.
const versionConcurrency = 4

var versionPlan = []versionLoad{
	{path: "/ok", endpoint: "/ok", status: 200, n: 20},
	{path: "/ok", endpoint: "/ok", status: 200, n: 20, keepAlive: true},
	{path: "/missing", endpoint: "/missing", status: 404, n: 10, keepAlive: true},
	{path: "/status/503", endpoint: "/status/{id}", status: 503, n: 10},
}

// testVersionClass sends versionPlan, versionConcurrency clients at a time, to Gunicorn with class
// c from root (in a mount namespace of its own, or under a plain chroot), plain or TLS, and
// checks what gpe-ebpf counted against what the clients got.
func testVersionClass(t *testing.T, root string, c versionClass, withTLS, plainChroot bool) {
	clients := versionConcurrency
	g, p, base, tc := startVersion(t, root, c, nil, withTLS, plainChroot)
	fresh := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
	kept := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, MaxIdleConnsPerHost: 4}}
	total, failures := 0, 0
	for _, l := range versionPlan {
		client := fresh
		if l.keepAlive {
			client = kept
		}
		var mu sync.Mutex
		got := map[string]int{}
		parallel(l.n, clients, func(int) {
			st, _, err := fetch(client, base+l.path, "", "")
			mu.Lock()
			defer mu.Unlock()
			got[fmt.Sprint(st, err)]++
		})
		if want := fmt.Sprint(l.status, nil); got[want] != l.n {
			t.Fatalf("GET %s (keep-alive %v) ×%d: %v, want %d × %s", l.path, l.keepAlive, l.n, got, l.n, want)
		}
		total += l.n
		if l.status >= 500 {
			failures += l.n
		}
	}
	// Closing the idle keep-alive connections ends them with no request in flight: no failure.
	kept.CloseIdleConnections()
	if g.Port != 0 {
		g.idle(t)
	}
	p.settle(t, "gunicorn_worker_requests_total", nil, float64(total))
	ms := p.quiet(t)
	expect := func(name string, labels map[string]string, want int) {
		t.Helper()
		if got := ms.sum(name, labels); got != float64(want) {
			t.Errorf("%s%v = %v, want %d", name, labels, got, want)
		}
	}
	expect("gunicorn_worker_requests_total", nil, total)
	expect("gunicorn_http_requests_total", nil, total)
	want := map[[2]string]int{}
	for _, l := range versionPlan {
		want[[2]string{l.endpoint, strconv.Itoa(l.status)}] += l.n
	}
	for k, n := range want {
		expect("gunicorn_http_requests_total", map[string]string{"method": "GET", "endpoint": k[0], "status": k[1]}, n)
	}
	expect("gunicorn_worker_request_duration_seconds", nil, total)
	expect("gunicorn_worker_failed_requests_total", nil, failures)
	expect("gunicorn_worker_failed_requests_total", map[string]string{"endpoint": "/status/{id}"}, failures)
	expect("gunicorn_worker_error_handling_total", nil, failures)
	expect("gunicorn_worker_error_handling_total", map[string]string{"error_type": "http_503"}, failures)
	expect("gunicorn_worker_requests_in_flight", nil, 0)
	expect("gpe_ebpf_events_lost_total", nil, 0)
	// The access log, where the class writes Gunicorn's (uvicorn's workers log their own way):
	// the same requests, by path and status.
	if log := g.Access(t); len(log) > 0 {
		byLog := map[[2]string]int{}
		for _, e := range log {
			byLog[[2]string{e.Path, strconv.Itoa(e.Status)}]++
		}
		for _, l := range versionPlan {
			k := [2]string{l.path, strconv.Itoa(l.status)}
			if byLog[k] != want[[2]string{l.endpoint, k[1]}] {
				t.Errorf("access log: %d × %s %s, gpe-ebpf counted %d", byLog[k], k[0], k[1], want[[2]string{l.endpoint, k[1]}])
			}
		}
		if len(log) != total {
			t.Errorf("access log: %d lines, gpe-ebpf counted %d requests", len(log), total)
		}
	} else {
		t.Logf("%s writes no Gunicorn access log lines: the access-log check is left out", c.class)
	}
	// A HUP: the master replaces both workers, and the new ones' requests are counted too.
	versionHUP(t, g, p, base, fresh, withTLS, total)
	if t.Failed() {
		for _, name := range []string{"gunicorn_http_requests_total", "gunicorn_worker_error_handling_total", "gpe_ebpf_events_total"} {
			for _, m := range ms.series(name, nil) {
				t.Logf("%s%v = %v", name, m.GetLabel(), value(m))
			}
		}
	}
}

// versionHUP sends Gunicorn g a HUP, waits for gpe-ebpf to count both workers' restarts (and,
// serving TLS, for its uprobes on the new workers), then sends 10 /ok: counted on top of the
// before requests, with one hup signal.
func versionHUP(t *testing.T, g *gunicorn, p *gpe, base string, client *http.Client, withTLS bool, before int) {
	t.Helper()
	old := g.Workers()
	syscall.Kill(g.PID, syscall.SIGHUP)
	p.waitMetric(t, "gunicorn_master_worker_restarts_total", nil, float64(len(old)))
	waitFor(t, 30*time.Second, "the new workers", func() bool {
		now := g.Workers()
		if len(now) != len(old) {
			return false
		}
		for _, w := range now {
			if slices.Contains(old, w) {
				return false
			}
		}
		return g.answers()
	})
	if withTLS {
		p.waitTLSAttached(t, g.Workers())
	}
	const after = 10
	for range after {
		if st, _, err := fetch(client, base+"/ok", "", ""); st != 200 || err != nil {
			t.Fatalf("GET /ok after the HUP: %d %v", st, err)
		}
	}
	ms := p.settle(t, "gunicorn_http_requests_total", nil, float64(before+after))
	if got := ms.sum("gunicorn_http_requests_total", nil); got != float64(before+after) {
		t.Errorf("after the HUP: gunicorn_http_requests_total = %v, want %d", got, before+after)
	}
	if got := ms.sum("gunicorn_master_signals_total", map[string]string{"signal": "hup"}); got != 1 {
		t.Errorf("gunicorn_master_signals_total{signal=hup} = %v, want 1", got)
	}
}

// versionRowName is a worker class's subtest name: gthread, chroot-gthread, gthread-tls, ...
func versionRowName(class string, tls, chroot bool) string {
	name := class
	if tls {
		name += "-tls"
	}
	if chroot {
		name = "chroot-" + name
	}
	return name
}

// versionTable is TestGunicornVersions' summary: version × subtest × hook mode × result.
type versionTable struct{ rows [][4]string }

func (vt *versionTable) add(version, name string, ok bool) {
	mode := os.Getenv("GPE_HOOKS")
	if mode == "" {
		mode = "socket"
	}
	result := "pass"
	if !ok {
		result = "fail"
	}
	vt.rows = append(vt.rows, [4]string{version, name, mode, result})
}

func (vt *versionTable) print(t *testing.T) {
	var b strings.Builder
	fmt.Fprintf(&b, "Gunicorn versions:\n%-8s %-24s %-8s %s\n", "version", "subtest", "hooks", "result")
	for _, r := range vt.rows {
		fmt.Fprintf(&b, "%-8s %-24s %-8s %s\n", r[0], r[1], r[2], r[3])
	}
	t.Log(b.String())
}

// h2Plan is what curl asks over one HTTP/2 connection.
var h2Plan = []versionLoad{
	{path: "/ok", endpoint: "/ok", status: 200, n: 12},
	{path: "/missing", endpoint: "/missing", status: 404, n: 5},
	{path: "/status/503", endpoint: "/status/{id}", status: 503, n: 3},
}

// testHTTP2 serves HTTP/2 with Gunicorn 26 (--http-protocols h2,h1): over TLS with ALPN, or in
// cleartext with prior knowledge, to the root's curl (one connection, its streams one after the
// other, then another, up to 4 at a time, then one whose header blocks are too long to be
// forwarded whole). Each stream is counted like an HTTP/1 request: by method, endpoint and status, with
// its duration; the 503s are the only failures, and nothing stays in flight. HTTP/1.1 requests
// to the same server after them are counted exactly too.
func testHTTP2(t *testing.T, root string, c versionClass, withTLS bool) {
	args := []string{"--http-protocols", "h2,h1"}
	if !withTLS {
		args = append(args, "--http2-cleartext", "prior-knowledge")
	}
	g, p, base, tc := startVersion(t, root, c, args, withTLS, false)
	const h1 = 10
	curl := []string{"curl", "--silent", "--show-error", "--insecure", "--write-out", "%{http_code} %{http_version}\n"}
	if withTLS {
		curl = append(curl, "--http2")
	} else {
		curl = append(curl, "--http2-prior-knowledge")
	}
	// Twice: the streams one after the other, then up to 4 at a time on the one connection
	// (--parallel multiplexes them), answered in any order.
	n, failures, want := 0, 0, []string{}
	var urls []string
	for _, l := range h2Plan {
		for range l.n {
			urls = append(urls, "--output", "/dev/null", base+l.path)
			want = append(want, fmt.Sprintf("%d 2", l.status))
		}
		n += l.n
		if l.status >= 500 {
			failures += l.n
		}
	}
	slices.Sort(want)
	// Then a third time with a header longer than the kernel forwards of a header block (512
	// bytes): the client's HPACK table is lost from the first request on, so the connection's
	// requests are counted with their statuses as OTHER / unknown, never with a wrong label.
	rounds := [][]string{nil, {"--parallel", "--parallel-max", "4"}, {"-H", "X-Pad: " + strings.Repeat("p", 1200)}}
	for _, extra := range rounds {
		args := append(append(append([]string{filepath.Join(repoDir(), "test/roots/run.sh"), root}, curl...), extra...), urls...)
		out, err := exec.Command("bash", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("curl %v over HTTP/2: %v\n%s", extra, err, out)
		}
		got := strings.Split(strings.TrimSpace(string(out)), "\n")
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Fatalf("curl %v: statuses and HTTP versions:\n%s\nwant (in any order)\n%s\n(\"2\": the server must speak HTTP/2, or the test would prove nothing)", extra, out, strings.Join(want, "\n"))
		}
	}
	lost := len(rounds) - 2 // the rounds whose requests are OTHER / unknown
	n, failures = len(rounds)*n, len(rounds)*failures
	if g.Port != 0 {
		g.idle(t)
	}
	p.settle(t, "gunicorn_worker_requests_total", nil, float64(n))
	h2 := p.quiet(t)
	expect := func(ms metrics, name string, labels map[string]string, want int) {
		t.Helper()
		if got := ms.sum(name, labels); got != float64(want) {
			t.Errorf("%s%v = %v, want %d", name, labels, got, want)
		}
	}
	expect(h2, "gunicorn_worker_requests_total", nil, n)
	expect(h2, "gunicorn_http_requests_total", nil, n)
	for _, l := range h2Plan {
		expect(h2, "gunicorn_http_requests_total", map[string]string{"method": "GET", "endpoint": l.endpoint, "status": strconv.Itoa(l.status)}, 2*l.n)
		expect(h2, "gunicorn_http_requests_total", map[string]string{"method": "OTHER", "endpoint": "unknown", "status": strconv.Itoa(l.status)}, lost*l.n)
	}
	expect(h2, "gunicorn_worker_request_duration_seconds", nil, n)
	expect(h2, "gunicorn_worker_failed_requests_total", nil, failures)
	expect(h2, "gunicorn_worker_error_handling_total", nil, failures)
	expect(h2, "gunicorn_worker_error_handling_total", map[string]string{"error_type": "http_503"}, failures)
	expect(h2, "gunicorn_worker_requests_in_flight", nil, 0)
	expect(h2, "gpe_ebpf_events_lost_total", nil, 0)
	// A prior-knowledge port answers a trusted peer's (loopback's) HTTP/1.1 with 400: it expects
	// HTTP/2 from it. An answer all the same, with its status.
	h1Status := 200
	if !withTLS {
		h1Status = 400
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, DisableKeepAlives: true}}
	for range h1 {
		if st, _, err := fetch(client, base+"/ok", "", ""); err != nil || st != h1Status {
			t.Fatalf("HTTP/1.1 GET /ok: %d %v, want %d", st, err, h1Status)
		}
	}
	ok := map[string]string{"endpoint": "/ok", "status": strconv.Itoa(h1Status)}
	h2ok := h2.sum("gunicorn_http_requests_total", ok)
	p.settle(t, "gunicorn_worker_requests_total", nil, float64(n+h1))
	ms := p.quiet(t)
	expect(ms, "gunicorn_worker_requests_total", nil, n+h1)
	if got := ms.sum("gunicorn_http_requests_total", ok) - h2ok; got != h1 {
		t.Errorf("the %d HTTP/1.1 requests: http_requests_total%v grew by %v", h1, ok, got)
	}
	expect(ms, "gunicorn_worker_failed_requests_total", nil, failures)
	expect(ms, "gunicorn_worker_requests_in_flight", nil, 0)
	entries := accessLogSettled(t, g, n+h1)
	t.Logf("HTTP/2 %s: %d streams, %v counted by gpe-ebpf (HTTP/1.1 after them: %v of %d); access log %d lines",
		map[bool]string{true: "over TLS (ALPN)", false: "cleartext (prior knowledge)"}[withTLS], n,
		h2.sum("gunicorn_worker_requests_total", nil), ms.sum("gunicorn_worker_requests_total", nil)-float64(n), h1, len(entries))
	if t.Failed() {
		for _, name := range []string{"gunicorn_http_requests_total", "gunicorn_worker_error_handling_total", "gpe_ebpf_events_total"} {
			for _, m := range ms.series(name, nil) {
				t.Logf("%s%v = %v", name, m.GetLabel(), value(m))
			}
		}
	}
}

// copyApp copies the test app's Python files into dir (a root's /tmp directory).
func copyApp(t *testing.T, dir string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(appDir(), "*.py"))
	if err != nil || len(files) == 0 {
		t.Fatalf("the test app's files in %s: %v", appDir(), err)
	}
	copyFiles(t, dir, files...)
}

// copyFiles copies files into dir, keeping their names.
func copyFiles(t *testing.T, dir string, files ...string) {
	t.Helper()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
