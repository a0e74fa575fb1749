package export

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	promBridge "go.opentelemetry.io/contrib/bridges/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetrichttp"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
)

// OTLPConfig is the OTLP push of the metrics.
type OTLPConfig struct {
	// Endpoint is the OTLP/HTTP (protobuf) URL, http:// or https://; a URL without a path
	// pushes to /v1/metrics, the OpenTelemetry Collector's. "" pushes nothing.
	Endpoint string
	// Interval is the time between pushes.
	Interval time.Duration
	// Timeout bounds one push; 0 is the smaller of Interval and 10 s.
	Timeout time.Duration
	// FirstRetry is the wait before the first retry of a failed push; it doubles with every
	// failure in a row, up to Interval.
	FirstRetry time.Duration
}

// DefaultOTLPConfig is the defaults of README "Configuration".
func DefaultOTLPConfig() OTLPConfig {
	return OTLPConfig{Interval: 30 * time.Second, FirstRetry: time.Second}
}

// StartOTLP pushes reg's metrics as cfg says, in a goroutine of wg until ctx ends, and
// registers the pusher's error counter on reg; it does nothing without an endpoint.
func StartOTLP(ctx context.Context, cfg OTLPConfig, reg *prometheus.Registry, wg *sync.WaitGroup, logger *slog.Logger) error {
	if cfg.Endpoint == "" {
		return nil
	}
	pusher, err := NewOTLPPusher(cfg, reg, logger)
	if err != nil {
		return err
	}
	reg.MustRegister(pusher)
	wg.Go(func() { pusher.Run(ctx) })
	logger.Info("pushing metrics over OTLP", "endpoint", cfg.Endpoint, "interval", cfg.Interval)
	return nil
}

// CheckOTLPEndpoint reads an endpoint URL as OTLPConfig.Endpoint takes it.
func CheckOTLPEndpoint(endpoint string) (host, path string, insecure bool, err error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", "", false, fmt.Errorf("OTLP endpoint %q: %w", endpoint, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", "", false, fmt.Errorf("OTLP endpoint %q: want http://host:port[/path] or https://...", endpoint)
	}
	path = u.Path
	if path == "" || path == "/" {
		path = "/v1/metrics"
	}
	return u.Host, path, u.Scheme == "http", nil
}

// OTLPPusher pushes what a gatherer gathers (the same metrics /metrics serves) to an OTLP
// endpoint, through the OpenTelemetry Go SDK's OTLP/HTTP exporter and its Prometheus bridge.
// It runs in a goroutine of its own: a slow or failing endpoint never holds up /metrics or the
// read loop. A failed push is counted (gpe_ebpf_otlp_errors_total, it is a Collector) and
// retried after a back-off. The resource names the host, the application (service.name, the
// app of gunicorn_master_info) and the master's PID (process.pid) when one master is observed;
// under --discover with several, service.name is "gunicorn" and the series' master_pid tells
// them apart.
type OTLPPusher struct {
	cfg      OTLPConfig
	exporter sdkmetric.Exporter
	producer sdkmetric.Producer
	logger   *slog.Logger
	host     string
	masters  []masterInfo // of the last gathering; only the pushing goroutine uses it

	pushes, errors atomic.Uint64
	pushDesc       *prometheus.Desc
	errDesc        *prometheus.Desc
}

type masterInfo struct{ pid, app string }

