package e2e

import (
	"bytes"
	"math"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// promSeries is how many Prometheus series one parsed metric is: a histogram is its buckets
// (+Inf included), _sum and _count.
func promSeries(m *dto.Metric) int {
	if h := m.GetHistogram(); h != nil {
		n := len(h.GetBucket()) + 2
		last := h.GetBucket()
		if len(last) == 0 || !math.IsInf(last[len(last)-1].GetUpperBound(), 1) {
			n++ // the text parser may leave the +Inf bucket implicit
		}
		return n
	}
	return 1
}

// workerView is what one scrape says about the workers.
type workerView struct {
	series    map[string]int  // Prometheus series per worker_id
	exited    map[string]bool // worker_ids shown exited
	live      int             // worker_ids shown running, quitting or aborting
	exits     float64         // sum of gunicorn_worker_exits_total
	http      float64         // sum of gunicorn_http_requests_total
	total     int             // series with a worker_id
	allSeries int
}

func viewOf(ms metrics) workerView {
	v := workerView{series: make(map[string]int), exited: make(map[string]bool)}
	for _, f := range ms {
		for _, m := range f.GetMetric() {
			n := promSeries(m)
			v.allSeries += n
			if id := label(m, "worker_id"); id != "" {
				v.series[id] += n
				v.total += n
			}
		}
	}
	for _, m := range ms.series("gunicorn_worker_state", nil) {
		if label(m, "state") == "exited" {
			v.exited[label(m, "worker_id")] = true
		} else {
			v.live++
		}
	}
	v.exits = ms.sum("gunicorn_worker_exits_total", nil)
	v.http = ms.sum("gunicorn_http_requests_total", nil)
	return v
}

// heyCounts reads the responses and errors out of hey's summary.
func heyCounts(t *testing.T, out string) (responses, errors int) {
	t.Helper()
	for _, m := range regexp.MustCompile(`\[(\d{3})\]\s+(\d+) responses`).FindAllStringSubmatch(out, -1) {
		n, _ := strconv.Atoi(m[2])
		responses += n
	}
	if i := strings.Index(out, "Error distribution:"); i >= 0 {
		for _, m := range regexp.MustCompile(`\[(\d+)\]\s`).FindAllStringSubmatch(out[i:], -1) {
			n, _ := strconv.Atoi(m[1])
			errors += n
		}
	}
	if responses == 0 {
		t.Fatalf("no responses in hey's output:\n%s", out)
	}
	return responses, errors
}

// TestChurn: Gunicorn restarts its workers every 25 requests (--max-requests) under ~10 s of
// load, scraped every second. An exited worker's series are served in two scrapes, with its
// exited state, then go: every scrape holds the live workers and those that exited since the
// scrape before last, not the last --stale-after (60 s) of exits. gunicorn_http_requests_total
// (no worker_id) keeps every request the client completed.
func TestChurn(t *testing.T) {
	requireE2E(t)
	_, err := exec.LookPath("hey")
	need(t, "the churn test drives load with Debian's hey (make deps)", err)
	const workers = 4
	g := startGunicorn(t, gunicornOpts{Workers: workers, Args: []string{"--max-requests", "25"}})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))

	// 2,400 requests at most 8 × 30 per second: about 10 s when Gunicorn keeps up.
	hey := exec.Command("hey", "-n", "2400", "-c", "8", "-q", "30", "-disable-keepalive", "-t", "30", g.URL()+"/ok")
	var heyOut bytes.Buffer
	hey.Stdout, hey.Stderr = &heyOut, &heyOut
	if err := hey.Start(); err != nil {
		t.Fatalf("start hey: %v", err)
	}
	heyDone := make(chan error, 1)
	go func() { heyDone <- hey.Wait() }()

	var views []workerView
	seenExited := make(map[string]int) // scrapes that showed a worker exited
	present := make(map[string]bool)   // in the previous scrape
	vanished := 0
	scrape := func() workerView {
		v := viewOf(p.scrape(t))
		for id := range v.exited {
			seenExited[id]++
		}
		for id := range present {
			if _, ok := v.series[id]; !ok {
				vanished++
				if seenExited[id] < 2 {
					t.Errorf("the series of %s went after %d scrapes showed it exited, want 2", id, seenExited[id])
				}
			}
		}
		present = make(map[string]bool)
		for id := range v.series {
			present[id] = true
		}
		views = append(views, v)
		return v
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var heyErr error
load:
	for {
		select {
		case heyErr = <-heyDone:
			break load
		case <-tick.C:
			scrape()
		}
	}
	if heyErr != nil {
		t.Fatalf("hey: %v\n%s", heyErr, heyOut.String())
	}
	responses, heyErrors := heyCounts(t, heyOut.String())

	// Every record of the load is read within about 100 ms; wait for the counter to settle,
	// scraping once a second as under the load.
	poll(15*time.Second, time.Second, func() bool { return int(scrape().http) == responses })
	// Two more scrapes: the last exits are served twice, then only the live workers are left.
	scrape()
	scrape()
	last := views[len(views)-1]

	maxPer := 0
	for _, v := range views {
		for _, n := range v.series {
			maxPer = max(maxPer, n)
		}
	}
	maxTotal, maxExited := 0, 0
	for n, v := range views {
		maxTotal, maxExited = max(maxTotal, v.total), max(maxExited, len(v.exited))
		if n < 2 {
			continue
		}
		// Exits handled before scrape n-2 were shown by n-2 and n-1, so they are gone by n.
		recent := int(v.exits - views[n-2].exits)
		if len(v.exited) > recent {
			t.Errorf("scrape %d: %d exited workers shown, but only %d exits since the scrape before last", n, len(v.exited), recent)
		}
		if bound := (v.live + recent) * maxPer; v.total > bound {
			t.Errorf("scrape %d: %d series with worker_id, more than (%d live + %d recent exits) × %d per worker = %d",
				n, v.total, v.live, recent, maxPer, bound)
		}
	}
	if len(last.exited) != 0 || last.live != workers {
		t.Errorf("after the load: %d exited and %d live workers shown, want 0 and %d", len(last.exited), last.live, workers)
	}
	restarts := int(last.exits)
	if restarts < 20 || vanished < 20 {
		t.Errorf("only %d worker exits and %d dropped workers: --max-requests 25 did not churn, the bound proves little", restarts, vanished)
	}
	if d := int(last.http) - responses; d < -heyErrors || d > heyErrors {
		t.Errorf("sum(gunicorn_http_requests_total) = %v, hey completed %d requests (%d errors)", last.http, responses, heyErrors)
	}
	lost := p.scrape(t).sum("gpe_ebpf_events_lost_total", nil)
	t.Logf("%d requests (%d errors), %d worker exits, %d scrapes; series with worker_id: at most %d (≤ %d exited workers at once, %d series per worker), %d now; all series now %d; lost events %v",
		responses, heyErrors, restarts, len(views), maxTotal, maxExited, maxPer, last.total, last.allSeries, lost)
	if lost != 0 {
		t.Errorf("%v events lost: the request count cannot be compared", lost)
	}
}
