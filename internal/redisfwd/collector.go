package redisfwd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
	"google.golang.org/protobuf/proto"

	"github.com/gpe-ebpf/gpe-ebpf/internal/export"
)

// InstanceLabel is the label the collector adds to every series. A series
// that already carries an `instance` label has it overwritten: the forwarding
// instance is the only value the collector can vouch for. Scrape the
// collector with `honor_labels: true`, or Prometheus renames it to
// exported_instance.
const InstanceLabel = "instance"

// staleFactor: an instance whose metadata is older than staleFactor x its
// interval has missed three forwards in a row and is no longer served.
const staleFactor = 3

// Collector reads what Forwarders wrote to Redis and serves it as one
// exposition. It is an http.Handler: every request reads Redis afresh, so
// the result is as current as the last forward of each instance.
type Collector struct {
	cfg    CollectorConfig
	client *redis.Client
	logger *slog.Logger

	mu    sync.Mutex
	stale map[string]bool // last known staleness per instance, to log transitions once
}

// NewCollector validates cfg, checks that the Redis host resolves and builds
// a Collector. It does not connect; a Redis that is down makes scrapes fail
// with 503 until it is back.
func NewCollector(cfg CollectorConfig, logger *slog.Logger) (*Collector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("redis collector config: %w", err)
	}
	if err := checkResolvable(context.Background(), cfg.Host); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Collector{
		cfg:    cfg,
		client: newClient(cfg.Host, cfg.Port, cfg.DB, cfg.Password, cfg.Timeout, nil),
		logger: logger.With("component", "redis-collector"),
		stale:  map[string]bool{},
	}, nil
}

// Close releases the Redis client.
func (c *Collector) Close() error {
	if err := c.client.Close(); err != nil {
		return fmt.Errorf("close redis client: %w", err)
	}
	return nil
}

// ServeHTTP answers a scrape with the merged exposition of every fresh
// instance, negotiating the format as promhttp does, or 503 when Redis
// cannot be read.
func (c *Collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	mfs, err := c.Gather(r.Context())
	if err != nil {
		c.logger.Warn("scrape failed", "err", err)
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	g := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { return mfs, nil })
	promhttp.HandlerFor(g, promhttp.HandlerOpts{}).ServeHTTP(w, r)
}

// Gather reads the instances set and, in one pipeline, the latest exposition
// and metadata of each instance; it drops instances with missing or stale
// metadata (and SREMs them when RemoveStale is set) and returns the merged
// families, sorted by name, with the instance label on every series. An
// instance whose exposition does not parse is skipped and logged; only a
// failure to read Redis is an error.
func (c *Collector) Gather(ctx context.Context) ([]*dto.MetricFamily, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()

	setKey := InstancesKey(c.cfg.KeyPrefix)
	instances, err := c.client.SMembers(ctx, setKey).Result()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", setKey, err)
	}
	sort.Strings(instances)

	type reads struct{ latest, meta *redis.StringCmd }
	cmds := make([]reads, len(instances))
	if len(instances) > 0 {
		_, err = c.client.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, inst := range instances {
				keys := instanceKeys(c.cfg.KeyPrefix, inst)
				cmds[i] = reads{latest: p.Get(ctx, keys.latest), meta: p.Get(ctx, keys.metadata)}
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("read instances' keys: %w", err)
		}
	}

	now := time.Now()
	m := newMerger(c.logger)
	var stale []string
	for i, inst := range instances {
		meta, err := readMetadata(cmds[i].meta)
		if err != nil {
			c.logger.Warn("instance skipped: unreadable metadata", "instance", inst, "err", err)
			continue
		}
		if isStale(meta, now) {
			c.noteStale(inst, true, meta, now)
			stale = append(stale, inst)
			continue
		}
		c.noteStale(inst, false, meta, now)
		text, err := cmds[i].latest.Bytes()
		if err != nil {
			c.logger.Warn("instance skipped: no latest exposition", "instance", inst, "err", err)
			continue
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
		if err != nil {
			c.logger.Warn("instance skipped: exposition does not parse", "instance", inst, "err", err)
			continue
		}
		m.add(inst, fams)
	}
	if c.cfg.RemoveStale && len(stale) > 0 {
		members := make([]any, len(stale))
		for i, s := range stale {
			members[i] = s
		}
		if err := c.client.SRem(ctx, setKey, members...).Err(); err != nil {
			c.logger.Warn("could not remove stale instances", "instances", stale, "err", err)
		}
	}
	return m.result(), nil
}

// noteStale logs an instance going stale or coming back, once per change.
func (c *Collector) noteStale(inst string, stale bool, meta Metadata, now time.Time) {
	c.mu.Lock()
	was, known := c.stale[inst]
	c.stale[inst] = stale
	c.mu.Unlock()
	if known && was == stale || !known && !stale {
		return
	}
	age := now.Sub(time.UnixMilli(int64(meta.Timestamp * 1000))).Round(time.Millisecond)
	if stale {
		c.logger.Warn("instance is stale and no longer served", "instance", inst, "age", age,
			"interval_seconds", meta.Interval, "remove", c.cfg.RemoveStale)
	} else {
		c.logger.Info("instance is fresh again", "instance", inst, "age", age)
	}
}

