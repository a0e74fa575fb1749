package redisfwd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/gpe-ebpf/gpe-ebpf/internal/export"
)

// DefaultKeyPrefix is the prefix of every key the forwarder writes, as in the
// Python exporter (REDIS_KEY_PREFIX).
const DefaultKeyPrefix = "gunicorn:metrics:"

// ErrDisabled is returned by NewForwarder when Config.Enabled is false, so a
// caller that forgot to check the switch finds out at start, not silently.
var ErrDisabled = errors.New("redis forwarding is disabled")

// Conn addresses Redis, the same for a Forwarder and a Collector.
type Conn struct {
	// Host is the Redis host name or address (--redis-host / REDIS_HOST).
	Host string
	// Port is the Redis TCP port, 1..65535 (--redis-port / REDIS_PORT).
	Port int
	// DB is the Redis database number, >= 0 (--redis-db / REDIS_DB).
	DB int
	// Password is sent with AUTH when non-empty (--redis-password / REDIS_PASSWORD).
	Password string
	// KeyPrefix starts every key (--redis-key-prefix / REDIS_KEY_PREFIX); a
	// collector's must match the forwarders'.
	KeyPrefix string
}

// defaultConn is localhost:6379, DB 0, no password, prefix "gunicorn:metrics:".
func defaultConn() Conn { return Conn{Host: "localhost", Port: 6379, KeyPrefix: DefaultKeyPrefix} }

// Config configures a Forwarder. Build it with DefaultConfig and override
// fields from flags and environment.
type Config struct {
	// Enabled is the operator's switch (--redis-enabled / REDIS_ENABLED).
	// NewForwarder refuses to build a forwarder when it is false.
	Enabled bool
	Conn
	// Interval is the time between two forwards (--redis-forward-interval /
	// REDIS_FORWARD_INTERVAL, in seconds on the command line).
	Interval time.Duration
	// Instance names this gpe-ebpf in the keys and in the instances set
	// (--redis-instance); it defaults to the host name.
	Instance string
	// MetricsPort is the port /metrics is served on, recorded in the metadata
	// so a reader knows where the live endpoint is (--metrics-port).
	MetricsPort int
}

// DefaultConfig returns the documented defaults: disabled, localhost:6379,
// DB 0, no password, prefix "gunicorn:metrics:", every 30 s, instance = host
// name, metrics port 9090.
func DefaultConfig() Config {
	instance, err := os.Hostname()
	if err != nil || instance == "" {
		instance = "localhost"
	}
	return Config{
		Conn:        defaultConn(),
		Interval:    30 * time.Second,
		Instance:    instance,
		MetricsPort: 9090,
	}
}

// Validate reports the first setting that cannot work, naming it as the
// command line does. It does not touch the network: whether Host resolves is
// checked by NewForwarder.
func (c Config) Validate() error {
	if err := c.Conn.validate(); err != nil {
		return err
	}
	if c.Interval <= 0 {
		return fmt.Errorf("redis forward interval must be positive, got %s", c.Interval)
	}
	if c.Instance == "" {
		return errors.New("redis instance name must not be empty")
	}
	if c.MetricsPort < 0 || c.MetricsPort > 65535 {
		return fmt.Errorf("metrics port must be in 0..65535, got %d", c.MetricsPort)
	}
	return nil
}

// CollectorConfig configures a Collector, the reading side behind the
// `gpe-ebpf redis-collect` subcommand.
type CollectorConfig struct {
	Conn
	// ListenAddress is where RunCollector serves HTTP, e.g. ":9091".
	ListenAddress string
	// MetricsPath is the path of the merged exposition, e.g. "/metrics".
	MetricsPath string
	// Web is the server's TLS: a key pair, or an exporter-toolkit web config
	// (export.Serve). Its address and path are ListenAddress and MetricsPath.
	Web export.ServerConfig
	// Timeout bounds the Redis reads behind one scrape.
	Timeout time.Duration
	// RemoveStale makes the collector SREM an instance from the instances set
	// when its metadata is older than 3 x its interval. Off by default: the
	// collector is then read-only, several collectors can share one Redis, and
	// a stale instance costs only two GETs per scrape. The instance's
	// :latest and :metadata keys are never deleted either way; a forwarder
	// that comes back SADDs itself again on its next forward.
	RemoveStale bool
}

// DefaultCollectorConfig returns localhost:6379, DB 0, no password, prefix
// "gunicorn:metrics:", serving /metrics on :9091 with a 5 s Redis timeout.
func DefaultCollectorConfig() CollectorConfig {
	return CollectorConfig{
		Conn:          defaultConn(),
		ListenAddress: ":9091",
		MetricsPath:   "/metrics",
		Timeout:       5 * time.Second,
	}
}

// Validate reports the first setting that cannot work. Whether Host resolves
// is checked by NewCollector.
func (c CollectorConfig) Validate() error {
	if err := c.Conn.validate(); err != nil {
		return err
	}
	if c.ListenAddress == "" {
		return errors.New("listen address must not be empty")
	}
	if _, _, err := net.SplitHostPort(c.ListenAddress); err != nil {
		return fmt.Errorf("listen address %q: %w", c.ListenAddress, err)
	}
	if len(c.MetricsPath) == 0 || c.MetricsPath[0] != '/' {
		return fmt.Errorf("metrics path must start with /, got %q", c.MetricsPath)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("redis timeout must be positive, got %s", c.Timeout)
	}
	return nil
}

func (c Conn) validate() error {
	if c.Host == "" {
		return errors.New("redis host must not be empty")
	}
	if c.Port < 1 || c.Port > 65535 {
		return fmt.Errorf("redis port must be in 1..65535, got %d", c.Port)
	}
	if c.DB < 0 {
		return fmt.Errorf("redis db must be >= 0, got %d", c.DB)
	}
	return nil
}

// resolveTimeout bounds the start-up lookup of the Redis host.
const resolveTimeout = 5 * time.Second

// checkResolvable fails when host does not resolve, naming it, so a typo in
// --redis-host is reported at start rather than as a stream of dial errors.
func checkResolvable(ctx context.Context, host string) error {
	if net.ParseIP(host) != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupHost(ctx, host)
	if err != nil {
		return fmt.Errorf("resolve redis host %q: %w", host, err)
	}
	if len(addrs) == 0 {
		return fmt.Errorf("resolve redis host %q: no addresses", host)
	}
	return nil
}

// newClient builds a go-redis client whose own retries are off (the callers
// retry with their own bounded back-off, and count), whose timeouts follow
// the caller's context, and which speaks RESP2 so any Redis >= 2.6 works.
// PoolSize is small: after that many failed dials go-redis stops dialing and
// probes the server once a second in the background, so a dead Redis costs
// one fast error per attempt instead of a dial storm. dialer may be nil
// (the go-redis default).
func newClient(host string, port, db int, password string, timeout time.Duration,
	dialer func(ctx context.Context, network, addr string) (net.Conn, error),
) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:                  net.JoinHostPort(host, strconv.Itoa(port)),
		Dialer:                dialer,
		DB:                    db,
		Password:              password,
		Protocol:              2,
		MaxRetries:            -1,
		DialTimeout:           timeout,
		DialerRetries:         1,
		ReadTimeout:           timeout,
		WriteTimeout:          timeout,
		ContextTimeoutEnabled: true,
		PoolSize:              2,
		DisableIdentity:       true,
		MaintNotificationsConfig: &maintnotifications.Config{
			Mode: maintnotifications.ModeDisabled,
		},
	})
}
