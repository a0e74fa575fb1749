package e2e

import (
	"strconv"
	"testing"
)

// TestRequestCPU: gunicorn_http_request_cpu_seconds on sync and gthread workers: a request
// that spins 50 ms shows 35-90 ms of CPU, one that sleeps 50 ms under 10 ms; every request is
// measured (served alone on its thread). Under gevent, whose requests share one thread, a
// request is measured only when no other was in flight on that thread: concurrent ones are not.
func TestRequestCPU(t *testing.T) {
	requireE2E(t)
	for _, tc := range []struct {
		class string
		args  []string
	}{{"sync", nil}, {"gthread", []string{"--threads", "4"}}} {
		t.Run(tc.class, func(t *testing.T) {
			g := startGunicorn(t, gunicornOpts{WorkerClass: tc.class, Args: tc.args})
			p := startGPE(t, "--pid", strconv.Itoa(g.PID))
			const n = 5
			for i := 0; i < n; i++ {
				if st := get(t, g.URL()+"/cpu/50"); st != 200 {
					t.Fatalf("GET /cpu/50: %d", st)
				}
				if st := get(t, g.URL()+"/sleep/50"); st != 200 {
					t.Fatalf("GET /sleep/50: %d", st)
				}
			}
			ms := p.waitMetric(t, "gunicorn_http_request_cpu_seconds", nil, 2*n)
			for _, c := range []struct {
				endpoint string
				lo, hi   float64 // mean seconds
			}{{"/cpu/{id}", 0.035, 0.090}, {"/sleep/{id}", 0, 0.010}} {
				s := ms.series("gunicorn_http_request_cpu_seconds", map[string]string{"endpoint": c.endpoint})
				if len(s) != 1 || s[0].Histogram.GetSampleCount() != n {
					t.Fatalf("%s: %d series %v, want one of %d requests", c.endpoint, len(s), s, n)
				}
				mean := s[0].Histogram.GetSampleSum() / n
				if mean < c.lo || mean > c.hi {
					t.Errorf("%s: %.1f ms of CPU a request, want %.0f-%.0f ms", c.endpoint, mean*1e3, c.lo*1e3, c.hi*1e3)
				} else {
					t.Logf("%s: %.1f ms of CPU a request", c.endpoint, mean*1e3)
				}
			}
		})
	}
	t.Run("gevent-concurrent", func(t *testing.T) {
		g := startGunicorn(t, gunicornOpts{WorkerClass: "gevent", Workers: 1})
		p := startGPE(t, "--pid", strconv.Itoa(g.PID))
		const n = 8
		parallel(n, n, func(int) {
			if st := get(t, g.URL()+"/sleep/300"); st != 200 {
				t.Errorf("GET /sleep/300: %d", st)
			}
		})
		ms := p.waitMetric(t, "gunicorn_http_requests_total", map[string]string{"endpoint": "/sleep/{id}"}, n)
		measured := ms.sum("gunicorn_http_request_cpu_seconds", map[string]string{"endpoint": "/sleep/{id}"})
		if measured >= n {
			t.Errorf("%d concurrent requests on gevent's one thread: %v have a CPU time, want fewer (those served together are left out)", n, measured)
		}
		t.Logf("gevent, %d concurrent requests: %v with a CPU time", n, measured)
	})
}
