package e2e

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// TestSyncEndToEnd is issue 2's acceptance test: a real Gunicorn (sync, 2 workers), a known
// mix of requests, then HUP and kill -9, all checked on a real /metrics.
func TestSyncEndToEnd(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))

	const nOK, nFail, nSlow = 40, 10, 10
	parallel(nOK, 4, func(int) {
		if s := get(t, g.URL()+"/ok"); s != 200 {
			t.Errorf("/ok: %d", s)
		}
	})
	parallel(nFail, 2, func(int) {
		if s := get(t, g.URL()+"/fail?token=secret"); s != 500 {
			t.Errorf("/fail: %d", s)
		}
	})
	// The client's own latency of each /slow request bounds the duration the worker can have
	// taken (first byte read to last byte written) from above, whatever the load on the machine.
	slowClient := make([]time.Duration, nSlow)
	parallel(nSlow, 2, func(i int) {
		t0 := time.Now()
		get(t, g.URL()+"/slow")
		slowClient[i] = time.Since(t0)
	})

	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, nOK+nFail+nSlow)
	t.Logf("requests sent %d, counted %v", nOK+nFail+nSlow, ms.sum("gunicorn_worker_requests_total", nil))
	// One mode is loaded: the one asked for, or for auto whichever this kernel has.
	hooks := ms.series("gpe_ebpf_hooks_info", nil)
	if mode := os.Getenv("GPE_HOOKS"); len(hooks) != 1 || value(hooks[0]) != 1 ||
		(mode != "" && mode != "auto" && label(hooks[0], "mode") != mode) ||
		(label(hooks[0], "mode") != "socket" && label(hooks[0], "mode") != "syscall") {
		t.Errorf("gpe_ebpf_hooks_info: %v, want one series of value 1 naming the mode (GPE_HOOKS=%q)", hooks, mode)
	}
	ms = p.quiet(t) // nothing more may arrive
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != nOK+nFail+nSlow {
		t.Errorf("requests_total settled at %v, want %d", got, nOK+nFail+nSlow)
	}
	if got := ms.sum("gunicorn_worker_failed_requests_total", map[string]string{"method": "GET", "endpoint": "/fail"}); got != nFail {
		t.Errorf("failed_requests_total{GET,/fail} = %v, want %d", got, nFail)
	}
	if got := ms.sum("gunicorn_worker_error_handling_total", map[string]string{"method": "GET", "endpoint": "/fail", "error_type": "http_500"}); got != nFail {
		t.Errorf("error_handling_total{GET,/fail,http_500} = %v, want %d", got, nFail)
	}
	if got := ms.sum("gunicorn_worker_failed_requests_total", nil); got != nFail {
		t.Errorf("failed_requests_total over all labels = %v, want %d (only /fail fails)", got, nFail)
	}
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}); got != nOK {
		t.Errorf("http_requests_total{/ok,200} = %v, want %d", got, nOK)
	}
	// Histograms are recorded when a request ends (its socket gone), which can follow its
	// count by a round trip and a reader poll.
	ms = p.settle(t, "gunicorn_worker_request_duration_seconds", nil, float64(nOK+nFail+nSlow))
	slow := map[string]string{"endpoint": "/slow", "method": "GET"}
	if n := ms.bucket("gunicorn_http_request_duration_seconds", slow, 0.05); n != 0 {
		t.Errorf("%d /slow requests at or below 0.05s, want 0", n)
	}
	le := bucketAbove(slices.Max(slowClient).Seconds())
	if n := ms.bucket("gunicorn_http_request_duration_seconds", slow, le); n != nSlow {
		t.Errorf("%d /slow requests at or below %gs (the bucket above the slowest client latency, %v), want %d", n, le, slices.Max(slowClient), nSlow)
	}
	// Busy time and in flight are the kernel's counts: nothing in flight now, and the workers
	// were busy at least the 50 ms of each /slow request (in flight from its first byte read to
	// its status line, which the app writes after the sleep) and at most the clients' wall time.
	if n := ms.sum("gunicorn_worker_requests_in_flight", nil); n != 0 {
		t.Errorf("requests in flight %v after the clients finished, want 0", n)
	}
	var clientTotal time.Duration
	for _, d := range slowClient {
		clientTotal += d
	}
	if busy := ms.sum("gunicorn_worker_busy_seconds_total", nil); busy < nSlow*0.05 || busy > clientTotal.Seconds()+float64(nOK+nFail)*0.1 {
		t.Errorf("busy seconds %v, want between %v (the /slow sleeps) and the clients' time", busy, nSlow*0.05)
	}
	// The worker histograms agree with the per-endpoint ones.
	if n := ms.sum("gunicorn_worker_request_duration_seconds", nil); n != nOK+nFail+nSlow {
		t.Errorf("worker duration histogram count %v, want %d", n, nOK+nFail+nSlow)
	}
	for _, name := range []string{"gunicorn_worker_memory_bytes", "gunicorn_worker_uptime_seconds"} {
		series := ms.series(name, nil)
		if len(series) != 2 {
			t.Errorf("%s: %d series, want 2", name, len(series))
		}
		for _, m := range series {
			if value(m) <= 0 {
				t.Errorf("%s{worker_id=%q} = %v, want > 0", name, label(m, "worker_id"), value(m))
			}
		}
	}
	running := ms.series("gunicorn_worker_state", map[string]string{"state": "running"})
	if len(running) != 2 {
		t.Fatalf("%d running state series, want 2", len(running))
	}
	oldIDs := map[string]bool{}
	for _, m := range running {
		oldIDs[label(m, "worker_id")] = true
		if value(m) != 1 {
			t.Errorf("running series value %v, want 1", value(m))
		}
	}
	if got := len(ms.series("gunicorn_worker_state", nil)); got != 2 {
		t.Errorf("%d state series, want one per worker (2)", got)
	}
	for _, s := range []string{"query string", "secret", "token"} {
		for _, f := range ms {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetValue() != "" && containsFold(l.GetValue(), s) {
						t.Errorf("label %s=%q leaks %q", l.GetName(), l.GetValue(), s)
					}
				}
			}
		}
	}

	// HUP: two new workers replace the two old ones.
	syscall.Kill(g.PID, syscall.SIGHUP)
	ms = p.waitMetric(t, "gunicorn_master_worker_restarts_total", nil, 2)
	if got := ms.sum("gunicorn_master_signals_total", map[string]string{"signal": "hup"}); got != 1 {
		t.Errorf("signals_total{hup} = %v, want 1", got)
	}
	// Each old worker is shown exited in two scrapes, then its series go: look for each in any.
	seenExited := make(map[string]bool)
	waitFor(t, 10*time.Second, "the old workers to exit", func() bool {
		ms = p.scrape(t)
		for _, m := range ms.series("gunicorn_worker_state", map[string]string{"state": "exited"}) {
			seenExited[label(m, "worker_id")] = true
		}
		return len(ms.series("gunicorn_worker_state", map[string]string{"state": "running"})) == 2 &&
			len(seenExited) == 2
	})
	for id := range oldIDs {
		if !seenExited[id] {
			t.Errorf("old worker %s never shown exited", id)
		}
	}
	for _, m := range ms.series("gunicorn_worker_state", map[string]string{"state": "running"}) {
		if oldIDs[label(m, "worker_id")] {
			t.Errorf("worker %s still running after HUP", label(m, "worker_id"))
		}
	}
	if got := ms.sum("gunicorn_worker_exits_total", map[string]string{"reason": "graceful"}); got != 2 {
		t.Errorf("exits_total{graceful} after HUP = %v, want 2", got)
	}

	// kill -9 one worker: the master replaces it.
	victim, victimID := victimOf(t, g, ms)
	syscall.Kill(victim, syscall.SIGKILL)
	var st []*dto.Metric // the killed worker's state, from a scrape that showed it exited
	waitFor(t, 5*time.Second, "the killed worker's state to be exited and its replacement", func() bool {
		ms = p.scrape(t)
		if len(ms.series("gunicorn_worker_state", map[string]string{"worker_id": victimID, "state": "exited"})) == 1 {
			st = ms.series("gunicorn_worker_state", map[string]string{"worker_id": victimID})
		}
		return st != nil && ms.sum("gunicorn_master_worker_restarts_total", nil) == 3
	})
	if len(st) != 1 || value(st[0]) != 0 {
		t.Errorf("state of killed worker %s: %v, want one exited series with value 0", victimID, st)
	}
	if got := ms.sum("gunicorn_worker_exits_total", map[string]string{"reason": "signal"}); got != 1 {
		t.Errorf("exits_total{signal} = %v, want 1", got)
	}
	if got := ms.sum("gpe_ebpf_events_lost_total", nil); got != 0 {
		t.Errorf("events lost: %v", got)
	}
	t.Logf("lost events %v", ms.sum("gpe_ebpf_events_lost_total", nil))
}

