package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end of issue 7: an application that keeps its own prometheus_client metrics in
// multiprocess mode (test/app/custom_metrics.py: no metrics server, no Gunicorn hook) is
// served by gpe-ebpf --multiproc-dir next to the gunicorn_* metrics, merged as
// prometheus_client's MultiProcessCollector merges them, with the live* gauges following the
// workers gpe-ebpf sees exit.

// order is one kind of order the test sends, with the value every order of that kind carries.
type order struct {
	kind  string
	value float64
	n     int
}

var multiprocOrders = []order{{"book", 3, 12}, {"pen", 20, 7}, {"lamp", 75, 5}}

// app_order_value's buckets in custom_metrics.py, without +Inf.
var multiprocBuckets = []float64{1, 5, 10, 50, 100}

// fetch sends one request on a fresh connection; safe to call from any goroutine.
func fetchStatus(url string, timeout time.Duration) (int, error) {
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: timeout}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, nil
}

// sendOrders sends every order of orders, 8 at a time, and returns how many were sent.
func sendOrders(t *testing.T, g *gunicorn, orders []order) int {
	t.Helper()
	var urls []string
	for _, o := range orders {
		for i := 0; i < o.n; i++ {
			urls = append(urls, fmt.Sprintf("%s/order/%s?value=%g", g.URL(), o.kind, o.value))
		}
	}
	parallel(len(urls), 8, func(i int) {
		if s, err := fetchStatus(urls[i], 10*time.Second); err != nil || s != 200 {
			t.Errorf("GET %s: %d %v", urls[i], s, err)
		}
	})
	if t.Failed() {
		t.FailNow()
	}
	return len(urls)
}

func startCustomMetricsGunicorn(t *testing.T, dir string) *gunicorn {
	t.Helper()
	return startGunicorn(t, gunicornOpts{
		App: "custom_metrics:app",
		Env: []string{"PROMETHEUS_MULTIPROC_DIR=" + dir},
	})
}

// checkOrders checks the app's counter and histogram on one scrape against what was sent.
func checkOrders(t *testing.T, ms metrics, orders []order) {
	t.Helper()
	var n int
	var sum float64
	buckets := make(map[float64]uint64)
	for _, o := range orders {
		if got := ms.sum("app_orders_total", map[string]string{"kind": o.kind}); got != float64(o.n) {
			t.Errorf("app_orders_total{kind=%q} = %v, want %d", o.kind, got, o.n)
		}
		n += o.n
		sum += o.value * float64(o.n)
		for _, b := range multiprocBuckets {
			if o.value <= b {
				buckets[b] += uint64(o.n)
			}
		}
	}
	if got := ms.sum("app_orders_total", nil); got != float64(n) {
		t.Errorf("app_orders_total over all kinds = %v, want %d", got, n)
	}
	if f := ms["app_orders_total"]; f == nil || f.GetType().String() != "COUNTER" {
		t.Errorf("app_orders_total is not served as a counter: %v", f)
	}
	h := ms.series("app_order_value", nil)
	if len(h) != 1 || h[0].GetHistogram() == nil {
		t.Fatalf("app_order_value: %d series %v, want one histogram", len(h), h)
	}
	if got := h[0].GetHistogram().GetSampleCount(); got != uint64(n) {
		t.Errorf("app_order_value count = %d, want %d", got, n)
	}
	if got := h[0].GetHistogram().GetSampleSum(); math.Abs(got-sum) > 1e-9 {
		t.Errorf("app_order_value sum = %v, want %v", got, sum)
	}
	for _, b := range multiprocBuckets {
		if got := ms.bucket("app_order_value", nil, b); got != buckets[b] {
			t.Errorf("app_order_value bucket le=%g = %d, want %d", b, got, buckets[b])
		}
	}
}

// inflight is the app's livesum gauge on one scrape; it fails if the gauge is not one series
// without a pid label (livesum drops it).
func inflight(t *testing.T, ms metrics) float64 {
	t.Helper()
	s := ms.series("app_inflight", nil)
	if len(s) != 1 || s[0].GetGauge() == nil {
		t.Fatalf("app_inflight: %d series %v, want one gauge", len(s), s)
	}
	if label(s[0], "pid") != "" {
		t.Errorf("app_inflight has a pid label: livesum drops it")
	}
	return value(s[0])
}

