package redisfwd

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/export"
	"github.com/gpe-ebpf/gpe-ebpf/internal/setting"
)

// Settings are the rows of a Forwarder's c. The checks are each row's; Validate, run after
// them, tests the whole when forwarding is on.
func Settings(c *Config) []setting.Setting {
	enabled := strconv.FormatBool(c.Enabled) // the Python exporter's words: true/1/yes/on
	secs := int(c.Interval / time.Second)
	rows := []setting.Setting{{Name: "redis-enabled", Env: "REDIS_ENABLED", Group: setting.Redis, Value: setting.String(&enabled),
		Help: "forward the exposition to Redis (true/1/yes/on)",
		Check: func(name string) (err error) {
			if c.Enabled, err = parseBool(enabled); err != nil {
				return fmt.Errorf("invalid value %q for %s: %v", enabled, name, err)
			}
			return nil
		}}}
	return append(append(rows, c.Conn.settings()...),
		setting.Setting{Name: "redis-forward-interval", Env: "REDIS_FORWARD_INTERVAL", Group: setting.Redis, Value: setting.Int(&secs),
			Help: "seconds between forwards",
			Check: func(name string) error {
				c.Interval = time.Duration(secs) * time.Second
				return setting.Require(secs >= 1, "invalid %s %d: at least 1 second", name, secs)
			}},
		setting.Setting{Name: "redis-instance", Env: "REDIS_INSTANCE", Group: setting.Redis, Value: setting.String(&c.Instance),
			Help: "instance name in the Redis keys; the default is the host name",
			// The last Redis row: every other one is set, so the whole is checked here.
			Check: func(string) error {
				if !c.Enabled {
					return nil
				}
				if err := c.Validate(); err != nil {
					return fmt.Errorf("invalid Redis settings: %w", err)
				}
				return nil
			}})
}

// CollectorSettings are the rows of a Collector's c, its server's TLS included.
func CollectorSettings(c *CollectorConfig) []setting.Setting {
	return append(append(c.Conn.settings(),
		setting.Setting{Name: "listen-address", Group: setting.Endpoint, Value: setting.String(&c.ListenAddress), Help: "where to serve the merged metrics"},
		setting.Setting{Name: "metrics-path", Group: setting.Endpoint, Value: setting.String(&c.MetricsPath), Help: "path of the merged metrics"},
		setting.Setting{Name: "timeout", Group: setting.Redis, Value: setting.Duration(&c.Timeout), Help: "bound on the Redis reads of one scrape"},
		setting.Setting{Name: "remove-stale", Group: setting.Redis, Value: setting.Bool(&c.RemoveStale), Help: "SREM instances whose latest forward is older than 3 intervals"},
	), export.TLSSettings(&c.Web)...)
}

// settings are the rows that address Redis, the same for gpe-ebpf and redis-collect; Validate
// checks them.
func (c *Conn) settings() []setting.Setting {
	return []setting.Setting{
		{Name: "redis-host", Env: "REDIS_HOST", Group: setting.Redis, Value: setting.String(&c.Host), Help: "Redis host"},
		{Name: "redis-port", Env: "REDIS_PORT", Group: setting.Redis, Value: setting.Int(&c.Port), Help: "Redis port"},
		{Name: "redis-db", Env: "REDIS_DB", Group: setting.Redis, Value: setting.Int(&c.DB), Help: "Redis database"},
		{Name: "redis-password", Env: "REDIS_PASSWORD", Group: setting.Redis, Value: setting.String(&c.Password), Help: "Redis password"},
		{Name: "redis-key-prefix", Env: "REDIS_KEY_PREFIX", Group: setting.Redis, Value: setting.String(&c.KeyPrefix), Help: "prefix of every Redis key"},
	}
}

func parseBool(s string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1", "yes", "on":
		return true, nil
	case "false", "0", "no", "off", "":
		return false, nil
	}
	return false, errors.New("want true/1/yes/on or false/0/no/off")
}
