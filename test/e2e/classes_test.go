package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Issue 3: every worker class Debian ships for Gunicorn 20.1, exact under concurrent load with
// real clients. Ground truth is Gunicorn's access log where the class writes one, and the
// load generator's record of every response (status, latency) always.

type workerClass struct {
	name, class, app string
	args             []string
	accessLog        bool // Gunicorn's access log is written by this class
	// uncounted is how many answered requests may go uncounted: 0 but for TLS (tlsUncounted).
	uncounted int
}

var workerClasses = []workerClass{
	{name: "sync", class: "sync", accessLog: true},
	{name: "gthread", class: "gthread", args: []string{"--threads", "4", "--keep-alive", "5"}, accessLog: true},
	{name: "gevent", class: "gevent", accessLog: true},
	{name: "eventlet", class: "eventlet", accessLog: true},
	// Tornado writes no Gunicorn access log; uvicorn writes its own format.
	{name: "tornado", class: "tornado"},
	{name: "uvicorn", class: "uvicorn.workers.UvicornWorker", app: "asgi:app"},
}

// maxUnread is how many responses a worker wrote may go unread by hey (the access log's lines
// beyond the client's responses) before the run is taken as broken rather than as hey's.
const maxUnread = 8

// maxUnlogged is how many responses the client read may be missing from Gunicorn's access log
// (seen: 1 of 1,601).
const maxUnlogged = 2

// load is one hey run against one endpoint.
type load struct {
	path      string
	n, c      int
	keepAlive bool
	postBytes int // > 0: POST a body of this size
}

var loadPlan = []load{
	{path: "/ok", n: 600, c: 50, keepAlive: true},
	{path: "/ok", n: 300, c: 50},
	{path: "/missing", n: 200, c: 50, keepAlive: true},
	{path: "/status/500", n: 100, c: 50, keepAlive: true},
	{path: "/status/503", n: 100, c: 50},
	{path: "/fail", n: 100, c: 20, keepAlive: true},
	{path: "/sleep/30", n: 200, c: 50, keepAlive: true},
	{path: "/big", n: 40, c: 10, keepAlive: true},
	{path: "/upload", n: 30, c: 10, keepAlive: true, postBytes: 1 << 20},
}

// response is one line of hey's CSV output.
type response struct {
	path    string
	status  int
	latency float64 // seconds
}

// runHey drives one load and returns every response hey recorded; requests with no
// response (connection closed, reset) are the difference between n and len(result).
func runHey(t *testing.T, base string, l load, dir string) []response {
	t.Helper()
	args := []string{"-n", strconv.Itoa(l.n), "-c", strconv.Itoa(l.c), "-t", "60", "-o", "csv"}
	if !l.keepAlive {
		args = append(args, "-disable-keepalive")
	}
	if l.postBytes > 0 {
		body := filepath.Join(dir, fmt.Sprintf("body-%d", l.postBytes))
		if _, err := os.Stat(body); err != nil {
			if err := os.WriteFile(body, bytes.Repeat([]byte("p"), l.postBytes), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args = append(args, "-m", "POST", "-D", body, "-T", "application/octet-stream")
	}
	args = append(args, base+l.path)
	out, err := exec.Command("hey", args...).Output()
	if err != nil {
		t.Fatalf("hey %v: %v", args, err)
	}
	var rs []response
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ",")
		if len(f) < 8 || f[0] == "response-time" {
			continue
		}
		lat, err1 := strconv.ParseFloat(f[0], 64)
		st, err2 := strconv.Atoi(f[6])
		if err1 != nil || err2 != nil {
			continue
		}
		rs = append(rs, response{path: l.path, status: st, latency: lat})
	}
	return rs
}

// endpointOf is the endpoint label gpe-ebpf gives a path (all-digit segments become {id}).
func endpointOf(path string) string {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		if _, err := strconv.Atoi(s); err == nil && s != "" {
			segs[i] = "{id}"
		}
	}
	return strings.Join(segs, "/")
}

func TestWorkerClasses(t *testing.T) {
	requireE2E(t)
	_, err := exec.LookPath("hey")
	need(t, "the worker-class tests drive load with hey (make deps)", err)
	for _, wc := range workerClasses {
		t.Run(wc.name, func(t *testing.T) { testWorkerClass(t, wc) })
	}
}

func testWorkerClass(t *testing.T, wc workerClass) {
	g := startGunicorn(t, gunicornOpts{WorkerClass: wc.class, App: wc.app, Args: wc.args})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	checkWorkerClass(t, g, p, wc, g.URL())
}