// victimOf picks one of g's two workers to kill: its PID, and its worker_id in ms.
func victimOf(t *testing.T, g *gunicorn, ms metrics) (int, string) {
	t.Helper()
	pids := g.Workers()
	if len(pids) != 2 {
		t.Fatalf("workers: %v", pids)
	}
	var id string
	for _, m := range ms.series("gunicorn_worker_info", map[string]string{"pid": strconv.Itoa(pids[0])}) {
		id = label(m, "worker_id")
	}
	if id == "" {
		t.Fatalf("no gunicorn_worker_info for pid %d", pids[0])
	}
	return pids[0], id
}

func containsFold(s, sub string) bool {
	return len(sub) > 0 && len(s) >= len(sub) && (func() bool {
		for i := 0; i+len(sub) <= len(s); i++ {
			if equalFold(s[i:i+len(sub)], sub) {
				return true
			}
		}
		return false
	})()
}

func equalFold(a, b string) bool {
	for i := 0; i < len(a); i++ {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// TestAttachAfterServing: gpe-ebpf started after Gunicorn has served for a while sees the
// workers already running, numbered by start time, and counts what comes after.
func TestAttachAfterServing(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	for i := 0; i < 20; i++ {
		get(t, g.URL()+"/ok")
	}
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	ms := p.scrape(t)
	running := ms.series("gunicorn_worker_state", map[string]string{"state": "running"})
	if len(running) != 2 {
		t.Fatalf("%d running workers seen at attach, want 2", len(running))
	}
	ages := map[string]bool{}
	for _, m := range ms.series("gunicorn_worker_info", nil) {
		id := label(m, "worker_id")
		var age, sec int
		if _, err := fmt.Sscanf(id, "worker_%d_%d", &age, &sec); err != nil {
			t.Errorf("worker_id %q is not worker_<age>_<second>", id)
		}
		ages[strconv.Itoa(age)] = true
	}
	if !ages["1"] || !ages["2"] {
		t.Errorf("ages %v, want 1 and 2", ages)
	}
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != 0 {
		t.Errorf("requests before attach counted: %v", got)
	}
	for i := 0; i < 10; i++ {
		get(t, g.URL()+"/ok")
	}
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, 10)
}

// TestLifecycle: SIGTERM detaches and exits 0 within 2 s with no program left loaded, and
// gpe-ebpf exits 0 by itself when the master exits.
func TestLifecycle(t *testing.T) {
	requireE2E(t)
	g, p, ids := startServing(t)
	took, code := p.Stop(t)
	if code != 0 {
		t.Errorf("exit code after SIGTERM %d, want 0", code)
	}
	if took > 2*time.Second {
		t.Errorf("took %v to exit after SIGTERM, want <= 2s", took)
	}
	if left := stillLoaded(ids); len(left) > 0 {
		t.Errorf("programs still loaded after exit: %v", left)
	}

	p2 := startGPE(t, "--pid", strconv.Itoa(g.PID))
	g.Stop()
	select {
	case <-p2.done:
		if c := p2.cmd.ProcessState.ExitCode(); c != 0 {
			t.Errorf("exit code after the master exited: %d, want 0", c)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("gpe-ebpf still running 10s after the master exited")
	}
}

// bucketAbove is the smallest duration bucket bound at or above d seconds.
func bucketAbove(d float64) float64 {
	for _, le := range aggregate.DurationBuckets {
		if le >= d {
			return le
		}
	}
	return math.Inf(1)
}