// NewOTLPPusher prepares the exporter; nothing is sent before Run.
func NewOTLPPusher(cfg OTLPConfig, g prometheus.Gatherer, logger *slog.Logger) (*OTLPPusher, error) {
	host, path, insecure, err := CheckOTLPEndpoint(cfg.Endpoint)
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = min(cfg.Interval, 10*time.Second)
	}
	opts := []otlpmetrichttp.Option{otlpmetrichttp.WithEndpoint(host), otlpmetrichttp.WithURLPath(path),
		otlpmetrichttp.WithTimeout(timeout), otlpmetrichttp.WithCompression(otlpmetrichttp.GzipCompression),
		// The pusher retries itself, so that each failed attempt is counted and none outlives
		// its interval.
		otlpmetrichttp.WithRetry(otlpmetrichttp.RetryConfig{Enabled: false})}
	if insecure {
		opts = append(opts, otlpmetrichttp.WithInsecure())
	}
	exp, err := otlpmetrichttp.New(context.Background(), opts...)
	if err != nil {
		return nil, fmt.Errorf("OTLP exporter: %w", err)
	}
	name, _ := os.Hostname()
	p := &OTLPPusher{cfg: cfg, exporter: exp, logger: logger, host: name,
		pushDesc: prometheus.NewDesc("gpe_ebpf_otlp_pushes_total", "OTLP pushes the endpoint accepted.", nil, nil),
		errDesc:  prometheus.NewDesc("gpe_ebpf_otlp_errors_total", "OTLP pushes that failed (each retried after a back-off).", nil, nil),
	}
	p.producer = promBridge.NewMetricProducer(promBridge.WithGatherer(prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		fams, err := g.Gather()
		p.masters = mastersOf(fams)
		return fams, err
	})))
	return p, nil
}

// mastersOf reads the observed masters from gunicorn_master_info.
func mastersOf(fams []*dto.MetricFamily) []masterInfo {
	var out []masterInfo
	for _, f := range fams {
		if f.GetName() != "gunicorn_master_info" {
			continue
		}
		for _, m := range f.GetMetric() {
			var mi masterInfo
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "master_pid":
					mi.pid = l.GetValue()
				case "app":
					mi.app = l.GetValue()
				}
			}
			out = append(out, mi)
		}
	}
	return out
}

// Run pushes every interval until ctx is done, then once more (bounded by a second) so that
// the last counts are not lost, and shuts the exporter down.
func (p *OTLPPusher) Run(ctx context.Context) {
	wait := p.cfg.Interval
	backoff := time.Duration(0)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if err := p.push(fctx); err != nil {
				p.logger.Warn("final OTLP push failed", "endpoint", p.cfg.Endpoint, "err", err)
			}
			_ = p.exporter.Shutdown(fctx)
			cancel()
			return
		case <-timer.C:
		}
		if err := p.push(ctx); err != nil && ctx.Err() == nil {
			backoff = min(max(2*backoff, p.cfg.FirstRetry), p.cfg.Interval)
			p.logger.Warn("OTLP push failed, retrying", "endpoint", p.cfg.Endpoint, "retry_in", backoff, "err", err)
			timer.Reset(backoff)
			continue
		}
		backoff = 0
		timer.Reset(p.cfg.Interval)
	}
}

// push gathers and sends once.
func (p *OTLPPusher) push(ctx context.Context) error {
	scopes, err := p.producer.Produce(ctx)
	if err == nil && len(scopes) == 0 {
		err = errors.New("nothing gathered")
	}
	if err == nil {
		err = p.exporter.Export(ctx, &metricdata.ResourceMetrics{Resource: p.resource(), ScopeMetrics: scopes})
	}
	if err != nil {
		p.errors.Add(1)
		return err
	}
	p.pushes.Add(1)
	return nil
}

// resource describes what the pushed metrics are about.
func (p *OTLPPusher) resource() *resource.Resource {
	attrs := []attribute.KeyValue{attribute.String("host.name", p.host)}
	if len(p.masters) == 1 {
		attrs = append(attrs, attribute.String("service.name", p.masters[0].app))
		if pid, err := strconv.Atoi(p.masters[0].pid); err == nil {
			attrs = append(attrs, attribute.Int("process.pid", pid))
		}
	} else {
		attrs = append(attrs, attribute.String("service.name", "gunicorn"))
	}
	return resource.NewSchemaless(attrs...)
}

// Describe sends the pusher's own metrics' descriptors.
func (p *OTLPPusher) Describe(ch chan<- *prometheus.Desc) {
	ch <- p.pushDesc
	ch <- p.errDesc
}

// Collect sends the pusher's counters.
func (p *OTLPPusher) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(p.pushDesc, prometheus.CounterValue, float64(p.pushes.Load()))
	ch <- prometheus.MustNewConstMetric(p.errDesc, prometheus.CounterValue, float64(p.errors.Load()))
}
