package export

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.prom")

// scenario feeds a fixed event sequence into an aggregator with a fake clock: two workers,
// requests of several kinds, a HUP, a kill -9 and a timeout.
func scenario(t *testing.T) *aggregate.Aggregator {
	t.Helper()
	base := time.Unix(1_700_000_000, 0)
	now := base.Add(100 * time.Second)
	cfg := aggregate.DefaultConfig()
	cfg.IgnoreRoutes = []string{"/healthz", "/-/{probe}"}
	cfg.Now = func() time.Time { return now }
	cfg.MonoToWall = func(ns uint64) time.Time { return base.Add(time.Duration(ns)) }
	a := aggregate.New(cfg)
	const m = 100
	a.AddMaster(m, base, "app:app")
	a.SeedWorkers(m, []uint32{101, 102}, []time.Time{base.Add(time.Second), base.Add(2 * time.Second)})
	a.SetUsage(101, 30<<20, 12.5)
	a.SetUsage(102, 31<<20, 3)
	ts := uint64(10 * time.Second)
	ev := func(e events.Event) {
		ts += uint64(time.Millisecond)
		if e.TS == 0 {
			e.TS = ts
		}
		a.Handle(&e)
	}
	// The kernel's CPU time, for requests served alone on their thread (--request-cpu).
	onCPU := map[string]time.Duration{"GET /ok": time.Millisecond, "GET /users/12345": 20 * time.Millisecond}
	// The kernel's downstream calls (--downstream): /users/12345 reads Redis 3 times and
	// PostgreSQL once, over its Unix socket; /ok calls an API.
	redis := events.Peer{Family: events.FamilyInet, Port: 6379, Addr: [16]byte{127, 0, 0, 1}}
	api := events.Peer{Family: events.FamilyInet6, Port: 443, Addr: [16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 15: 1}}
	pg := events.Peer{Family: events.FamilyUnix, Ino: 4242}
	calls := map[string][]events.Downstream{
		"GET /ok":          {{Peer: api, Calls: 1, NS: uint64(time.Millisecond)}},
		"GET /users/12345": {{Peer: redis, Calls: 3, NS: uint64(600 * time.Microsecond)}, {Peer: pg, Calls: 1, NS: uint64(4 * time.Millisecond)}},
	}
	a.SetUnixPaths(func(pid uint32) (map[uint64]string, error) {
		return map[uint64]string{4242: "/run/postgresql/.s.PGSQL.5432"}, nil
	})
	req := func(pid, fd, seq uint32, line string, status uint16, dur time.Duration) {
		start := ts + uint64(time.Millisecond)
		end := start + uint64(dur)
		e := events.Event{Kind: events.KindReqEnd, TGID: pid, FD: fd, Seq: seq, Status: status, StartNS: start, LastWriteNS: end, BytesIn: 120, BytesOut: 2048, Reason: events.EndClose, TS: end + 1, Line: []byte(line)}
		if c, ok := onCPU[line]; ok {
			e.Flags, e.CPUNS = events.FlagCPU, uint64(c)
		}
		if d, ok := calls[line]; ok {
			// Sent when the request is answered, before its end.
			ds := events.Event{Kind: events.KindDownstream, TGID: pid, Seq: seq}
			ds.SetDownstream(d)
			ev(ds)
		}
		ev(e)
		ts = end + 2
	}
	req(101, 5, 1, "GET /ok", 200, 2*time.Millisecond)
	req(101, 5, 1, "GET /healthz", 200, time.Millisecond) // ignored: only in gpe_ebpf_ignored_requests_total
	req(101, 5, 1, "GET /users/12345", 200, 30*time.Millisecond)
	req(102, 6, 1, "POST /upload", 201, 300*time.Millisecond)
	req(102, 6, 1, "GET /fail", 500, 5*time.Millisecond)
	req(102, 6, 1, "GET /gone", 0, 5*time.Millisecond)
	// HUP: two replacements, the old workers told to quit by the master, exiting 0.
	ev(events.Event{Kind: events.KindSignal, TGID: m, Other: 1, Code: 1})
	ev(events.Event{Kind: events.KindFork, TGID: 103, Other: m})
	ev(events.Event{Kind: events.KindFork, TGID: 104, Other: m})
	// Their busy time is the kernel's, in the exit record: the sum of their requests' times.
	for _, w := range []struct {
		pid    uint32
		busyNS uint64
	}{{101, uint64(33 * time.Millisecond)}, {102, uint64(310*time.Millisecond + 1)}} {
		ev(events.Event{Kind: events.KindSignal, TGID: w.pid, Other: m, Code: 15})
		ev(events.Event{Kind: events.KindExit, TGID: w.pid, Code: 0, BusyNS: w.busyNS})
		ev(events.Event{Kind: events.KindSignal, TGID: m, Other: w.pid, Code: 17})
	}
	// A timeout: the master aborts 103 while it serves /hang, whose line came in two reads.
	start := ts
	ev(events.Event{Kind: events.KindReqLine, TGID: 103, FD: 7, Seq: 1, StartNS: start, Line: []byte("ng")})
	ev(events.Event{Kind: events.KindSignal, TGID: 103, Other: m, Code: 6})
	ev(events.Event{Kind: events.KindReqEnd, TGID: 103, FD: 7, Seq: 1, StartNS: start, Reason: events.EndClose, Line: []byte("GET /ha")})
	ev(events.Event{Kind: events.KindExit, TGID: 103, Code: 1 << 8, BusyNS: ts - start})
	ev(events.Event{Kind: events.KindFork, TGID: 105, Other: m})
	a.SetUsage(104, 29<<20, 1)
	a.SetUsage(105, 28<<20, 0)
	// Gunicorn 25+'s dirty arbiter, reported as a worker at its fork until the agent marked
	// it, with two dirty workers; what the kernel made of its Unix socket counts nowhere.
	ev(events.Event{Kind: events.KindFork, TGID: 106, Other: m})
	a.MarkDirtyArbiter(106)
	ev(events.Event{Kind: events.KindReqEnd, TGID: 106, FD: 9, Seq: 1, StartNS: ts, Reason: events.EndClose, Line: []byte("GD")})
	a.SetDirtyUsage(106, aggregate.DirtyUsage{RSS: 40 << 20, CPUPercent: 0.5, Workers: 2, WorkersRSS: 900 << 20, WorkersCPUPercent: 97.5})
	// Sync workers, with Gunicorn's default timeout: 104 serves a request, 105 is idle, and
	// 104 touched its heartbeat 12 s ago, 105 1.5 s ago.
	a.SetMasterSettings(m, aggregate.MasterSettings{Capacity: 1, Timeout: 30 * time.Second, TimeoutKnown: true})
	a.SetOccupancy(func(pid uint32) (events.Occupancy, bool) {
		if pid == 104 {
			return events.Occupancy{InFlight: 1, BusyNS: uint64(time.Second), BusySince: uint64(19 * time.Second)}, true
		}
		return events.Occupancy{}, pid == 105
	})
	a.SetHeartbeat(func(pid uint32) (time.Time, bool) {
		switch pid {
		case 104:
			return now.Add(-12 * time.Second), true
		case 105:
			return now.Add(-1500 * time.Millisecond), true
		}
		return time.Time{}, false
	})
	return a
}

