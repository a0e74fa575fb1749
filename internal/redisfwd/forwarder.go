package redisfwd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/redis/go-redis/v9"
)

// ForwarderName is the value of the metadata "forwarder" field.
const ForwarderName = "redis"

// Retry policy of one forward. All attempts of a forward share one deadline,
// the interval (or the caller's earlier deadline), so a forward never runs
// into the next one and Run never falls behind.
const (
	maxAttempts       = 4
	maxAttemptTimeout = 5 * time.Second
	minBackoff        = 10 * time.Millisecond
	maxBackoff        = 10 * time.Second
	// finalForwardTimeout bounds the forward Run makes after its context is
	// done, so shutdown stays within the contract's 2 s.
	finalForwardTimeout = time.Second
)

// Metadata is the JSON stored at {prefix}{instance}:metadata.
type Metadata struct {
	// Timestamp is when the forwarded exposition was gathered, in unix
	// seconds with a fractional part (float, millisecond precision).
	Timestamp float64 `json:"timestamp"`
	// Host is the host name of the machine gpe-ebpf runs on.
	Host string `json:"host"`
	// Port is the port the live /metrics is served on.
	Port int `json:"port"`
	// Interval is the forward interval in seconds (float, so sub-second
	// intervals survive).
	Interval float64 `json:"interval"`
	// Forwarder is always "redis".
	Forwarder string `json:"forwarder"`
	// Masters lists the PIDs of the Gunicorn masters observed; never null.
	Masters []int `json:"masters"`
	// Instance repeats the instance name of the keys.
	Instance string `json:"instance"`
}

// Forwarder writes the exposition gathered from a prometheus.Gatherer to
// Redis every interval. Redis being slow or down never blocks anyone but the
// forwarder's own goroutine: each forward has a deadline, failures are
// counted and logged, and the next interval simply tries again.
type Forwarder struct {
	cfg      Config
	gatherer prometheus.Gatherer
	masters  func() []int
	logger   *slog.Logger
	client   *redis.Client
	conns    *connSet
	hostname string

	forwardErrors prometheus.Counter
	lastForward   prometheus.Gauge

	mu           sync.Mutex // serialises forwards and guards the outage state
	failures     int        // consecutive failed forwards
	failingSince time.Time
	notify       func() (written func())

	closeOnce sync.Once
	closeErr  error
}

// NewForwarder validates cfg, checks that the Redis host resolves and builds
// a Forwarder over g. masters, which may be nil, returns the master PIDs
// recorded in the metadata. It does not connect: Redis may well be down at
// start, and Run retries until it is up.
func NewForwarder(cfg Config, g prometheus.Gatherer, masters func() []int, logger *slog.Logger) (*Forwarder, error) {
	if !cfg.Enabled {
		return nil, ErrDisabled
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("redis forwarder config: %w", err)
	}
	if g == nil {
		return nil, errors.New("redis forwarder: nil gatherer")
	}
	if err := checkResolvable(context.Background(), cfg.Host); err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if masters == nil {
		masters = func() []int { return nil }
	}
	hostname, err := os.Hostname()
	if err != nil || hostname == "" {
		hostname = cfg.Instance
	}
	conns := newConnSet()
	f := &Forwarder{
		cfg:      cfg,
		gatherer: g,
		masters:  masters,
		logger:   logger.With("component", "redis-forwarder"),
		client:   newClient(cfg.Host, cfg.Port, cfg.DB, cfg.Password, attemptTimeout(cfg.Interval), conns.dial),
		conns:    conns,
		hostname: hostname,
		forwardErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gpe_ebpf_redis_forward_errors_total",
			Help: "Forwards to Redis that failed after all retries (each failed forward counts once).",
		}),
		lastForward: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "gpe_ebpf_redis_last_forward_timestamp_seconds",
			Help: "Unix time at which the last successfully forwarded exposition was gathered.",
		}),
	}
	return f, nil
}

// Collectors returns the forwarder's own metrics, to be registered on the
// registry /metrics serves: gpe_ebpf_redis_forward_errors_total and
// gpe_ebpf_redis_last_forward_timestamp_seconds.
func (f *Forwarder) Collectors() []prometheus.Collector {
	return []prometheus.Collector{f.forwardErrors, f.lastForward}
}

