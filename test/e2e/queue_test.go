package e2e

import (
	"fmt"
	"io"
	"math"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"
)

// TestRequestQueue is issue 15's queue test: one sync worker, 8 clients each sending one
// 200 ms request at once. The worker serves them one after the other, so they waited in the
// accept queue 0, 0.2, …, 1.4 s: 8 waits summing to 5.6 s.
func TestRequestQueue(t *testing.T) {
	requireE2E(t)
	g := startGunicorn(t, gunicornOpts{Workers: 1, Args: []string{"--backlog", "64"}})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID))
	// The listening ports reach the kernel at attach: the queue waits are timed from then on.
	p.waitLog(t, `msg="listening ports timed in the accept queue"`, fmt.Sprintf("ports=[%d]", g.Port))

	const clients = 8
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", g.Addr, 5*time.Second)
			if err != nil {
				t.Errorf("dial: %v", err)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			if _, err := io.WriteString(c, "GET /sleep/200 HTTP/1.0\r\n\r\n"); err != nil {
				t.Errorf("write: %v", err)
				return
			}
			io.Copy(io.Discard, c)
		}()
	}
	wg.Wait()
	// Counted at its status line, a request was started (and its wait observed) before: once
	// all 8 are counted, the histogram is complete. (Waiting on the histogram instead can catch
	// a scrape between the last START and its status line, read in the same drain of the ring.)
	ms := p.settle(t, "gunicorn_worker_requests_total", nil, clients)
	f := ms["gunicorn_request_queue_seconds"]
	if f == nil || len(f.GetMetric()) != 1 {
		t.Fatalf("gunicorn_request_queue_seconds: want one series, got %v", f)
	}
	h := f.GetMetric()[0].GetHistogram()
	if h.GetSampleCount() != clients {
		t.Errorf("queue histogram count %d, want %d", h.GetSampleCount(), clients)
	}
	const want = 0.2 * (0 + 1 + 2 + 3 + 4 + 5 + 6 + 7) // 5.6 s
	if sum := h.GetSampleSum(); math.Abs(sum-want) > 0.25*want {
		t.Errorf("queue histogram sum %.3fs, want %.1fs ± 25%%", sum, want)
	} else {
		t.Logf("queue histogram: %d waits, %.3fs in all (ideal %.1fs)", h.GetSampleCount(), sum, want)
	}
	if got := ms.sum("gunicorn_worker_requests_total", nil); got != clients {
		t.Errorf("requests counted %v, want %d", got, clients)
	}
}