func gather(t *testing.T, cfg CollectorConfig) []byte {
	t.Helper()
	a := scenario(t)
	reg := prometheus.NewPedanticRegistry()
	lost := func() (uint64, error) { return 0, nil }
	cfg.Version, cfg.Revision = "test", "0123abc"
	reg.MustRegister(NewCollector(cfg, a, lost, func() uint64 { return uint64(20 * time.Second) }))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	// The Go version and the platform change with the toolchain; the golden file does not.
	return bytes.ReplaceAll(buf.Bytes(), []byte(`goarch="`+runtime.GOARCH+`",goos="`+runtime.GOOS+`",goversion="`+runtime.Version()+`"`),
		[]byte(`goarch="ARCH",goos="OS",goversion="GO"`))
}

// TestGolden checks the whole exposition against testdata/golden.prom (go test -update to
// rewrite it after a deliberate change).
func TestGolden(t *testing.T) {
	got := gather(t, CollectorConfig{ExpectedWorkers: 2, Hooks: "socket", Programs: countingPrograms})
	const path = "testdata/golden.prom"
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file: %v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("exposition differs from %s (go test ./internal/export -update after a deliberate change):\n%s", path, diff(string(want), string(got)))
	}
}

// TestPromlint: the exposition has no problem promtool would report.
func TestPromlint(t *testing.T) {
	for _, cfg := range []CollectorConfig{{}, {MasterLabel: true, ExpectedWorkers: 4, Hooks: "syscall", Programs: countingPrograms}} {
		problems, err := promlint.New(bytes.NewReader(gather(t, cfg))).Lint()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

// TestMasterLabel: with --discover every gunicorn series carries master_pid.
func TestMasterLabel(t *testing.T) {
	out := string(gather(t, CollectorConfig{MasterLabel: true}))
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, "gunicorn_") && !strings.Contains(line, `master_pid="100"`) {
			t.Errorf("series without master_pid: %s", line)
		}
	}
}

