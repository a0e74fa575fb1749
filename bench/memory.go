package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// memoryPhase runs many workers and many distinct paths through one gpe-ebpf (default hook
// mode) until it has counted o.memReqs requests or the time budget says stop, then reports
// gpe-ebpf's RSS and the series it serves. It leaves the Gunicorn and the observer running
// for the scrape phase and returns the observer and its last exposition.
func (s *session) memoryPhase(ctx context.Context) (*observer, string, error) {
	o := s.o
	reserve := 45 * time.Second // the scrape phase, the 32-worker shutdown and the write-up
	fmt.Printf("\n[memory] %d workers, %d distinct paths, up to %d requests, --max-endpoints %d\n", o.memWorkers, o.paths, o.memReqs, o.maxEndp)
	g, err := s.gunicorn(o.memWorkers)
	if err != nil {
		return nil, "", err
	}
	ob, err := s.observe(g.pid(), "", "--max-endpoints", fmt.Sprint(o.maxEndp))
	if err != nil {
		return nil, "", err
	}
	script := filepath.Join(s.tmp, "paths.lua")
	if err := os.WriteFile(script, []byte(pathsLua(o.paths)), 0o644); err != nil {
		return nil, "", err
	}
	obPID := ob.cmd.Process.Pid
	t0, _ := cpuTicks(obPID)
	var done uint64
	rate := 0.0
	memStart := time.Now()
	for done < uint64(o.memReqs) && ctx.Err() == nil {
		left := time.Until(s.deadline) - reserve
		chunk := 15 * time.Second
		if rate > 0 {
			chunk = time.Duration(float64(uint64(o.memReqs)-done)/rate*float64(time.Second)) + time.Second
		}
		// At least 2 s: the estimate can fall short by a few hundred requests as the rate drifts.
		chunk = min(max(chunk, 2*time.Second), left, 60*time.Second)
		if chunk < 2*time.Second {
			break
		}
		w, err := runWrk(ctx, g.url("/"), 2, 64, chunk, script)
		if err != nil {
			return nil, "", err
		}
		done += w.Requests
		rate = float64(done) / time.Since(memStart).Seconds()
		fmt.Printf("  %7d requests (%.0f req/s, socket errors %d, non-2xx %d)\n", done, w.PerSec, w.SocketErrors, w.Non2xx)
	}
	t1, _ := cpuTicks(obPID)
	time.Sleep(500 * time.Millisecond)
	body, err := scrape(ob.metricsURL())
	if err != nil {
		return nil, "", err
	}
	rss, err := rssBytes(obPID)
	if err != nil {
		return nil, "", err
	}
	series, endpoints := countSeries(body)
	counted := metricSum(body, "gunicorn_worker_requests_total")
	lost := metricSum(body, "gpe_ebpf_events_lost_total")
	memNote := fmt.Sprintf("%d requests", done)
	if done < uint64(o.memReqs) {
		memNote = fmt.Sprintf("SCALED: %d of the %d requests asked for fit in the time budget", done, o.memReqs)
		s.res.note("memory run %s", memNote)
	}
	s.res.Runs = append(s.res.Runs, run{Phase: "memory", Arm: "gpe-ebpf", Wrk: wrkResult{Requests: done},
		Counted: counted, Lost: lost, CPUTicks: t1 - t0, ObserverPID: obPID})
	rssFig := newFigure("gpe-ebpf RSS after the memory run", "MB", []float64{float64(rss) / 1e6}, "≤ 40", atMost(40))
	rssFig.Note = memNote + fmt.Sprintf(" over %d workers", o.memWorkers)
	endFig := newFigure("distinct endpoint values", "count", []float64{float64(endpoints)}, fmt.Sprintf("≤ %d (+other, unknown)", o.maxEndp), atMost(float64(o.maxEndp+2)))
	endFig.Note = fmt.Sprintf("%d series in the exposition (gpe-ebpf's own go_/process_ included)", series)
	s.res.add(rssFig, endFig)
	s.res.note("memory run: counted %.0f, wrk completed %d, lost %.0f, gpe-ebpf CPU %.2f µs/request",
		counted, done, lost, float64(t1-t0)*1e6/clkTck/float64(max(done, 1)))
	fmt.Printf("  RSS %.1f MB, %d series, %d distinct endpoints\n", float64(rss)/1e6, series, endpoints)
	return ob, body, nil
}

// pathsLua makes wrk request /p/page-<letters> over n distinct paths (letters only, so the
// id heuristic keeps them apart until --max-endpoints) and one request in a hundred to
// /status/503, so the failure series exist too.
func pathsLua(n int) string {
	return fmt.Sprintf(`local nthreads = 0
function setup(thread)
  thread:set("tid", nthreads)
  nthreads = nthreads + 1
end
local counter = 0
function init(args)
  counter = (tid or 0) * 7919
end
local function word(n)
  local s = ""
  repeat
    s = string.char(97 + n %% 26) .. s
    n = math.floor(n / 26)
  until n == 0
  return s
end
function request()
  counter = counter + 1
  if counter %% 100 == 0 then
    return wrk.format("GET", "/status/503")
  end
  return wrk.format("GET", "/p/page-" .. word(counter %% %d))
end
`, n)
}

// countSeries counts the samples of an exposition and the distinct endpoint label values.
func countSeries(body string) (series, endpoints int) {
	seen := map[string]bool{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		series++
		if i := strings.Index(line, `endpoint="`); i >= 0 {
			rest := line[i+len(`endpoint="`):]
			seen[rest[:strings.IndexByte(rest, '"')]] = true
		}
	}
	return series, len(seen)
}