func readMetadata(cmd *redis.StringCmd) (Metadata, error) {
	var meta Metadata
	b, err := cmd.Bytes()
	if err != nil {
		return meta, fmt.Errorf("get metadata: %w", err)
	}
	if err := json.Unmarshal(b, &meta); err != nil {
		return meta, fmt.Errorf("decode metadata: %w", err)
	}
	if meta.Interval <= 0 {
		return meta, fmt.Errorf("metadata interval must be positive, got %v", meta.Interval)
	}
	if meta.Timestamp <= 0 {
		return meta, fmt.Errorf("metadata timestamp must be positive, got %v", meta.Timestamp)
	}
	return meta, nil
}

// isStale reports whether meta is older than staleFactor intervals. A
// timestamp in the future (clock skew between hosts) counts as fresh.
func isStale(meta Metadata, now time.Time) bool {
	age := float64(now.UnixMilli())/1000 - meta.Timestamp
	return age > staleFactor*meta.Interval
}

// merger merges the families of several instances into one set.
type merger struct {
	logger *slog.Logger
	fams   map[string]*dto.MetricFamily
	seen   map[string]struct{} // family name + label set, to drop duplicates
	order  map[*dto.Metric]string
}

func newMerger(logger *slog.Logger) *merger {
	return &merger{
		logger: logger,
		fams:   map[string]*dto.MetricFamily{},
		seen:   map[string]struct{}{},
		order:  map[*dto.Metric]string{},
	}
}

// add merges one instance's families, relabelling every series with
// instance=inst. A family whose type differs from the one already merged
// under that name is skipped for this instance, since one family cannot
// carry two types. The first HELP seen wins.
func (m *merger) add(inst string, fams map[string]*dto.MetricFamily) {
	for name, mf := range fams {
		into, ok := m.fams[name]
		if !ok {
			into = &dto.MetricFamily{Name: proto.String(name), Help: mf.Help, Type: mf.Type, Unit: mf.Unit}
			m.fams[name] = into
		} else if into.GetType() != mf.GetType() {
			m.logger.Warn("family skipped: type differs between instances",
				"instance", inst, "family", name, "type", mf.GetType(), "merged_type", into.GetType())
			continue
		}
		for _, metric := range mf.Metric {
			metric.Label = withInstance(metric.Label, inst)
			key := seriesKey(name, metric.Label)
			if _, dup := m.seen[key]; dup {
				m.logger.Debug("duplicate series dropped", "instance", inst, "family", name)
				continue
			}
			m.seen[key] = struct{}{}
			m.order[metric] = key
			into.Metric = append(into.Metric, metric)
		}
	}
}

// result returns the merged families sorted by name, their series sorted by
// label set, without empty families.
func (m *merger) result() []*dto.MetricFamily {
	out := make([]*dto.MetricFamily, 0, len(m.fams))
	for _, mf := range m.fams {
		if len(mf.Metric) == 0 {
			continue
		}
		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int { return strings.Compare(m.order[a], m.order[b]) })
		out = append(out, mf)
	}
	slices.SortFunc(out, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

// withInstance returns labels without any existing instance label, plus
// instance=inst, sorted by name.
func withInstance(labels []*dto.LabelPair, inst string) []*dto.LabelPair {
	out := make([]*dto.LabelPair, 0, len(labels)+1)
	for _, lp := range labels {
		if lp.GetName() != InstanceLabel {
			out = append(out, lp)
		}
	}
	out = append(out, &dto.LabelPair{Name: proto.String(InstanceLabel), Value: proto.String(inst)})
	slices.SortFunc(out, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
	return out
}

func seriesKey(name string, labels []*dto.LabelPair) string {
	var b strings.Builder
	b.WriteString(name)
	for _, lp := range labels {
		b.WriteByte(0xff)
		b.WriteString(lp.GetName())
		b.WriteByte(0xfe)
		b.WriteString(lp.GetValue())
	}
	return b.String()
}

// RunCollector serves the merged exposition of every forwarding instance on
// cfg.ListenAddress at cfg.MetricsPath (with a small landing page at "/"),
// through export's server and so with cfg.Web's TLS or web config, until ctx
// is done, then shuts the server down gracefully. It returns nil
// after a clean shutdown and an error if the configuration is bad, the host
// does not resolve, or the address cannot be bound.
func RunCollector(ctx context.Context, cfg CollectorConfig, logger *slog.Logger) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c, err := NewCollector(cfg, logger)
	if err != nil {
		return err
	}
	defer func() {
		if err := c.Close(); err != nil {
			logger.Debug("close redis collector", "err", err)
		}
	}()

	ln, err := net.Listen("tcp", cfg.ListenAddress)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.ListenAddress, err)
	}
	mux := http.NewServeMux()
	mux.Handle(cfg.MetricsPath, c)
	if cfg.MetricsPath != "/" {
		mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			fmt.Fprintf(w, "<html><head><title>gpe-ebpf redis-collect</title></head><body>"+
				"<h1>gpe-ebpf redis-collect</h1><p><a href=%q>Metrics</a></p></body></html>\n", cfg.MetricsPath)
		})
	}
	logger.Info("redis collector serving", "address", ln.Addr().String(), "path", cfg.MetricsPath,
		"redis", c.client.Options().Addr, "db", cfg.DB, "prefix", cfg.KeyPrefix)
	if err := export.Serve(ctx, ln, cfg.Web, mux, logger); err != nil {
		return fmt.Errorf("serve on %s: %w", cfg.ListenAddress, err)
	}
	logger.Info("redis collector stopped")
	return nil
}