// TestContractMetrics: every metric of README "Metrics" is exported with its type.
func TestContractMetrics(t *testing.T) {
	out := string(gather(t, CollectorConfig{ExpectedWorkers: 2}))
	want := map[string]string{
		"gunicorn_worker_requests_total": "counter", "gunicorn_worker_request_duration_seconds": "histogram",
		"gunicorn_worker_memory_bytes": "gauge", "gunicorn_worker_cpu_percent": "gauge",
		"gunicorn_worker_uptime_seconds": "gauge", "gunicorn_worker_state": "gauge",
		"gunicorn_worker_failed_requests_total": "counter", "gunicorn_worker_error_handling_total": "counter",
		"gunicorn_master_worker_restarts_total": "counter", "gunicorn_master_signals_total": "counter",
		"gunicorn_worker_info": "gauge", "gunicorn_http_requests_total": "counter",
		"gunicorn_http_request_duration_seconds": "histogram", "gunicorn_worker_request_size_bytes": "histogram",
		"gunicorn_worker_response_size_bytes": "histogram", "gunicorn_worker_requests_in_flight": "gauge",
		"gunicorn_worker_busy_seconds_total": "counter", "gunicorn_master_workers": "gauge",
		"gunicorn_master_workers_expected": "gauge", "gunicorn_worker_exits_total": "counter",
		"gpe_ebpf_events_total": "counter", "gpe_ebpf_events_lost_total": "counter", "gpe_ebpf_build_info": "gauge",
		"gunicorn_master_workers_busy": "gauge", "gunicorn_worker_heartbeat_age_seconds": "gauge",
		"gunicorn_master_timeout_seconds": "gauge", "gunicorn_http_downstream_calls_total": "counter",
		"gunicorn_http_downstream_seconds_total": "counter", "gunicorn_dirty_arbiters": "gauge",
		"gunicorn_dirty_workers": "gauge", "gunicorn_dirty_memory_bytes": "gauge", "gunicorn_dirty_cpu_percent": "gauge",
	}
	for name, typ := range want {
		if !strings.Contains(out, "# TYPE "+name+" "+typ+"\n") {
			t.Errorf("missing # TYPE %s %s", name, typ)
		}
	}
	for _, s := range []string{
		`gunicorn_worker_error_handling_total{endpoint="/hang",error_type="worker_timeout",method="GET",worker_id="worker_3_1700000010"} 1`,
		`gunicorn_worker_error_handling_total{endpoint="/gone",error_type="no_response",method="GET",worker_id="worker_2_1700000002"} 1`,
		`gunicorn_master_worker_restarts_total 3`,
		`gunicorn_worker_exits_total{reason="timeout"} 1`,
		`gunicorn_worker_exits_total{reason="graceful"} 2`,
		`gunicorn_http_requests_total{endpoint="/users/{id}",method="GET",status="200"} 1`,
		`gunicorn_http_downstream_calls_total{endpoint="/users/{id}",peer="127.0.0.1:6379"} 3`,
		`gunicorn_http_downstream_seconds_total{endpoint="/users/{id}",peer="unix:/run/postgresql/.s.PGSQL.5432"} 0.004`,
		`gunicorn_http_downstream_calls_total{endpoint="/ok",peer="[2001:db8::1]:443"} 1`,
		`gunicorn_master_workers 2`,
		`gunicorn_dirty_arbiters 1`,
		`gunicorn_dirty_workers 2`,
		`gunicorn_dirty_memory_bytes{process="worker"} 9.437184e+08`,
		`gunicorn_dirty_cpu_percent{process="arbiter"} 0.5`,
	} {
		if !strings.Contains(out, s+"\n") {
			t.Errorf("missing %s", s)
		}
	}
}

