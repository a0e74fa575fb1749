package redisfwd

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// gunicornRegistry is a registry with a few gunicorn_* series shaped like
// the real ones; requests is returned so a test can change it between
// forwards.
func gunicornRegistry(t *testing.T) (*prometheus.Registry, *prometheus.CounterVec) {
	t.Helper()
	reg := prometheus.NewRegistry()
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "gunicorn_worker_requests_total", Help: "Total requests handled by the worker.",
	}, []string{"worker_id"})
	memory := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "gunicorn_worker_memory_bytes", Help: "Resident set size of the worker.",
	}, []string{"worker_id"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "gunicorn_worker_request_duration_seconds", Help: "Request duration.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
	}, []string{"worker_id"})
	restarts := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "gunicorn_master_worker_restarts_total", Help: "Workers respawned.",
	})
	reg.MustRegister(requests, memory, duration, restarts)
	for i, w := range []string{"worker_1_1700000000", "worker_2_1700000001"} {
		requests.WithLabelValues(w).Add(float64(10 * (i + 1)))
		memory.WithLabelValues(w).Set(float64(50_000_000 + i))
		duration.WithLabelValues(w).Observe(0.042)
		duration.WithLabelValues(w).Observe(1.5)
	}
	restarts.Add(3)
	return reg, requests
}

// snapshotGatherer records, at every Gather, the text those families render
// to, so a test can compare what reached Redis with what the gatherer
// returned at that moment. It renders with MetricFamilyToText, not the
// forwarder's own encoder, so the comparison is independent.
type snapshotGatherer struct {
	g prometheus.Gatherer

	mu    sync.Mutex
	calls int
	last  string
}

func (s *snapshotGatherer) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := s.g.Gather()
	var buf bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&buf, mf); err != nil {
			panic(err)
		}
	}
	s.mu.Lock()
	s.calls++
	s.last = buf.String()
	s.mu.Unlock()
	return mfs, err
}

func (s *snapshotGatherer) state() (int, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls, s.last
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func forwarderConfig(s *redisServer, instance string, interval time.Duration) Config {
	cfg := DefaultConfig()
	cfg.Enabled = true
	cfg.Host = "127.0.0.1"
	cfg.Port = s.port
	cfg.Password = s.password
	cfg.Interval = interval
	cfg.Instance = instance
	cfg.MetricsPort = 9123
	cfg.KeyPrefix = "test:gpe:"
	return cfg
}

// eventually polls cond every 10 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func parseText(t *testing.T, text string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("stored text does not parse as exposition: %v\n%s", err, text)
	}
	return fams
}