// pythonMerge runs prometheus_client's own MultiProcessCollector over dir and returns its
// samples, keyed by name and labels, for comparison.
func pythonMerge(t *testing.T, dir string) map[string]float64 {
	t.Helper()
	const script = `
import json, sys
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
r = CollectorRegistry()
MultiProcessCollector(r, path=sys.argv[1])
print(json.dumps([[s.name, s.labels, s.value] for m in r.collect() for s in m.samples]))
`
	// Gunicorn's interpreter, the one that has Debian's prometheus_client.
	out, err := exec.Command("/usr/bin/python3", "-c", script, dir).Output()
	need(t, "python3-prometheus-client (make deps)", err)
	var raw [][3]json.RawMessage
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatalf("MultiProcessCollector output: %v\n%s", err, out)
	}
	res := make(map[string]float64)
	for _, r := range raw {
		var name string
		var labels map[string]string
		var v float64
		if json.Unmarshal(r[0], &name) != nil || json.Unmarshal(r[1], &labels) != nil || json.Unmarshal(r[2], &v) != nil {
			t.Fatalf("MultiProcessCollector sample %s", r)
		}
		res[name+fmt.Sprint(labels)] = v
	}
	return res
}

// checkAgainstPython: the counter and histogram gpe-ebpf serves are exactly what
// MultiProcessCollector computes from the same files, dead workers included.
func checkAgainstPython(t *testing.T, ms metrics, py map[string]float64, orders []order) {
	t.Helper()
	for _, o := range orders {
		k := "app_orders_total" + fmt.Sprint(map[string]string{"kind": o.kind})
		if got := ms.sum("app_orders_total", map[string]string{"kind": o.kind}); got != py[k] {
			t.Errorf("app_orders_total{kind=%q}: gpe-ebpf %v, MultiProcessCollector %v", o.kind, got, py[k])
		}
	}
	h := ms.series("app_order_value", nil)[0].GetHistogram()
	if k := "app_order_value_count" + fmt.Sprint(map[string]string{}); float64(h.GetSampleCount()) != py[k] {
		t.Errorf("app_order_value count: gpe-ebpf %d, MultiProcessCollector %v", h.GetSampleCount(), py[k])
	}
	if k := "app_order_value_sum" + fmt.Sprint(map[string]string{}); math.Abs(h.GetSampleSum()-py[k]) > 1e-9 {
		t.Errorf("app_order_value sum: gpe-ebpf %v, MultiProcessCollector %v", h.GetSampleSum(), py[k])
	}
	for _, b := range multiprocBuckets {
		k := "app_order_value_bucket" + fmt.Sprint(map[string]string{"le": strconv.FormatFloat(b, 'f', 1, 64)})
		if got := ms.bucket("app_order_value", nil, b); float64(got) != py[k] {
			t.Errorf("app_order_value bucket le=%g: gpe-ebpf %d, MultiProcessCollector %v", b, got, py[k])
		}
	}
}

