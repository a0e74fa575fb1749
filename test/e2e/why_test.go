package e2e

import (
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// hold sends a request on a fresh connection and returns the connection, the request still
// being served; read its answer with answered.
func (g *gunicorn) hold(t *testing.T, path string) net.Conn {
	t.Helper()
	c := g.conn(t)
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path)
	return c
}

// answered reads the whole answer of a held request.
func answered(t *testing.T, c net.Conn) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if b, err := io.ReadAll(c); err != nil || len(b) == 0 {
		t.Fatalf("held request: %d bytes, %v", len(b), err)
	}
}

// TestBusyWorkers: gunicorn_master_workers_busy equals the workers while each serves a
// request, and is 0 again once they are answered.
func TestBusyWorkers(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{Workers: 2})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	if ms := p.waitMetric(t, "gunicorn_master_workers_busy", nil, 0); ms.sum("gunicorn_master_workers", nil) != 2 {
		t.Fatalf("gunicorn_master_workers = %v, want 2", ms.sum("gunicorn_master_workers", nil))
	}
	// A sync worker takes one connection at a time: the second goes to the other worker.
	held := []net.Conn{g.hold(t, "/sleep/4000"), g.hold(t, "/sleep/4000")}
	ms := p.waitScrape(t, 15*time.Second, "both workers busy", func(ms metrics) bool {
		return ms.sum("gunicorn_master_workers_busy", nil) == 2
	})
	if w := ms.sum("gunicorn_master_workers", nil); w != 2 {
		t.Errorf("busy 2 of %v workers, want of 2", w)
	}
	if n := ms.sum("gunicorn_worker_requests_in_flight", nil); n != 2 {
		t.Errorf("busy 2 with %v requests in flight, want 2", n)
	}
	for _, c := range held {
		answered(t, c)
	}
	p.waitMetric(t, "gunicorn_master_workers_busy", nil, 0)
}

// TestBusyGthread: a gthread worker is busy only when all its threads serve a request. The
// threads come from GUNICORN_CMD_ARGS, and make the sync worker the command line names a
// gthread worker, as Gunicorn does.
func TestBusyGthread(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{Workers: 1, WorkerClass: "sync", Env: []string{"GUNICORN_CMD_ARGS=--threads 2"}})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	first := g.hold(t, "/sleep/6000")
	ms := p.waitMetric(t, "gunicorn_worker_requests_in_flight", nil, 1)
	if b := ms.sum("gunicorn_master_workers_busy", nil); b != 0 {
		t.Errorf("one of two threads serving: busy = %v, want 0", b)
	}
	second := g.hold(t, "/sleep/6000")
	ms = p.waitMetric(t, "gunicorn_master_workers_busy", nil, 1)
	if n := ms.sum("gunicorn_worker_requests_in_flight", nil); n != 2 {
		t.Errorf("busy with %v requests in flight, want 2", n)
	}
	answered(t, first)
	answered(t, second)
	p.waitMetric(t, "gunicorn_master_workers_busy", nil, 0)
}

// TestHeartbeatAge: a sync worker held by a long request does not touch its heartbeat, so its
// age grows; once it has answered, the worker touches it again and the age falls. The master's
// timeout is exported from its command line.
func TestHeartbeatAge(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{Workers: 1, Args: []string{"--timeout", "20"}})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	ms := p.waitScrape(t, 15*time.Second, "a heartbeat age", func(ms metrics) bool {
		return len(ms.series("gunicorn_worker_heartbeat_age_seconds", nil)) == 1
	})
	if got := ms.sum("gunicorn_master_timeout_seconds", nil); got != 20 {
		t.Errorf("gunicorn_master_timeout_seconds = %v, want 20 (its --timeout)", got)
	}
	c := g.hold(t, "/sleep/8000")
	age := func(ms metrics) float64 { return ms.sum("gunicorn_worker_heartbeat_age_seconds", nil) }
	inFlight := func(ms metrics) bool { return ms.sum("gunicorn_worker_requests_in_flight", nil) == 1 }
	ms = p.waitScrape(t, 15*time.Second, "the request in flight", inFlight)
	first := age(ms)
	ms = p.waitScrape(t, 15*time.Second, "the heartbeat age to grow while the request is served", func(ms metrics) bool {
		if !inFlight(ms) {
			t.Fatalf("the request ended before the heartbeat age grew past %v (last %v)", first+1, age(ms))
		}
		return age(ms) > first+1
	})
	peak := age(ms)
	answered(t, c)
	ms = p.waitScrape(t, 15*time.Second, "the heartbeat age to fall once the request is answered", func(ms metrics) bool {
		return !inFlight(ms) && age(ms) < peak
	})
	t.Logf("heartbeat age: %.2f s when the request started, %.2f s while served, %.2f s after", first, peak, age(ms))
}

// TestWorkerTimeoutFromFlag: a timeout set by a config file is not known from the master's
// command line, so none is exported, until --worker-timeout says it.
func TestWorkerTimeoutFromFlag(t *testing.T) {
	requireE2E(t)
	conf := filepath.Join(t.TempDir(), "conf.py")
	if err := os.WriteFile(conf, []byte("timeout = 40\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	g := startGunicorn(t, gunicornOpts{Workers: 1, Args: []string{"-c", conf}})
	for _, tt := range []struct {
		args []string
		want int
	}{{nil, 0}, {[]string{"--worker-timeout", "40s"}, 1}} {
		p := startGPE(t, append([]string{"--pid", strconv.Itoa(g.PID)}, tt.args...)...)
		ms := p.waitMetric(t, "gunicorn_master_workers", nil, 1)
		if s := ms.series("gunicorn_master_timeout_seconds", nil); len(s) != tt.want {
			t.Errorf("with %v: %d gunicorn_master_timeout_seconds series, want %d", tt.args, len(s), tt.want)
		}
		if tt.want == 1 && ms.sum("gunicorn_master_timeout_seconds", nil) != 40 {
			t.Errorf("with %v: gunicorn_master_timeout_seconds = %v, want 40", tt.args, ms.sum("gunicorn_master_timeout_seconds", nil))
		}
		p.Stop(t)
	}
}