// TestForwarderWritesKeys runs the forwarder for a few intervals, stops it,
// and checks every key, value, TTL and the metadata against what the
// gatherer produced.
func TestForwarderWritesKeys(t *testing.T) {
	const interval = 500 * time.Millisecond
	s := startRedis(t, "")
	reg, requests := gunicornRegistry(t)
	snap := &snapshotGatherer{g: reg}
	cfg := forwarderConfig(s, "web-1", interval)
	f, err := NewForwarder(cfg, snap, func() []int { return []int{101, 202} }, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	// As main does: the forwarder's own metrics live on the forwarded registry.
	reg.MustRegister(f.Collectors()...)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()

	// One forward at start, then one per interval: wait for two intervals,
	// change a counter in between so the forward is seen to gather afresh.
	eventually(t, 5*time.Second, "the first forward", func() bool { n, _ := snap.state(); return n >= 1 })
	requests.WithLabelValues("worker_1_1700000000").Add(5)
	eventually(t, 5*time.Second, "two more forwards", func() bool { n, _ := snap.state(); return n >= 3 })
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
	calls, lastText := snap.state()
	t.Logf("forwards made (including the final one): %d", calls)

	rc := s.client(0)
	defer rc.Close()
	rctx := context.Background()

	// :latest is exactly what the gatherer returned at the last forward.
	latest, err := rc.Get(rctx, "test:gpe:web-1:latest").Result()
	if err != nil {
		t.Fatalf("GET latest: %v", err)
	}
	if latest != lastText {
		t.Fatalf("latest differs from the gatherer's output at the last forward:\n--- latest\n%s\n--- gathered\n%s", latest, lastText)
	}
	fams := parseText(t, latest)
	for _, name := range []string{
		"gunicorn_worker_requests_total", "gunicorn_worker_memory_bytes",
		"gunicorn_worker_request_duration_seconds", "gunicorn_master_worker_restarts_total",
		"gpe_ebpf_redis_forward_errors_total", "gpe_ebpf_redis_last_forward_timestamp_seconds",
	} {
		if fams[name] == nil {
			t.Errorf("family %s missing from the forwarded text", name)
		}
	}
	if got := counterValue(fams["gunicorn_worker_requests_total"], "worker_id", "worker_1_1700000000"); got != 15 {
		t.Errorf("forwarded gunicorn_worker_requests_total{worker_1} = %v, want 15 (10 + 5 added between forwards)", got)
	}

	// Timestamp keys: several, each holding an exposition, expiring within
	// 3 x interval rounded up to whole seconds (SETEX counts seconds).
	tsKeys, err := rc.Keys(rctx, "test:gpe:web-1:[0-9]*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(tsKeys) < 2 {
		t.Fatalf("timestamp keys = %v, want at least 2 after %d forwards", tsKeys, calls)
	}
	slices.Sort(tsKeys)
	ttlMax := TimestampTTL(interval)
	for _, k := range tsKeys {
		ttl, err := rc.PTTL(rctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if ttl <= 0 || ttl > ttlMax {
			t.Errorf("PTTL %s = %s, want in (0, %s]", k, ttl, ttlMax)
		}
	}
	newest := tsKeys[len(tsKeys)-1]
	if ttl := rc.PTTL(rctx, newest).Val(); ttl <= ttlMax-2*interval {
		t.Errorf("PTTL of the newest timestamp key %s = %s, want close to %s (3 x %s, rounded up)", newest, ttl, ttlMax, interval)
	}
	if v := rc.Get(rctx, newest).Val(); v != latest {
		t.Errorf("newest timestamp key %s does not hold the latest exposition", newest)
	}
	for _, k := range []string{"test:gpe:web-1:latest", "test:gpe:web-1:metadata"} {
		if ttl := rc.TTL(rctx, k).Val(); ttl != -1 {
			t.Errorf("TTL %s = %s, want no expiry (-1)", k, ttl)
		}
	}

	// The instances set.
	if members := rc.SMembers(rctx, "test:gpe:instances").Val(); !slices.Equal(members, []string{"web-1"}) {
		t.Errorf("SMEMBERS instances = %v, want [web-1]", members)
	}

	// Metadata: exact field names and values.
	raw, err := rc.Get(rctx, "test:gpe:web-1:metadata").Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	if err := json.Unmarshal(raw, &meta); err != nil {
		t.Fatalf("metadata is not JSON: %v: %s", err, raw)
	}
	hostname, _ := os.Hostname()
	ts, _ := meta["timestamp"].(float64)
	if age := float64(time.Now().UnixMilli())/1000 - ts; age < 0 || age > 5 {
		t.Errorf("metadata timestamp %v is %vs old, want a fresh unix time in seconds", meta["timestamp"], age)
	}
	if got := testutil.ToFloat64(f.Collectors()[1]); got != ts {
		t.Errorf("gpe_ebpf_redis_last_forward_timestamp_seconds = %v, want the metadata timestamp %v", got, ts)
	}
	want := map[string]any{
		"host": hostname, "port": float64(9123), "interval": 0.5, "forwarder": "redis",
		"masters": []any{float64(101), float64(202)}, "instance": "web-1",
	}
	for k, v := range want {
		if got, ok := meta[k]; !ok || !jsonEqual(got, v) {
			t.Errorf("metadata[%q] = %#v, want %#v (metadata %s)", k, got, v, raw)
		}
	}
	if got := testutil.ToFloat64(f.Collectors()[0]); got != 0 {
		t.Errorf("gpe_ebpf_redis_forward_errors_total = %v, want 0", got)
	}
}

func jsonEqual(a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

func counterValue(mf *dto.MetricFamily, label, value string) float64 {
	if mf == nil {
		return -1
	}
	for _, m := range mf.Metric {
		for _, lp := range m.Label {
			if lp.GetName() == label && lp.GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

// TestForwarderAuthAndDB checks requirepass and a non-zero DB, and that a
// wrong or missing password is a counted, explained failure.
func TestForwarderAuthAndDB(t *testing.T) {
	s := startRedis(t, "s3cret pass")
	tests := []struct {
		name     string
		password string
		db       int
		wantErr  string
	}{
		{name: "right password, db 3", password: "s3cret pass", db: 3},
		{name: "wrong password", password: "nope", db: 3, wantErr: "WRONGPASS"},
		{name: "no password", password: "", db: 3, wantErr: "NOAUTH"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg, _ := gunicornRegistry(t)
			cfg := forwarderConfig(s, "auth-"+strconv.Itoa(len(tt.password)), 300*time.Millisecond)
			cfg.Password, cfg.DB = tt.password, tt.db
			f, err := NewForwarder(cfg, reg, nil, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			err = f.Forward(context.Background())
			checkErr(t, err, tt.wantErr)
			errs := testutil.ToFloat64(f.Collectors()[0])
			if tt.wantErr != "" {
				if errs != 1 {
					t.Fatalf("forward errors = %v, want 1", errs)
				}
				return
			}
			if errs != 0 {
				t.Fatalf("forward errors = %v, want 0", errs)
			}
			rc3, rc0 := s.client(3), s.client(0)
			defer rc3.Close()
			defer rc0.Close()
			if n := rc3.Exists(context.Background(), "test:gpe:"+cfg.Instance+":latest").Val(); n != 1 {
				t.Fatalf("latest not in db 3")
			}
			if meta := rc3.Get(context.Background(), "test:gpe:"+cfg.Instance+":metadata").Val(); !strings.Contains(meta, `"masters":[]`) {
				t.Fatalf("metadata with no masters callback = %s, want masters []", meta)
			}
			if n := rc0.DBSize(context.Background()).Val(); n != 0 {
				t.Fatalf("db 0 holds %d keys, want 0: the forwarder must write to db 3 only", n)
			}
		})
	}
}

// TestForwarderSurvivesRedisRestart kills Redis with SIGKILL while the
// forwarder runs, keeps scraping /metrics during the outage, restarts Redis
// on the same port and checks that forwarding resumes by itself.
func TestForwarderSurvivesRedisRestart(t *testing.T) {
	const interval = 250 * time.Millisecond
	s := startRedis(t, "")
	reg, _ := gunicornRegistry(t)
	f, err := NewForwarder(forwarderConfig(s, "web-1", interval), reg, nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(f.Collectors()...)
	errorsTotal := func() float64 { return testutil.ToFloat64(f.Collectors()[0]) }
	lastForward := func() float64 { return testutil.ToFloat64(f.Collectors()[1]) }

	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	eventually(t, 5*time.Second, "a first successful forward", func() bool { return lastForward() > 0 })

	// Scrape /metrics through the whole outage; every scrape must answer.
	scrapeCtx, stopScraping := context.WithCancel(context.Background())
	var scrapes, scrapeFailures int
	var scrapeMu sync.Mutex
	var scrapeWG sync.WaitGroup
	scrapeWG.Add(1)
	go func() {
		defer scrapeWG.Done()
		client := &http.Client{Timeout: 2 * time.Second}
		for scrapeCtx.Err() == nil {
			ok := scrapeOnce(client, srv.URL)
			scrapeMu.Lock()
			scrapes++
			if !ok {
				scrapeFailures++
			}
			scrapeMu.Unlock()
			time.Sleep(20 * time.Millisecond)
		}
	}()

	t0 := time.Now()
	lastBefore := lastForward()
	s.kill()
	t.Logf("t=+%v redis-server SIGKILLed", time.Since(t0).Round(time.Millisecond))

	eventually(t, 5*time.Second, "a counted forward error", func() bool { return errorsTotal() > 0 })
	t.Logf("t=+%v first forward error counted", time.Since(t0).Round(time.Millisecond))
	// Stay down a few more intervals: errors keep being counted, Run keeps going.
	time.Sleep(4 * interval)
	errsDown := errorsTotal()
	t.Logf("t=+%v forward errors while down: %v", time.Since(t0).Round(time.Millisecond), errsDown)
	select {
	case <-done:
		t.Fatal("Run returned while Redis was down")
	default:
	}

	s.start()
	tRestart := time.Since(t0)
	t.Logf("t=+%v redis-server restarted on port %d (empty: no persistence)", tRestart.Round(time.Millisecond), s.port)
	rc := s.client(0)
	defer rc.Close()
	eventually(t, 10*time.Second, "forwarding to resume after the restart", func() bool {
		return rc.Exists(context.Background(), "test:gpe:web-1:latest").Val() == 1
	})
	t.Logf("t=+%v latest written again (%v after the restart)", time.Since(t0).Round(time.Millisecond),
		(time.Since(t0) - tRestart).Round(time.Millisecond))
	eventually(t, 5*time.Second, "the last-forward gauge to move", func() bool { return lastForward() > lastBefore })

	stopScraping()
	scrapeWG.Wait()
	t.Logf("scrapes during the outage: %d, failed: %d", scrapes, scrapeFailures)
	if scrapes == 0 || scrapeFailures != 0 {
		t.Fatalf("/metrics scrapes during the outage: %d, failed %d; want all to answer", scrapes, scrapeFailures)
	}
	if errsDown < 1 {
		t.Fatalf("forward errors while down = %v, want > 0", errsDown)
	}
	select {
	case <-done:
		t.Fatal("Run returned after Redis came back")
	default:
	}
}

// scrapeOnce reports whether /metrics answered 200 with the gunicorn series.
func scrapeOnce(client *http.Client, url string) bool {
	resp, err := client.Get(url)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return err == nil && resp.StatusCode == http.StatusOK &&
		bytes.Contains(body, []byte("gunicorn_worker_requests_total"))
}

// TestForwarderSlowRedis points the forwarder at a server that accepts
// connections and never answers: Forward must give up within its interval,
// count one error, and leave the caller free.
func TestForwarderSlowRedis(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() { defer conns.Done(); _, _ = io.Copy(io.Discard, c); c.Close() }()
		}
	}()

	reg, _ := gunicornRegistry(t)
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Host, cfg.Port = true, "127.0.0.1", ln.Addr().(*net.TCPAddr).Port
	cfg.Interval = 300 * time.Millisecond
	f, err := NewForwarder(cfg, reg, nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	res := make(chan error, 1)
	go func() { res <- f.Forward(context.Background()) }()
	select {
	case err := <-res:
		if err == nil {
			t.Fatal("Forward to a silent server succeeded")
		}
		t.Logf("Forward gave up: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("Forward to a silent server did not give up within its interval")
	}
	if got := testutil.ToFloat64(f.Collectors()[0]); got != 1 {
		t.Fatalf("forward errors = %v, want 1", got)
	}

	// Shutdown stays bounded too: Run's final forward gives up after about
	// a second even with a 30 s interval and a Redis that never answers.
	cfg.Interval = 30 * time.Second
	f2, err := NewForwarder(cfg, reg, nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { f2.Run(ctx); close(done) }()
	time.Sleep(100 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel while Redis was silent")
	}
	if got := testutil.ToFloat64(f2.Collectors()[0]); got != 1 {
		t.Fatalf("forward errors after a failed final forward = %v, want 1 (the cancelled forward is not counted)", got)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ln.Close()
	conns.Wait()
}

// TestForwarderMetricsLint lints the forwarder's own metrics as promtool
// check metrics would.
func TestForwarderMetricsLint(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Enabled, cfg.Host = true, "127.0.0.1"
	f, err := NewForwarder(cfg, prometheus.NewRegistry(), nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(f.Collectors()...)
	problems, err := promlint.NewWithMetricFamilies(mustGather(t, reg)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint %s: %s", p.Metric, p.Text)
	}
	names := map[string]dto.MetricType{}
	for _, mf := range mustGather(t, reg) {
		names[mf.GetName()] = mf.GetType()
	}
	if names["gpe_ebpf_redis_forward_errors_total"] != dto.MetricType_COUNTER ||
		names["gpe_ebpf_redis_last_forward_timestamp_seconds"] != dto.MetricType_GAUGE {
		t.Fatalf("forwarder metrics = %v, want the errors counter and the timestamp gauge", names)
	}
}

func mustGather(t *testing.T, g prometheus.Gatherer) []*dto.MetricFamily {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return mfs
}

// TestForwarderNotifyForwarded: the hook runs before each gathering, and what it returns runs
// once that exposition is in Redis, never after a forward that failed.
func TestForwarderNotifyForwarded(t *testing.T) {
	s := startRedis(t, "")
	reg, _ := gunicornRegistry(t)
	g := &snapshotGatherer{g: reg}
	f, err := NewForwarder(forwarderConfig(s, "web-1", 200*time.Millisecond), g, nil, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var before, written, gatheredAtBefore int
	f.NotifyForwarded(func() func() {
		before++
		gatheredAtBefore, _ = g.state()
		return func() { written++ }
	})
	if err := f.Forward(context.Background()); err != nil {
		t.Fatalf("forward: %v", err)
	}
	calls, _ := g.state()
	if before != 1 || written != 1 || gatheredAtBefore != calls-1 {
		t.Errorf("after a good forward: before=%d written=%d, gathered %d times before the hook and %d after; want 1, 1, hook before the gathering",
			before, written, gatheredAtBefore, calls)
	}
	s.kill()
	if err := f.Forward(context.Background()); err == nil {
		t.Fatal("forward to a dead Redis succeeded")
	}
	if before != 2 || written != 1 {
		t.Errorf("after a failed forward: before=%d written=%d, want 2 and still 1", before, written)
	}
}