// fakePrograms stands for the probes' ProgramStats.
type fakePrograms struct {
	stats []ProgramStat
	on    bool
	err   error
}

func (f fakePrograms) ProgramStats() ([]ProgramStat, bool, error) { return f.stats, f.on, f.err }

// countingPrograms is a kernel with kernel.bpf_stats_enabled on.
var countingPrograms = fakePrograms{on: true, stats: []ProgramStat{
	{Name: "on_fork", Runs: 3, Runtime: 4500 * time.Nanosecond},
	{Name: "on_sock_send", Runs: 120000, Runtime: 36 * time.Millisecond},
	{Name: "on_tcp_state", Runs: 900, Runtime: 90 * time.Microsecond, Misses: 2},
}}

// TestProgramMetrics: the programs' run counters are exported while the kernel counts them,
// left out while kernel.bpf_stats_enabled is off or without probes, and a failed read fails
// the scrape's program series rather than exporting a wrong value. Their misses (runs the
// kernel skipped) are exported whenever there are probes: the kernel counts them always.
func TestProgramMetrics(t *testing.T) {
	const runs = `gpe_ebpf_program_runs_total{program="on_sock_send"} 120000` + "\n"
	const secs = `gpe_ebpf_program_run_seconds_total{program="on_sock_send"} 0.036` + "\n"
	for _, tc := range []struct {
		name     string
		programs ProgramStats
		want     bool // the run series are there
		misses   bool // the misses are
	}{
		{"counting", countingPrograms, true, true},
		{"bpf_stats_enabled off", fakePrograms{on: false, stats: []ProgramStat{{Name: "on_tcp_state", Misses: 2}}}, false, true},
		{"no probes", nil, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := string(gather(t, CollectorConfig{Programs: tc.programs}))
			for _, s := range []string{runs, secs, `gpe_ebpf_program_runs_total{program="on_fork"} 3` + "\n", `gpe_ebpf_program_run_seconds_total{program="on_fork"} 4.5e-06` + "\n"} {
				if got := strings.Contains(out, s); got != tc.want {
					t.Errorf("series %q present: %v, want %v", strings.TrimSpace(s), got, tc.want)
				}
			}
			miss := `gpe_ebpf_program_misses_total{program="on_tcp_state"} 2` + "\n"
			if got := strings.Contains(out, miss); got != tc.misses {
				t.Errorf("series %q present: %v, want %v", strings.TrimSpace(miss), got, tc.misses)
			}
		})
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(CollectorConfig{Programs: fakePrograms{on: true, err: errors.New("bad fd")}}, scenario(t), nil, func() uint64 { return 0 }))
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "bad fd") {
		t.Errorf("gather with a failing program read: %v, want the error", err)
	}
}

