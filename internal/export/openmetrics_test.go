package export

import (
	"compress/gzip"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestOpenMetricsNegotiation: a scraper asking for OpenMetrics (as Prometheus does) gets it,
// ending in # EOF, with _created where the series' start is known (the workers', gpe-ebpf's own)
// and none where it is not (the master's); gzip still applies; anyone else gets the classic
// text format.
func TestOpenMetricsNegotiation(t *testing.T) {
	before := time.Now()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(CollectorConfig{Version: "test"}, scenario(t), func() (uint64, error) { return 0, nil }, func() uint64 { return 0 }))
	after := time.Now()
	h := Handler(DefaultServerConfig(), reg, nil, slog.New(slog.DiscardHandler))
	get := func(accept, enc string) (string, string) {
		t.Helper()
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept", accept)
		req.Header.Set("Accept-Encoding", enc)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		resp := rec.Result()
		var body io.Reader = resp.Body
		if resp.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			body = zr
		} else if enc == "gzip" {
			t.Fatalf("Accept-Encoding gzip answered with Content-Encoding %q", resp.Header.Get("Content-Encoding"))
		}
		b, err := io.ReadAll(body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Get("Content-Type"), string(b)
	}
	// What Prometheus 2.42 sends.
	const promAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	ctype, om := get(promAccept, "identity")
	if !strings.HasPrefix(ctype, "application/openmetrics-text; version=1.0.0") {
		t.Errorf("Content-Type %q, want application/openmetrics-text; version=1.0.0", ctype)
	}
	if !strings.HasSuffix(om, "\n# EOF\n") {
		t.Errorf("the OpenMetrics exposition does not end in # EOF:\n...%s", om[max(0, len(om)-200):])
	}
	created := regexp.MustCompile(`(?m)^([a-z_]+)_created(\{[^}]*\})? (\S+)$`)
	seen := map[string]bool{}
	for _, m := range created.FindAllStringSubmatch(om, -1) {
		seen[m[1]] = true
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("%s: %v", m[0], err)
		}
		// The scenario's workers forked before the collector existed: their series began at its start.
		if ct := time.Unix(0, int64(v*1e9)); ct.Before(before.Add(-time.Millisecond)) || ct.After(after.Add(time.Millisecond)) {
			t.Errorf("%s: created %s, want the collector's start (%s..%s)", m[0], ct, before, after)
		}
	}
	for _, want := range []string{"gunicorn_worker_requests", "gunicorn_worker_request_duration_seconds",
		"gunicorn_worker_request_size_bytes", "gunicorn_worker_busy_seconds", "gunicorn_worker_failed_requests",
		"gpe_ebpf_events", "gpe_ebpf_events_lost"} {
		if !seen[want] {
			t.Errorf("no %s_created", want)
		}
	}
	for _, unknown := range []string{"gunicorn_http_requests", "gunicorn_master_worker_restarts", "gunicorn_request_queue_seconds"} {
		if seen[unknown] {
			t.Errorf("%s_created, but the master's start is not known", unknown)
		}
	}
	if !strings.Contains(om, "# TYPE gunicorn_worker_requests counter\n") {
		t.Error("OpenMetrics names a counter's family without _total: # TYPE gunicorn_worker_requests counter missing")
	}

	_, zipped := get(promAccept, "gzip")
	// Same collector, same snapshot content, same start: the same bytes once decompressed.
	if zipped != om {
		t.Errorf("the gzip-compressed OpenMetrics exposition differs from the plain one")
	}

	for _, accept := range []string{"", "text/plain", "*/*"} {
		ctype, text := get(accept, "identity")
		if !strings.HasPrefix(ctype, "text/plain; version=0.0.4") || strings.Contains(text, "# EOF") || strings.Contains(text, "_created") {
			t.Errorf("Accept %q: Content-Type %q, want the classic text format without # EOF or _created", accept, ctype)
		}
	}
}
