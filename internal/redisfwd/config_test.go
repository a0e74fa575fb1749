package redisfwd

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string // substring; empty means valid
	}{
		{name: "defaults", mutate: func(*Config) {}},
		{name: "empty host", mutate: func(c *Config) { c.Host = "" }, wantErr: "redis host must not be empty"},
		{name: "port 0", mutate: func(c *Config) { c.Port = 0 }, wantErr: "redis port must be in 1..65535, got 0"},
		{name: "port too big", mutate: func(c *Config) { c.Port = 65536 }, wantErr: "redis port must be in 1..65535, got 65536"},
		{name: "negative db", mutate: func(c *Config) { c.DB = -1 }, wantErr: "redis db must be >= 0, got -1"},
		{name: "zero interval", mutate: func(c *Config) { c.Interval = 0 }, wantErr: "redis forward interval must be positive"},
		{name: "negative interval", mutate: func(c *Config) { c.Interval = -time.Second }, wantErr: "redis forward interval must be positive"},
		{name: "empty instance", mutate: func(c *Config) { c.Instance = "" }, wantErr: "redis instance name must not be empty"},
		{name: "bad metrics port", mutate: func(c *Config) { c.MetricsPort = 70000 }, wantErr: "metrics port"},
		{name: "db 15 and a password", mutate: func(c *Config) { c.DB, c.Password = 15, "x" }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			checkErr(t, cfg.Validate(), tt.wantErr)
		})
	}
}

func TestDefaultConfig(t *testing.T) {
	cfg := DefaultConfig()
	if cfg.Enabled || cfg.Host != "localhost" || cfg.Port != 6379 || cfg.DB != 0 ||
		cfg.KeyPrefix != "gunicorn:metrics:" || cfg.Interval != 30*time.Second || cfg.Instance == "" {
		t.Fatalf("DefaultConfig() = %+v, want the documented defaults", cfg)
	}
}

func TestCollectorConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(*CollectorConfig)
		wantErr string
	}{
		{name: "defaults", mutate: func(*CollectorConfig) {}},
		{name: "port 0", mutate: func(c *CollectorConfig) { c.Port = 0 }, wantErr: "redis port must be in 1..65535, got 0"},
		{name: "negative db", mutate: func(c *CollectorConfig) { c.DB = -2 }, wantErr: "redis db must be >= 0, got -2"},
		{name: "empty host", mutate: func(c *CollectorConfig) { c.Host = "" }, wantErr: "redis host must not be empty"},
		{name: "listen address without port", mutate: func(c *CollectorConfig) { c.ListenAddress = "localhost" }, wantErr: `listen address "localhost"`},
		{name: "empty listen address", mutate: func(c *CollectorConfig) { c.ListenAddress = "" }, wantErr: "listen address must not be empty"},
		{name: "relative metrics path", mutate: func(c *CollectorConfig) { c.MetricsPath = "metrics" }, wantErr: "metrics path must start with /"},
		{name: "zero timeout", mutate: func(c *CollectorConfig) { c.Timeout = 0 }, wantErr: "redis timeout must be positive"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultCollectorConfig()
			tt.mutate(&cfg)
			checkErr(t, cfg.Validate(), tt.wantErr)
		})
	}
}

// TestBadSettingsAtStart checks that the constructors refuse what cannot
// work, with a message naming the culprit, before anything runs.
func TestBadSettingsAtStart(t *testing.T) {
	reg := prometheus.NewRegistry()
	tests := []struct {
		name    string
		mutate  func(*Config)
		wantErr string
		wantIs  error
	}{
		{name: "unresolvable host", mutate: func(c *Config) { c.Host = "no-such-host.invalid" }, wantErr: `resolve redis host "no-such-host.invalid"`},
		{name: "port 0", mutate: func(c *Config) { c.Port = 0 }, wantErr: "redis port must be in 1..65535, got 0"},
		{name: "negative db", mutate: func(c *Config) { c.DB = -1 }, wantErr: "redis db must be >= 0, got -1"},
		{name: "disabled", mutate: func(c *Config) { c.Enabled = false }, wantIs: ErrDisabled},
	}
	for _, tt := range tests {
		t.Run("forwarder/"+tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Enabled = true
			tt.mutate(&cfg)
			f, err := NewForwarder(cfg, reg, nil, nil)
			if err == nil {
				f.Close()
				t.Fatal("NewForwarder succeeded, want an error")
			}
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Fatalf("error %v, want errors.Is %v", err, tt.wantIs)
			}
			if tt.wantErr != "" {
				checkErr(t, err, tt.wantErr)
			}
		})
		if tt.wantIs != nil {
			continue
		}
		t.Run("collector/"+tt.name, func(t *testing.T) {
			fcfg := DefaultConfig()
			tt.mutate(&fcfg)
			cfg := DefaultCollectorConfig()
			cfg.Host, cfg.Port, cfg.DB = fcfg.Host, fcfg.Port, fcfg.DB
			cfg.ListenAddress = "127.0.0.1:0"
			// RunCollector must fail at once, not serve.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			err := RunCollector(ctx, cfg, nil)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("RunCollector = %v (ctx %v), want an immediate error", err, ctx.Err())
			}
			checkErr(t, err, tt.wantErr)
		})
	}
	t.Run("forwarder/nil gatherer", func(t *testing.T) {
		cfg := DefaultConfig()
		cfg.Enabled = true
		if _, err := NewForwarder(cfg, nil, nil, nil); err == nil {
			t.Fatal("NewForwarder with a nil gatherer succeeded")
		}
	})
}

func TestTimestampTTL(t *testing.T) {
	tests := []struct {
		interval, want time.Duration
	}{
		{30 * time.Second, 90 * time.Second},
		{time.Second, 3 * time.Second},
		{500 * time.Millisecond, 2 * time.Second},
		{200 * time.Millisecond, time.Second},
		{10 * time.Millisecond, time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.interval.String(), func(t *testing.T) {
			if got := TimestampTTL(tt.interval); got != tt.want {
				t.Fatalf("TimestampTTL(%s) = %s, want %s", tt.interval, got, tt.want)
			}
		})
	}
}

func checkErr(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Fatalf("unexpected error: %v", err)
	case want != "" && err == nil:
		t.Fatalf("no error, want one containing %q", want)
	case want != "" && !strings.Contains(err.Error(), want):
		t.Fatalf("error %q does not contain %q", err, want)
	}
}