// TestHooksInfo: the hook mode is one info series, absent when the collector is not told.
func TestHooksInfo(t *testing.T) {
	if out := string(gather(t, CollectorConfig{Hooks: "syscall"})); !strings.Contains(out, `gpe_ebpf_hooks_info{mode="syscall"} 1`+"\n") {
		t.Errorf("no gpe_ebpf_hooks_info{mode=\"syscall\"} 1 in:\n%s", out)
	}
	if out := string(gather(t, CollectorConfig{})); strings.Contains(out, "gpe_ebpf_hooks_info") {
		t.Error("gpe_ebpf_hooks_info without a mode")
	}
}

// TestExitedWorkerDroppedAfterTwoScrapes: the scenario's exited workers are in two scrapes
// (their exited state and final counters), then their series are gone; the live workers and
// gunicorn_http_* stay as they were.
func TestExitedWorkerDroppedAfterTwoScrapes(t *testing.T) {
	a := scenario(t)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(CollectorConfig{Version: "test"}, a, nil, func() uint64 { return uint64(20 * time.Second) }))
	exited := []string{"worker_1_1700000001", "worker_2_1700000002", "worker_3_1700000010"}
	live := []string{"worker_4_1700000010", "worker_5_1700000010"}
	var httpFirst string
	for scrape := 1; scrape <= 3; scrape++ {
		var buf bytes.Buffer
		fams, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
		var httpLines []string
		for _, f := range fams {
			if err := enc.Encode(f); err != nil {
				t.Fatal(err)
			}
		}
		out := buf.String()
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "gunicorn_http_") {
				httpLines = append(httpLines, line)
			}
		}
		for _, id := range exited {
			seen := strings.Contains(out, `worker_id="`+id+`"`)
			if want := scrape <= 2; seen != want {
				t.Errorf("scrape %d: series of exited %s present=%v, want %v", scrape, id, seen, want)
			}
			if scrape <= 2 && !strings.Contains(out, `gunicorn_worker_state{state="exited",timestamp="1700000010",worker_id="`+id+`"} 0`) {
				t.Errorf("scrape %d: %s not shown exited", scrape, id)
			}
		}
		if scrape <= 2 && !strings.Contains(out, `gunicorn_worker_requests_total{worker_id="worker_2_1700000002"} 2`+"\n") {
			t.Errorf("scrape %d: final requests_total of worker_2 not shown", scrape)
		}
		for _, id := range live {
			if !strings.Contains(out, `gunicorn_worker_state{state="running",timestamp="1700000010",worker_id="`+id+`"} 1`) {
				t.Errorf("scrape %d: live %s missing", scrape, id)
			}
		}
		h := strings.Join(httpLines, "\n")
		if scrape == 1 {
			httpFirst = h
		} else if h != httpFirst {
			t.Errorf("scrape %d: gunicorn_http_* changed when exited workers went:\n%s", scrape, diff(httpFirst, h))
		}
	}
}

func diff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	in := func(l string, xs []string) bool {
		for _, x := range xs {
			if x == l {
				return true
			}
		}
		return false
	}
	for _, l := range al {
		if !in(l, bl) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bl {
		if !in(l, al) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestContainerLabels: a master in a container carries its container and pod, its workers
// the PID they see themselves beside the host's.
func TestContainerLabels(t *testing.T) {
	a := aggregate.New(aggregate.DefaultConfig())
	a.AddMaster(4000, time.Unix(1_700_000_000, 0), "app:app")
	a.SeedWorkers(4000, []uint32{4001}, []time.Time{time.Unix(1_700_000_001, 0)})
	a.SetContainer(4000, 1, "3f1c", "1a2b-uid")
	a.SetContainer(4001, 7, "3f1c", "1a2b-uid")
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(CollectorConfig{}, a, func() (uint64, error) { return 0, nil }, func() uint64 { return 0 }))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, f := range fams {
		if err := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain)).Encode(f); err != nil {
			t.Fatal(err)
		}
	}
	out := buf.String()
	for _, want := range []string{
		`gunicorn_master_info{app="app:app",container_id="3f1c",master_pid="4000",pod_uid="1a2b-uid"} 1`,
		`gunicorn_worker_info{container_pid="7",pid="4001",worker_id="worker_1_1700000001"} 1`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %s in:\n%s", want, out)
		}
	}
}
