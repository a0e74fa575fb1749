package e2e

import (
	"strconv"
	"testing"
)

// TestIgnoreRoutes: requests to --ignore-route templates (a health check, a probe path with a
// {name} segment) are counted only in gpe_ebpf_ignored_requests_total: not in the request
// counters, the failures or the duration histograms.
func TestIgnoreRoutes(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--ignore-route", "/healthz", "--ignore-route", "/status/{code}")
	for i := 0; i < 5; i++ {
		get(t, g.URL()+"/healthz") // the app answers 404: still a request, and ignored
	}
	get(t, g.URL()+"/status/204")
	get(t, g.URL()+"/status/503") // a 5xx, ignored: no failure either
	for i := 0; i < 3; i++ {
		get(t, g.URL()+"/ok")
	}
	get(t, g.URL()+"/status/204/x") // not the template: counted
	p.waitMetric(t, "gpe_ebpf_ignored_requests_total", map[string]string{"route": "/healthz"}, 5)
	p.waitMetric(t, "gpe_ebpf_ignored_requests_total", map[string]string{"route": "/status/{code}"}, 2)
	// Histograms are filled at the request's end (the connection's close): wait for those too.
	ms := p.waitMetric(t, "gunicorn_http_request_duration_seconds", nil, 4)
	for _, c := range []struct {
		name string
		want float64
	}{
		{"gunicorn_http_requests_total", 4},
		{"gunicorn_worker_requests_total", 4},
		{"gunicorn_worker_request_duration_seconds", 4},
		{"gunicorn_worker_request_size_bytes", 4},
		{"gunicorn_worker_failed_requests_total", 0},
		{"gunicorn_worker_error_handling_total", 0},
	} {
		if got := ms.sum(c.name, nil); got != c.want {
			t.Errorf("%s = %v, want %v", c.name, got, c.want)
		}
	}
	for _, name := range []string{"gunicorn_http_requests_total", "gunicorn_http_request_duration_seconds"} {
		for _, m := range ms.series(name, nil) {
			if e := label(m, "endpoint"); e == "/healthz" || e == "/status/{code}" || e == "/status/{id}" {
				t.Errorf("%s has a series for the ignored endpoint %s", name, e)
			}
		}
	}
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}); got != 3 {
		t.Errorf("gunicorn_http_requests_total{/ok,200} = %v, want 3", got)
	}
}