// TestMultiprocCustomMetrics: the app's own metrics with --multiproc-dir, next to the
// gunicorn_* metrics, then kill -9 of a worker.
func TestMultiprocCustomMetrics(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	g := startCustomMetricsGunicorn(t, dir)
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--multiproc-dir", dir)

	n := sendOrders(t, g, multiprocOrders)
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, float64(n))
	ms := p.quiet(t) // nothing more may arrive
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != float64(n) {
		t.Errorf("gunicorn_worker_requests_total settled at %v, want %d", got, n)
	}
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/order/book", "status": "200"}); got != float64(multiprocOrders[0].n) {
		t.Errorf("gunicorn_http_requests_total{/order/book,200} = %v, want %d", got, multiprocOrders[0].n)
	}
	// Both workers served, so the app's totals are sums over two processes' files.
	perWorker := ms.series("gunicorn_worker_requests_total", nil)
	served := 0
	for _, m := range perWorker {
		t.Logf("%s served %v", label(m, "worker_id"), value(m))
		if value(m) > 0 {
			served++
		}
	}
	// Which worker accepts is the kernel's choice; when one took everything, the merge across
	// processes is still checked below, after the kill (the dead worker's files plus the
	// replacement's).
	t.Logf("%d of 2 workers served the orders", served)
	checkOrders(t, ms, multiprocOrders)
	if got := inflight(t, ms); got != 0 {
		t.Errorf("app_inflight at rest = %v, want 0", got)
	}
	// The collector is registered, so its error counter is always served, and the files
	// Python wrote must all be readable.
	if f := ms["gpe_ebpf_multiproc_errors_total"]; f == nil {
		t.Errorf("gpe_ebpf_multiproc_errors_total missing: the multiprocess collector is not registered")
	} else if got := ms.sum("gpe_ebpf_multiproc_errors_total", nil); got != 0 {
		t.Errorf("gpe_ebpf_multiproc_errors_total = %v, want 0", got)
	}
	checkAgainstPython(t, ms, pythonMerge(t, dir), multiprocOrders)

	// Both workers hold a request: the livesum gauge is the sum over the two processes.
	const hold = 6 * time.Second
	var wg sync.WaitGroup
	holdStatus := make([]int, 2)
	for i := range holdStatus {
		wg.Add(1)
		go func() {
			defer wg.Done()
			holdStatus[i], _ = fetchStatus(fmt.Sprintf("%s/hold/%g", g.URL(), hold.Seconds()), 20*time.Second)
		}()
	}
	t.Cleanup(wg.Wait)
	var last float64
	waitFor(t, 5*time.Second, "app_inflight to be 2 (both workers holding)", func() bool {
		last = inflight(t, p.scrape(t))
		return last == 2
	})

	// kill -9 one of them. No child_exit hook calls mark_process_dead: the dead worker's
	// gauge file stays, and only gpe-ebpf's view of the worker's exit drops it.
	victim, victimID := victimOf(t, g, ms)
	start := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "gpe-ebpf to see the killed worker exit", func() bool {
		ms = p.scrape(t)
		return len(ms.series("gunicorn_worker_state", map[string]string{"worker_id": victimID, "state": "exited"})) == 1
	})
	if time.Since(start) >= hold-time.Second {
		t.Fatalf("the kill took %v to be seen, too close to the end of the surviving hold", time.Since(start))
	}
	if got := inflight(t, ms); got != 1 {
		t.Errorf("app_inflight once the worker is seen exited = %v, want 1 (the survivor's hold only)", got)
	}
	if _, err := os.Stat(filepath.Join(dir, fmt.Sprintf("gauge_livesum_%d.db", victim))); err != nil {
		t.Errorf("the killed worker's gauge file should still be there (nothing deletes it): %v", err)
	}
	// Counters and histograms keep the dead worker's share, as MultiProcessCollector does.
	checkOrders(t, ms, multiprocOrders)
	py := pythonMerge(t, dir)
	checkAgainstPython(t, ms, py, multiprocOrders)
	// Without mark_process_dead, Python's own collector would still count the dead worker.
	t.Logf("app_inflight after kill -9: gpe-ebpf %v, MultiProcessCollector without mark_process_dead %v",
		inflight(t, ms), py["app_inflight"+fmt.Sprint(map[string]string{})])

	// The master replaces the worker; the survivor finishes its hold, and the gauge is back
	// to 0 with the replacement (whose file starts at 0) counted.
	waitFor(t, 10*time.Second, "the master to replace the killed worker", func() bool { return len(g.Workers()) == 2 })
	wg.Wait()
	if holdStatus[0] != 200 && holdStatus[1] != 200 {
		t.Errorf("hold statuses %v: the surviving worker's hold should answer 200", holdStatus)
	}
	p.waitMetric(t, "app_inflight", nil, 0)
	// The killed hold never answered; the surviving one did. (The app's gauge is read from its
	// files at scrape time; the kernel's records arrive in batches up to 100 ms later.) The
	// killed worker's own series are gone once two scrapes showed it exited, so the total is
	// gunicorn_http_requests_total's, which has no worker_id.
	p.waitMetric(t, "gunicorn_http_requests_total", nil, float64(n+1))
	ms = p.quiet(t)
	if got := ms.sum("gunicorn_http_requests_total", nil); got != float64(n+1) {
		t.Errorf("gunicorn_http_requests_total settled at %v, want %d (the orders and the surviving hold)", got, n+1)
	}
	checkOrders(t, ms, multiprocOrders)
	if got := ms.sum("gpe_ebpf_multiproc_errors_total", nil); got != 0 {
		t.Errorf("gpe_ebpf_multiproc_errors_total = %v, want 0", got)
	}

	// New orders go to the survivor and the replacement, and add to the dead worker's.
	more := []order{{"book", 3, 4}}
	sendOrders(t, g, more)
	ms = p.waitMetric(t, "app_orders_total", map[string]string{"kind": "book"}, float64(multiprocOrders[0].n+more[0].n))
	if got := ms.sum("app_orders_total", nil); got != float64(n+more[0].n) {
		t.Errorf("app_orders_total after more orders = %v, want %d", got, n+more[0].n)
	}
}