// NotifyForwarded sets a function called before each gathering; the function it returns is
// called once the exposition of that gathering is written to Redis. gpe-ebpf keeps the series
// of an exited worker until then (aggregate.Aggregator.BeginForward), so that Redis too sees
// its final values. Call it before Run.
func (f *Forwarder) NotifyForwarded(before func() (written func())) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.notify = before
}

// Run forwards at once, then every interval until ctx is done, then makes
// one final forward bounded by about a second, and closes the Redis client.
// Call it once, in its own goroutine; it returns only after ctx is done.
// Failures are counted and logged, never returned: Redis being down is not a
// reason to stop gpe-ebpf.
func (f *Forwarder) Run(ctx context.Context) {
	defer func() {
		if err := f.Close(); err != nil {
			f.logger.Debug("close redis client", "err", err)
		}
	}()
	f.logger.Info("redis forwarding started",
		"addr", f.client.Options().Addr, "db", f.cfg.DB, "instance", f.cfg.Instance,
		"interval", f.cfg.Interval, "prefix", f.cfg.KeyPrefix)

	ticker := time.NewTicker(f.cfg.Interval)
	defer ticker.Stop()
	for {
		// Errors are counted and logged by Forward.
		_ = f.Forward(ctx)
		select {
		case <-ctx.Done():
			final, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalForwardTimeout)
			err := f.Forward(final)
			cancel()
			if err == nil {
				f.logger.Info("redis forwarding stopped after a final forward")
			} else {
				f.logger.Warn("redis forwarding stopped; final forward failed", "err", err)
			}
			return
		case <-ticker.C:
		}
	}
}

// Forward gathers once and writes the result to Redis, retrying with
// exponential back-off until it succeeds, maxAttempts are spent, or the
// deadline passes: ctx's deadline or one interval from now, whichever is
// earlier. A failure increments gpe_ebpf_redis_forward_errors_total, unless
// it is only ctx being cancelled. Safe for concurrent use; forwards are
// serialised.
func (f *Forwarder) Forward(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()

	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, f.cfg.Interval)
	defer cancel()

	now := time.Now()
	var written func()
	if f.notify != nil {
		written = f.notify()
	}
	text, err := f.render()
	if err == nil {
		err = f.write(ctx, now, text)
	}
	if err == nil && written != nil {
		written()
	}
	if err != nil {
		if errors.Is(parent.Err(), context.Canceled) {
			// The caller is shutting down; Run follows with a final forward.
			return err
		}
		f.forwardErrors.Inc()
		f.failures++
		if f.failures == 1 {
			f.failingSince = now
		}
		f.logger.Warn("redis forward failed; retrying next interval",
			"err", err, "consecutive_failures", f.failures, "addr", f.client.Options().Addr)
		return err
	}
	f.lastForward.Set(float64(now.UnixMilli()) / 1000)
	if f.failures > 0 {
		f.logger.Info("redis forwarding resumed",
			"failed_forwards", f.failures, "since_first_failure", time.Since(f.failingSince).Round(time.Millisecond))
		f.failures = 0
	} else {
		f.logger.Debug("forwarded to redis", "bytes", len(text))
	}
	return nil
}

// Close releases the Redis client. Run calls it on return; call it yourself
// only if Run was never started. It is safe to call more than once.
func (f *Forwarder) Close() error {
	f.closeOnce.Do(func() {
		// A connection the forwarder already closed to abandon a hung forward (conns.go)
		// reports net.ErrClosed here: it is closed, as asked.
		if err := f.client.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			f.closeErr = fmt.Errorf("close redis client: %w", err)
		}
	})
	return f.closeErr
}

// render gathers once and renders text format 0.0.4. As promhttp does with
// ContinueOnError, a partial gather is forwarded and the error logged: one
// broken collector must not blank the whole forward.
func (f *Forwarder) render() ([]byte, error) {
	mfs, err := f.gatherer.Gather()
	if err != nil {
		if len(mfs) == 0 {
			return nil, fmt.Errorf("gather: %w", err)
		}
		f.logger.Warn("gather was partial; forwarding what was gathered", "err", err)
	}
	return renderText(mfs)
}