// checkWorkerClass drives loadPlan against base, the URL of Gunicorn g (http:// or https://),
// and checks what gpe-ebpf p counted against the clients' record and the access log.
func checkWorkerClass(t *testing.T, g *gunicorn, p *gpe, wc workerClass, base string) {
	dir := t.TempDir()

	sent := map[string]int{}
	byStatus := map[string]map[int]int{} // endpoint → status → responses
	latency := map[string]float64{}
	var all []response
	for _, l := range loadPlan {
		rs := runHey(t, base, l, dir)
		ep := endpointOf(l.path)
		sent[ep] += l.n
		if byStatus[ep] == nil {
			byStatus[ep] = map[int]int{}
		}
		for _, r := range rs {
			byStatus[ep][r.status]++
			latency[ep] += r.latency
		}
		all = append(all, rs...)
	}
	// gpe-ebpf counts what the workers answered. A client can miss a response a worker wrote
	// (hey on a keep-alive connection gthread closes under it): Gunicorn's access log then has
	// a line more than the client has responses (up to 4 of 1,670 seen under gthread). The
	// total must match the server exactly; each response of that gap may sit, per endpoint, on
	// the answered side instead of no_response.
	// The other way round, Gunicorn may leave an answered request out of its access log (gthread
	// over TLS under hey: 1,600 lines for 1,601 responses the client read, all 1,601 counted by
	// gpe-ebpf, once in a rehearsal): the client's responses are then what the server answered.
	gap := 0
	var entries []accessEntry
	if wc.accessLog {
		entries = accessLogSettled(t, g, len(all))
		gap = len(entries) - len(all)
		switch {
		case gap < -maxUnlogged || gap > maxUnread:
			t.Errorf("access log has %d lines, the client saw %d responses", len(entries), len(all))
			gap = max(gap, 0)
		case gap < 0:
			t.Logf("the access log has %d lines, the client saw %d responses: %d answered that Gunicorn did not log", len(entries), len(all), -gap)
			gap = 0
		case gap > 0:
			t.Logf("the access log has %d lines, the client saw %d responses: %d written that the client did not read", len(entries), len(all), gap)
		}
	}
	within := func(got float64, lo, hi int) bool { return got >= float64(lo) && got <= float64(hi) }
	ms := p.settle(t, "gunicorn_worker_requests_total", nil, float64(len(all)+gap))
	got := ms.sum("gunicorn_worker_requests_total", nil)
	// slack: the known defect (wc.uncounted), which may take any request, answered or not, from
	// any endpoint: every check allows that many fewer, never more.
	slack := wc.uncounted
	if short := float64(len(all)+gap) - got; short > 0 && short <= float64(slack) {
		t.Logf("KNOWN DEFECT (README, TLS under load): %v of %d answered requests not counted (TLS calls on an untied SSL: %v, program misses: %v)",
			short, len(all)+gap, ms.sum("gpe_ebpf_connections_dropped_total", map[string]string{"reason": "tls_untied"}),
			ms.sum("gpe_ebpf_program_misses_total", nil))
	} else if got != float64(len(all)+gap) {
		t.Errorf("requests_total = %v, the workers answered %d (the client saw %d)", got, len(all)+gap, len(all))
		// What gpe-ebpf saw instead, to tell a lost record from a misread one.
		for _, name := range []string{"gunicorn_worker_error_handling_total", "gunicorn_http_requests_total", "gpe_ebpf_events_total", "gpe_ebpf_events_lost_total", "gpe_ebpf_connections_dropped_total"} {
			for _, m := range ms.series(name, nil) {
				t.Logf("%s%v = %v", name, m.GetLabel(), value(m))
			}
		}
	}
	// Requests without a response are counted when their connection ends, which can follow
	// the last answered request's end by a round trip and a reader poll: wait for them too.
	var failedFloor int
	for ep, statuses := range byStatus {
		answered := 0
		for st, n := range statuses {
			answered += n
			if st >= 500 {
				failedFloor += n
			}
		}
		failedFloor += sent[ep] - answered
	}
	failedFloor -= gap
	if ms.sum("gunicorn_worker_failed_requests_total", nil) < float64(failedFloor) {
		ms, _ = p.scrapeUntil(t, 15*time.Second, func(ms metrics) bool {
			return ms.sum("gunicorn_worker_failed_requests_total", nil) >= float64(failedFloor)
		})
	}
	var failedWant float64
	for ep, statuses := range byStatus {
		answered := 0
		for st, n := range statuses {
			answered += n
			labels := map[string]string{"endpoint": ep, "status": strconv.Itoa(st)}
			if got := ms.sum("gunicorn_http_requests_total", labels); !within(got, n-slack, n+gap) {
				t.Errorf("http_requests_total%v = %v, client saw %d (+%d unread)", labels, got, n, gap)
			}
			if st >= 500 {
				failedWant += float64(n)
				el := map[string]string{"endpoint": ep, "error_type": fmt.Sprintf("http_%d", st)}
				if got := ms.sum("gunicorn_worker_error_handling_total", el); !within(got, n-slack, n+gap) {
					t.Errorf("error_handling_total%v = %v, want %d (+%d unread)", el, got, n, gap)
				}
			}
		}
		if missing := sent[ep] - answered; missing > 0 {
			// The client got no response at all (Tornado closes the connection when the
			// WSGI app raises): each is a failure with error_type no_response.
			failedWant += float64(missing)
			el := map[string]string{"endpoint": ep, "error_type": "no_response"}
			if got := ms.sum("gunicorn_worker_error_handling_total", el); !within(got, missing-gap-slack, missing) {
				t.Errorf("error_handling_total%v = %v, want %d (requests without a response; -%d unread)", el, got, missing, gap)
			}
		}
		fl := map[string]string{"endpoint": ep}
		var want float64
		for st, n := range statuses {
			if st >= 500 {
				want += float64(n)
			}
		}
		want += float64(sent[ep] - answered)
		if got := ms.sum("gunicorn_worker_failed_requests_total", fl); !within(got, int(want)-gap-slack, int(want)) {
			t.Errorf("failed_requests_total{endpoint=%q} = %v, want %v (-%d unread)", ep, got, want, gap)
		}
	}
	if got := ms.sum("gunicorn_worker_failed_requests_total", nil); !within(got, int(failedWant)-gap-slack, int(failedWant)) {
		t.Errorf("failed_requests_total = %v, want %v (-%d unread)", got, failedWant, gap)
	}
	if got := ms.sum("gpe_ebpf_events_lost_total", nil); got != 0 {
		t.Errorf("events lost: %v", got)
	}

	// Durations of the 30 ms endpoint.
	sleep := map[string]string{"endpoint": "/sleep/{id}", "method": "GET"}
	// Histograms are recorded when a request ends, which can follow its count.
	ms = p.settle(t, "gunicorn_http_request_duration_seconds", sleep, float64(byStatus["/sleep/{id}"][200]))
	var ourSum float64
	var ourCount uint64
	for _, m := range ms.series("gunicorn_http_request_duration_seconds", sleep) {
		ourSum += m.GetHistogram().GetSampleSum()
		ourCount += m.GetHistogram().GetSampleCount()
	}
	if n := byStatus["/sleep/{id}"][200]; !within(float64(ourCount), n-slack, n+gap) {
		t.Errorf("/sleep/30 histogram count %d, want %d (+%d unread)", ourCount, n, gap)
	}
	if n := ms.bucket("gunicorn_http_request_duration_seconds", sleep, 0.025); n != 0 {
		t.Errorf("%d /sleep/30 requests observed at or below 25 ms", n)
	}
	report := fmt.Sprintf("%s: sent %d, client responses %d, counted %v", wc.name, sumInts(sent), len(all), ms.sum("gunicorn_worker_requests_total", nil))
	if wc.accessLog {
		report += fmt.Sprintf(", access-log lines %d", len(entries))
		var logSum float64
		var logDur []float64
		for _, e := range entries {
			if e.Path == "/sleep/30" {
				d := float64(e.Micros) / 1e6
				logSum += d
				logDur = append(logDur, d)
			}
		}
		errPct := 100 * math.Abs(ourSum-logSum) / logSum
		report += fmt.Sprintf(", /sleep/30 duration sum %.3fs vs access log %.3fs (%.2f%%)", ourSum, logSum, errPct)
		if errPct > 5 {
			t.Errorf("/sleep/30 duration sum %.4fs differs from the access log's %.4fs by %.2f%% (> 5%%)", ourSum, logSum, errPct)
		}
		// Bucket by bucket, the histogram agrees with the access log's durations (a request
		// within a fraction of a millisecond of a bound may fall either side).
		sort.Float64s(logDur)
		for _, b := range []float64{0.05, 0.1, 0.25, 0.5} {
			logN := sort.SearchFloat64s(logDur, b+1e-12)
			ours := ms.bucket("gunicorn_http_request_duration_seconds", sleep, b)
			tol := math.Max(2, 0.02*float64(len(logDur)))
			if math.Abs(float64(ours)-float64(logN)) > tol {
				t.Errorf("/sleep/30 at or below %vs: %d observed, access log %d", b, ours, logN)
			}
		}
	} else {
		// No access log: the sum lies between the sleep time and the clients' latency.
		lo, hi := 0.030*float64(ourCount), latency["/sleep/{id}"]
		report += fmt.Sprintf(", /sleep/30 duration sum %.3fs within [%.3f, %.3f]", ourSum, lo, hi)
		if ourSum < lo || ourSum > hi {
			t.Errorf("/sleep/30 duration sum %.4fs outside [sleep %.4fs, client latency %.4fs]", ourSum, lo, hi)
		}
	}
	t.Log(report)
}

// accessLogSettled reads the access log once it has at least want lines and no line came in
// the last 300 ms (a worker writes its line after the response), or after 3 s.
func accessLogSettled(t *testing.T, g *gunicorn, want int) []accessEntry {
	t.Helper()
	var entries []accessEntry
	still := unchanged(func() int {
		entries = g.Access(t)
		return len(entries)
	})
	poll(3*time.Second, 300*time.Millisecond, func() bool { return still() && len(entries) >= want })
	return entries
}

func sumInts(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}