// TestMultiprocEnvironment: PROMETHEUS_MULTIPROC_DIR in gpe-ebpf's environment, with no
// --multiproc-dir flag, turns the app's metrics on the same way (the application and gpe-ebpf
// can share one environment file).
func TestMultiprocEnvironment(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	g := startCustomMetricsGunicorn(t, dir)
	t.Setenv("PROMETHEUS_MULTIPROC_DIR", dir) // inherited by gpe-ebpf
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))

	orders := []order{{"book", 3, 5}, {"pen", 20, 3}}
	n := sendOrders(t, g, orders)
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, float64(n))
	checkOrders(t, ms, orders)
	if got := inflight(t, ms); got != 0 {
		t.Errorf("app_inflight = %v, want 0", got)
	}
	if got := ms.sum("gpe_ebpf_multiproc_errors_total", nil); got != 0 || ms["gpe_ebpf_multiproc_errors_total"] == nil {
		t.Errorf("gpe_ebpf_multiproc_errors_total = %v (present: %v), want 0 and present", got, ms["gpe_ebpf_multiproc_errors_total"] != nil)
	}

	// A process outside the Gunicorn tree writing to the same directory (a cron job, a
	// sidecar) counts in the livesum gauge while it runs, and no longer once it is gone.
	const script = `
import sys, time
from prometheus_client import Gauge
Gauge("app_inflight", "Requests being served.", multiprocess_mode="livesum").set(5)
print("ready", flush=True)
time.sleep(60)
`
	other := exec.Command("/usr/bin/python3", "-c", script)
	other.Env = append(os.Environ(), "PROMETHEUS_MULTIPROC_DIR="+dir)
	stdout, err := other.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := other.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { other.Process.Kill(); other.Wait() }()
	buf := make([]byte, 6)
	if _, err := io.ReadFull(stdout, buf); err != nil || string(buf) != "ready\n" {
		t.Fatalf("the other process did not start: %q %v", buf, err)
	}
	p.waitMetric(t, "app_inflight", nil, 5)
	other.Process.Kill()
	other.Wait()
	p.waitMetric(t, "app_inflight", nil, 0)
}

// TestMultiprocOff: without the flag or the variable, gpe-ebpf serves none of the app's
// metrics (and no multiproc error counter), even though the files are there.
func TestMultiprocOff(t *testing.T) {
	requireE2E(t)
	dir := t.TempDir()
	g := startCustomMetricsGunicorn(t, dir)
	t.Setenv("PROMETHEUS_MULTIPROC_DIR", "")
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	n := sendOrders(t, g, []order{{"book", 3, 3}})
	ms := p.waitMetric(t, "gunicorn_worker_requests_total", nil, float64(n))
	for _, name := range []string{"app_orders_total", "app_order_value", "app_inflight", "gpe_ebpf_multiproc_errors_total"} {
		if ms[name] != nil {
			t.Errorf("%s served without --multiproc-dir", name)
		}
	}
}
