package aggregate

import (
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// serve is what the exporter does for one scrape: a snapshot, then Served with its mark.
func serve(a *Aggregator) Snapshot {
	s := a.Snapshot(0)
	a.Served(s.ExitMark)
	return s
}

// TestExitedDroppedAfterTwoServings: an exited worker's series are in the two expositions
// after its exit, with its exited state and final counters, and gone from the third; a live
// worker and the per-master counters stay.
func TestExitedDroppedAfterTwoServings(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(sec, 101, masterPID), evFork(sec, 102, masterPID),
		evReq(3*sec, 101, 5, 1, "GET /a", 2*sec, 3*sec, 10, 10, 200, events.EndClose))
	for i := 0; i < 3; i++ {
		serve(a) // served while running: does not count
	}
	feed(a, evExit(4*sec, 101, 0), evFork(4*sec, 103, masterPID))
	for i, want := range []bool{true, true, false, false} {
		s := serve(a)
		wantEq(t, "exited worker in exposition "+string(rune('1'+i)), hasWorker(s, 101), want)
		if want {
			ws := workerOf(t, s, 101)
			wantEq(t, "state", ws.State, StateExited)
			wantEq(t, "final requests", ws.Requests, uint64(1))
		}
		wantEq(t, "live worker", hasWorker(s, 102), true)
		wantEq(t, "replacement", hasWorker(s, 103), true)
		m := masterOf(t, s, masterPID)
		wantEq(t, "http requests keep every request", httpTotal(m), uint64(1))
		wantEq(t, "exits", m.Exits[ExitGraceful], uint64(1))
	}
}

// TestServedOnlyCountsExpositionsShowingTheExit: a snapshot taken before the exit, served
// after it, did not show the worker exited, so it does not count.
func TestServedOnlyCountsExpositionsShowingTheExit(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(sec, 101, masterPID))
	before := a.Snapshot(0) // a scrape in progress when the worker exits
	feed(a, evExit(2*sec, 101, 0))
	a.Served(before.ExitMark)
	s1 := serve(a)
	wantEq(t, "after a stale serving and one real one", hasWorker(s1, 101), true)
	wantEq(t, "state", workerOf(t, s1, 101).State, StateExited)
	wantEq(t, "still there for the second", hasWorker(serve(a), 101), true)
	wantEq(t, "gone after two", hasWorker(a.Snapshot(0), 101), false)
}

// TestServedWaitsForRedis: while forwarding, an exited worker also waits for a forward that
// showed it to reach Redis; a forward that failed (written never called) does not count.
func TestServedWaitsForRedis(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	feed(a, evFork(sec, 101, masterPID), evFork(sec, 102, masterPID))
	a.BeginForward()() // a forward before the exits: forwarding is on, nothing to mark
	feed(a, evExit(2*sec, 101, 0))
	for i := 0; i < 5; i++ {
		serve(a)
	}
	wantEq(t, "kept until forwarded", hasWorker(a.Snapshot(0), 101), true)

	_ = a.BeginForward() // gathered, never written (Redis down)
	serve(a)
	wantEq(t, "a failed forward does not count", hasWorker(a.Snapshot(0), 101), true)

	written := a.BeginForward()
	feed(a, evExit(3*sec, 102, 0)) // exits after the gathering began: not in that exposition
	serve(a)                       // the forward's own gathering
	written()
	s := a.Snapshot(0)
	wantEq(t, "gone once forwarded", hasWorker(s, 101), false)
	wantEq(t, "a later exit waits for its own forward", hasWorker(s, 102), true)
	serve(a)
	serve(a)
	wantEq(t, "served twice, not forwarded", hasWorker(a.Snapshot(0), 102), true)
	a.BeginForward()()
	wantEq(t, "served twice and forwarded", hasWorker(a.Snapshot(0), 102), false)
}

// TestServedToDropZeroKeepsUntilStale: ServedToDrop 0 leaves only --stale-after.
func TestServedToDropZeroKeepsUntilStale(t *testing.T) {
	a, clk := newTestAggregator(t, func(c *Config) { c.ServedToDrop = 0; c.StaleAfter = 10 * time.Second })
	feed(a, evFork(sec, 101, masterPID), evExit(2*sec, 101, 0))
	for i := 0; i < 5; i++ {
		serve(a)
	}
	wantEq(t, "kept after many servings", hasWorker(a.Snapshot(0), 101), true)
	clk.now = clk.now.Add(10 * time.Second)
	a.Expire()
	wantEq(t, "gone after stale-after", hasWorker(a.Snapshot(0), 101), false)
}

// TestStaleAfterWithoutServing: nobody scrapes: --stale-after still drops the series.
func TestStaleAfterWithoutServing(t *testing.T) {
	a, clk := newTestAggregator(t, func(c *Config) { c.StaleAfter = 10 * time.Second })
	feed(a, evFork(sec, 101, masterPID), evExit(2*sec, 101, 0))
	serve(a)
	clk.now = clk.now.Add(9 * time.Second)
	a.Expire()
	wantEq(t, "served once, before stale-after", hasWorker(a.Snapshot(0), 101), true)
	clk.now = clk.now.Add(time.Second)
	a.Expire()
	wantEq(t, "served once, at stale-after", hasWorker(a.Snapshot(0), 101), false)
}

// TestChurnBounded: workers restarting every few requests (max_requests) leave, scrape after
// scrape, the live workers and those that exited since the scrape before last.
func TestChurnBounded(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	const live = 4
	next := uint32(101)
	pids := make([]uint32, 0, live)
	for i := 0; i < live; i++ {
		feed(a, evFork(sec, next, masterPID))
		pids = append(pids, next)
		next++
	}
	ts := 2 * sec
	var exitsPerScrape []int
	requests := uint64(0)
	for scrape := 0; scrape < 50; scrape++ {
		exits := scrape % 5 // 0..4 workers replaced between scrapes
		for e := 0; e < exits; e++ {
			old := pids[e]
			ts += ms
			feed(a, evReq(ts+ms, old, 5, 1, "GET /a", ts, ts+ms, 10, 10, 200, events.EndClose),
				evExit(ts+2*ms, old, 0), evFork(ts+2*ms, next, masterPID))
			requests++
			pids[e] = next
			next++
		}
		exitsPerScrape = append(exitsPerScrape, exits)
		s := serve(a)
		m := masterOf(t, s, masterPID)
		exited := 0
		for _, w := range m.Workers {
			if w.State == StateExited {
				exited++
			}
		}
		bound := exits
		if scrape > 0 {
			bound += exitsPerScrape[scrape-1]
		}
		if exited != bound {
			t.Errorf("scrape %d: %d exited workers in the exposition, want %d (exits since the scrape before last)", scrape, exited, bound)
		}
		wantEq(t, "live workers", m.LiveWorkers, live)
		wantEq(t, "http requests", httpTotal(m), requests)
	}
}
