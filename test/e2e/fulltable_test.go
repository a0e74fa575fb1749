package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// A connection table smaller than the connections a worker holds (--max-connections 64: 16
// slots and 48 entries): requests already in flight are never pushed out by the connections
// that come after them, and every request the table has no room for is counted as dropped,
// so that counted + dropped is every request the client made, and nothing stays in flight.
func TestFullConnectionTable(t *testing.T) {
	requireE2E(t)
	const maxConns, long, idle = 64, 10, 100
	g := startGunicorn(t, gunicornOpts{WorkerClass: "gevent", Workers: 1, Args: []string{"--keep-alive", "120"}})
	p := startGPE(t, "--pid", fmt.Sprint(g.PID), "--max-connections", fmt.Sprint(maxConns))

	// Long requests first, while the table is empty: each is tracked, in flight.
	done := make(chan error, long)
	for i := 0; i < long; i++ {
		go func() {
			resp, err := http.Get(g.URL() + "/sleep/4000")
			if err == nil {
				resp.Body.Close()
			}
			done <- err
		}()
	}
	p.waitMetric(t, "gunicorn_worker_requests_in_flight", nil, long)

	// Then more keep-alive connections than the table holds, each with one answered request,
	// left open: they fill it, and the ones without room are dropped.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < idle; i++ {
		c, err := g.dial()
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.Write([]byte("GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
		resp.Body.Close()
	}
	ms := p.scrape(t)
	if d := ms.sum("gpe_ebpf_connections_dropped_total", map[string]string{"reason": "table_full"}); d < idle+long-maxConns {
		t.Fatalf("dropped %v with %d connections in a table of %d, want at least %d", d, idle+long, maxConns, idle+long-maxConns)
	}
	// The long requests are still in flight: none was evicted.
	if n := ms.sum("gunicorn_worker_requests_in_flight", nil); n != long {
		t.Fatalf("in flight %v after the table filled, want %d", n, long)
	}
	for i := 0; i < long; i++ {
		if err := <-done; err != nil {
			t.Fatalf("long request: %v", err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil

	// Every request is counted, or dropped and counted as such; none is left in flight.
	ms = p.waitScrape(t, 15*time.Second, "counted + dropped to reach every request", func(ms metrics) bool {
		return ms.sum("gunicorn_worker_requests_total", nil)+ms.sum("gpe_ebpf_connections_dropped_total", nil) == idle+long
	})
	if n := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/sleep/{id}"}); n != long {
		t.Errorf("long requests counted %v, want %d (in flight when the table filled)", n, long)
	}
	if n := ms.sum("gunicorn_worker_requests_in_flight", nil); n != 0 {
		t.Errorf("in flight %v with every connection closed, want 0", n)
	}
	busy := ms.sum("gunicorn_worker_busy_seconds_total", nil)
	time.Sleep(time.Second) // busy time must not grow with nothing in flight
	if again := p.scrape(t).sum("gunicorn_worker_busy_seconds_total", nil); again != busy {
		t.Errorf("busy time grew from %v to %v with nothing in flight", busy, again)
	}
	if got := len(g.Access(t)); got != idle+long {
		t.Errorf("access log has %d requests, want %d", got, idle+long)
	}
}
