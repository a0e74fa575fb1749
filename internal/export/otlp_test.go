package export

import (
	"compress/gzip"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	colmetrics "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	"google.golang.org/protobuf/proto"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// otlpReceiver is an OTLP/HTTP endpoint for tests: the first `fail` requests get a 503, the
// next ones are decoded and sent on got.
func otlpReceiver(t *testing.T, fail int64) (*httptest.Server, chan *colmetrics.ExportMetricsServiceRequest) {
	t.Helper()
	got := make(chan *colmetrics.ExportMetricsServiceRequest, 100)
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/metrics" || r.Header.Get("Content-Type") != "application/x-protobuf" {
			t.Errorf("push to %s as %q, want /v1/metrics as application/x-protobuf", r.URL.Path, r.Header.Get("Content-Type"))
		}
		if n.Add(1) <= fail {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				t.Error(err)
				return
			}
			body = zr
		}
		b, err := io.ReadAll(body)
		if err != nil {
			t.Error(err)
			return
		}
		req := &colmetrics.ExportMetricsServiceRequest{}
		if err := proto.Unmarshal(b, req); err != nil {
			t.Error(err)
			return
		}
		w.Header().Set("Content-Type", "application/x-protobuf")
		out, _ := proto.Marshal(&colmetrics.ExportMetricsServiceResponse{})
		_, _ = w.Write(out)
		got <- req
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

// frozen is a Source that serves one snapshot again and again: gatherings (pushes, scrapes)
// drop nothing, so what is pushed and what is scraped can be compared.
type frozen struct{ s aggregate.Snapshot }

func (f frozen) Snapshot(uint64) aggregate.Snapshot { return f.s }
func (f frozen) Served(uint64)                      {}

// TestOTLPPush: the pushed values are the gathered ones, under a resource naming the host,
// the app and the master's PID; two refused pushes are counted and retried.
func TestOTLPPush(t *testing.T) {
	srv, got := otlpReceiver(t, 2)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(CollectorConfig{Version: "test"}, frozen{scenario(t).Snapshot(0)}, nil, func() uint64 { return 0 }))
	cfg := DefaultOTLPConfig()
	cfg.Endpoint = srv.URL // no path: /v1/metrics
	cfg.Interval, cfg.FirstRetry = 50*time.Millisecond, time.Millisecond
	startPusher(t, cfg, reg)

	req := <-got
	if n := gatheredSum(t, reg, "gpe_ebpf_otlp_errors_total"); n != 2 {
		t.Errorf("gpe_ebpf_otlp_errors_total = %v after two refused pushes, want 2", n)
	}
	host, _ := os.Hostname()
	if len(req.GetResourceMetrics()) != 1 {
		t.Fatalf("%d resource metrics, want 1", len(req.GetResourceMetrics()))
	}
	rm := req.GetResourceMetrics()[0]
	attrs := map[string]string{}
	for _, kv := range rm.GetResource().GetAttributes() {
		if v := kv.GetValue(); v.GetStringValue() != "" {
			attrs[kv.GetKey()] = v.GetStringValue()
		} else {
			attrs[kv.GetKey()] = strconv.FormatInt(v.GetIntValue(), 10)
		}
	}
	for k, want := range map[string]string{"host.name": host, "service.name": "app:app", "process.pid": "100"} {
		if attrs[k] != want {
			t.Errorf("resource %s = %q, want %q (all: %v)", k, attrs[k], want, attrs)
		}
	}
	pushed := map[string]float64{}
	for _, sm := range rm.GetScopeMetrics() {
		for _, m := range sm.GetMetrics() {
			for _, dp := range m.GetSum().GetDataPoints() {
				pushed[m.GetName()] += dp.GetAsDouble()
			}
			for _, dp := range m.GetHistogram().GetDataPoints() {
				pushed[m.GetName()+"_count"] += float64(dp.GetCount())
			}
		}
	}
	for _, name := range []string{"gunicorn_worker_requests_total", "gunicorn_http_requests_total", "gunicorn_worker_failed_requests_total",
		"gunicorn_http_downstream_calls_total", "gunicorn_http_downstream_seconds_total"} {
		want, err := testutil.GatherAndCount(reg, name)
		if err != nil || want == 0 {
			t.Fatalf("%s: %d series, %v", name, want, err)
		}
		if scraped := gatheredSum(t, reg, name); pushed[name] != scraped {
			t.Errorf("%s: pushed %v, scraped %v", name, pushed[name], scraped)
		}
	}
	if scraped := gatheredCount(t, reg, "gunicorn_worker_request_duration_seconds"); pushed["gunicorn_worker_request_duration_seconds_count"] != scraped {
		t.Errorf("gunicorn_worker_request_duration_seconds: pushed count %v, scraped %v", pushed["gunicorn_worker_request_duration_seconds_count"], scraped)
	}
}

// TestOTLPPushNeverBlocksScrapes: while a push hangs on an endpoint that does not answer,
// /metrics still answers.
func TestOTLPPushNeverBlocksScrapes(t *testing.T) {
	arrived, release := make(chan struct{}, 10), make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	defer srv.Close()
	defer close(release)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewCollector(CollectorConfig{Version: "test"}, scenario(t), nil, func() uint64 { return 0 }))
	cfg := DefaultOTLPConfig()
	cfg.Endpoint = srv.URL + "/v1/metrics"
	cfg.Interval, cfg.Timeout = 10*time.Millisecond, time.Hour // the push hangs until release
	stop := startPusher(t, cfg, reg)
	<-arrived // a push is in flight, and stays so until release
	h := Handler(DefaultServerConfig(), reg, nil, slog.New(slog.DiscardHandler))
	if code, body := status(t, h, "/metrics"); code != 200 || len(body) == 0 {
		t.Errorf("/metrics during a hanging push: %d, %d bytes", code, len(body))
	}
	stop() // the hanging push ends with its context, the final one within its second
}

// startPusher registers a pusher with reg and runs it until the returned stop (or the test's
// end) cancels it and waits for it.
func startPusher(t *testing.T, cfg OTLPConfig, reg *prometheus.Registry) (stop func()) {
	t.Helper()
	p, err := NewOTLPPusher(cfg, reg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	reg.MustRegister(p)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func gatheredSum(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	return gathered(t, g, name, func(m *dto.Metric) float64 { return m.GetCounter().GetValue() })
}

func gatheredCount(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	return gathered(t, g, name, func(m *dto.Metric) float64 { return float64(m.GetHistogram().GetSampleCount()) })
}

// gathered sums value over the series of one family.
func gathered(t *testing.T, g prometheus.Gatherer, name string, value func(*dto.Metric) float64) float64 {
	t.Helper()
	fams, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, f := range fams {
		if f.GetName() == name {
			for _, m := range f.GetMetric() {
				sum += value(m)
			}
		}
	}
	return sum
}