// renderText encodes families as the text exposition format 0.0.4.
func renderText(mfs []*dto.MetricFamily) ([]byte, error) {
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return nil, fmt.Errorf("encode %s: %w", mf.GetName(), err)
		}
	}
	return buf.Bytes(), nil
}

// write stores one gathered exposition, retrying within ctx.
func (f *Forwarder) write(ctx context.Context, at time.Time, text []byte) error {
	masters := f.masters()
	if masters == nil {
		masters = []int{}
	}
	meta, err := json.Marshal(Metadata{
		Timestamp: float64(at.UnixMilli()) / 1000,
		Host:      f.hostname,
		Port:      f.cfg.MetricsPort,
		Interval:  f.cfg.Interval.Seconds(),
		Forwarder: ForwarderName,
		Masters:   masters,
		Instance:  f.cfg.Instance,
	})
	if err != nil {
		return fmt.Errorf("encode metadata: %w", err)
	}

	keys := instanceKeys(f.cfg.KeyPrefix, f.cfg.Instance)
	tsKey := keys.base + strconv.FormatInt(at.Unix(), 10)
	ttl := TimestampTTL(f.cfg.Interval)
	timeout := attemptTimeout(f.cfg.Interval)
	backoff := backoffBase(f.cfg.Interval)

	attempt := 1
	for ; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, timeout)
		// When the forward is cancelled (shutdown) or out of time, abandon
		// the round trip now rather than at the socket deadline.
		stop := context.AfterFunc(ctx, f.conns.closeAll)
		_, err = f.client.TxPipelined(actx, func(p redis.Pipeliner) error {
			p.Set(actx, keys.latest, text, 0)
			p.SetEx(actx, tsKey, text, ttl)
			p.Set(actx, keys.metadata, meta, 0)
			p.SAdd(actx, InstancesKey(f.cfg.KeyPrefix), f.cfg.Instance)
			return nil
		})
		stop()
		cancel()
		if err == nil {
			return nil
		}
		if attempt >= maxAttempts || ctx.Err() != nil {
			break
		}
		if dl, ok := ctx.Deadline(); ok && time.Until(dl) < backoff {
			break
		}
		f.logger.Debug("redis write failed; backing off", "attempt", attempt, "backoff", backoff, "err", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		if ctx.Err() != nil {
			break
		}
		backoff = min(2*backoff, backoffCap(f.cfg.Interval))
	}
	return fmt.Errorf("write to redis (%d attempts): %w", attempt, err)
}

// TimestampTTL is the expiry of the {prefix}{instance}:{unix_ts} keys: three
// intervals, rounded up to whole seconds because SETEX counts in seconds,
// and at least one second.
func TimestampTTL(interval time.Duration) time.Duration {
	secs := math.Ceil((3 * interval).Seconds())
	return time.Duration(max(secs, 1)) * time.Second
}

// InstancesKey is the set of instance names that forward under prefix.
func InstancesKey(prefix string) string { return prefix + "instances" }

type keySet struct{ base, latest, metadata string }

func instanceKeys(prefix, instance string) keySet {
	base := prefix + instance + ":"
	return keySet{base: base, latest: base + "latest", metadata: base + "metadata"}
}

// attemptTimeout bounds one round trip: half an interval, at most 5 s.
func attemptTimeout(interval time.Duration) time.Duration {
	return min(max(interval/2, 50*time.Millisecond), maxAttemptTimeout)
}

// backoffBase is the first pause between attempts: 1/32 of the interval,
// clamped to 10 ms..1 s (about 0.94 s for the default 30 s). It doubles
// after each failed attempt, up to backoffCap.
func backoffBase(interval time.Duration) time.Duration {
	return min(max(interval/32, minBackoff), time.Second)
}

// backoffCap is the longest pause between attempts: a quarter of the
// interval, at most 10 s. With the default 30 s interval the pauses are
// 0.94 s, 1.9 s and 3.75 s, so four attempts against a dead Redis are over
// about 6.6 s after the tick, well inside the interval.
func backoffCap(interval time.Duration) time.Duration {
	return min(max(interval/4, minBackoff), maxBackoff)
}
