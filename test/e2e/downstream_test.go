package e2e

import (
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The downstream series: the calls of a request's thread on the worker's own client connections
// (a send, then the receives before the next send on that connection), and their time.
const (
	downstreamCalls   = "gunicorn_http_downstream_calls_total"
	downstreamSeconds = "gunicorn_http_downstream_seconds_total"
)

// downstreamCase is one endpoint of test/app and the downstream calls a request to it makes.
type downstreamCase struct {
	path, body string // the request, and the body it answers
	endpoint   string // its endpoint label
	peer       string // the peer of its calls ("" when it makes none)
	calls      int    // calls a request
}

// startDownstreams starts a real redis-server and a real PostgreSQL on loopback, and returns the
// environment that points test/app at them and the endpoints that use them, with /sleep/50,
// which makes no call.
func startDownstreams(t *testing.T) ([]string, []downstreamCase) {
	t.Helper()
	rs := startRedisServer(t)
	pg := startPostgres(t)
	redisPeer := "127.0.0.1:" + strconv.Itoa(rs.port)
	pgPeer := "127.0.0.1:" + strconv.Itoa(pg.port)
	env := []string{"GPE_TEST_REDIS=" + redisPeer, "GPE_TEST_PG=" + pg.dsn(false), "GPE_TEST_PG_UNIX=" + pg.dsn(true)}
	return env, []downstreamCase{
		{"/redis/10", "redis 10\n", "/redis/{id}", redisPeer, 10},
		{"/redispipe/5", "redispipe 5\n", "/redispipe/{id}", redisPeer, 1},
		{"/sql/3", "sql 3\n", "/sql/{id}", pgPeer, 3},
		{"/sqlunix/3", "sqlunix 3\n", "/sqlunix/{id}", "unix:" + pg.socketPath(), 3},
		{"/sleep/50", "slept", "/sleep/{id}", "", 0},
	}
}

// serveDownstream sends n requests to each case's path, one at a time, and checks each answer.
func serveDownstream(t *testing.T, g *gunicorn, cases []downstreamCase, n int) {
	t.Helper()
	cl := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	for i := 0; i < n; i++ {
		for _, c := range cases {
			code, body, err := fetch(cl, g.URL()+c.path, "", "")
			if err != nil || code != 200 || string(body) != c.body {
				t.Fatalf("GET %s: %d %q %v, want 200 %q", c.path, code, body, err, c.body)
			}
		}
	}
}

// downstreamSeries lists every downstream series of a scrape, one a line, for failure messages.
func downstreamSeries(ms metrics) string {
	var lines []string
	for _, name := range []string{downstreamCalls, downstreamSeconds} {
		for _, m := range ms.series(name, nil) {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			lines = append(lines, fmt.Sprintf("%s{%s} %v", name, strings.Join(ls, ","), value(m)))
		}
	}
	sort.Strings(lines)
	if len(lines) == 0 {
		return "(no downstream series)"
	}
	return strings.Join(lines, "\n")
}

// durationSum is the summed request duration of an endpoint.
func durationSum(ms metrics, endpoint string) float64 {
	var s float64
	for _, m := range ms.series("gunicorn_http_request_duration_seconds", map[string]string{"endpoint": endpoint}) {
		s += m.GetHistogram().GetSampleSum()
	}
	return s
}

// TestDownstream: with a real Redis and a real PostgreSQL, on sync and gthread workers, each
// request's calls are counted exactly per endpoint and peer: 10 Redis GETs are 10 calls, one
// pipeline of 5 GETs is one, 3 SELECTs are 3 over TCP and over the server's Unix socket (peer
// unix:<its path>), and a request that only sleeps makes none. Their time is above 0 and below
// the endpoint's request duration.
func TestDownstream(t *testing.T) {
	requireE2E(t)
	env, cases := startDownstreams(t)
	for _, tc := range []struct {
		class string
		args  []string
	}{{"sync", nil}, {"gthread", []string{"--threads", "4"}}} {
		t.Run(tc.class, func(t *testing.T) {
			g := startGunicorn(t, gunicornOpts{WorkerClass: tc.class, Args: tc.args, Env: env})
			p := startGPE(t, "--pid", strconv.Itoa(g.PID))
			const n = 20
			serveDownstream(t, g, cases, n)
			p.waitMetric(t, "gunicorn_http_requests_total", nil, float64(n*len(cases)))
			exact := func(ms metrics) bool {
				for _, c := range cases {
					if c.calls > 0 && ms.sum(downstreamCalls, map[string]string{"endpoint": c.endpoint, "peer": c.peer}) != float64(c.calls*n) {
						return false
					}
				}
				return true
			}
			// Up to 15 s for the counts, then until nothing more arrives: a count that overshoots
			// later is caught too.
			p.scrapeUntil(t, 15*time.Second, exact)
			ms := p.quiet(t)
			for _, c := range cases {
				own := map[string]string{"endpoint": c.endpoint}
				calls, secs := ms.series(downstreamCalls, own), ms.series(downstreamSeconds, own)
				if c.calls == 0 {
					if len(calls)+len(secs) != 0 {
						t.Errorf("%s makes no downstream call, but has downstream series", c.path)
					}
					continue
				}
				if len(calls) != 1 || label(calls[0], "peer") != c.peer || value(calls[0]) != float64(c.calls*n) {
					t.Errorf("%s: %d requests of %d calls each to %s: want one series %s{endpoint=%q,peer=%q} %d",
						c.path, n, c.calls, c.peer, downstreamCalls, c.endpoint, c.peer, c.calls*n)
					continue
				}
				dur := durationSum(ms, c.endpoint)
				if len(secs) != 1 || label(secs[0], "peer") != c.peer || value(secs[0]) <= 0 || value(secs[0]) >= dur {
					t.Errorf("%s: want one series %s{endpoint=%q,peer=%q} above 0 and below the endpoint's summed duration %v s",
						c.path, downstreamSeconds, c.endpoint, c.peer, dur)
					continue
				}
				t.Logf("%s: %v calls to %s, %.2f ms of downstream time a request of %.2f ms",
					c.path, value(calls[0]), c.peer, value(secs[0])/n*1e3, dur/n*1e3)
			}
			if t.Failed() {
				t.Logf("every downstream series of the last scrape:\n%s", downstreamSeries(ms))
			}
		})
	}
}

// TestDownstreamOff: with --downstream=false the same requests make no downstream series, and
// every request is still counted.
func TestDownstreamOff(t *testing.T) {
	requireE2E(t)
	env, cases := startDownstreams(t)
	g := startGunicorn(t, gunicornOpts{Env: env})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--downstream=false")
	const n = 10
	serveDownstream(t, g, cases, n)
	p.waitMetric(t, "gunicorn_http_requests_total", nil, float64(n*len(cases)))
	ms := p.quiet(t)
	for _, c := range cases {
		if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": c.endpoint}); got != n {
			t.Errorf("%s: %v requests counted, want %d", c.endpoint, got, n)
		}
	}
	if len(ms.series(downstreamCalls, nil))+len(ms.series(downstreamSeconds, nil)) != 0 {
		t.Errorf("--downstream=false, but downstream series:\n%s", downstreamSeries(ms))
	}
}
