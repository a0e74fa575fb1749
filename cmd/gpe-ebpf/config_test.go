package main

import (
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// TestPrecedence: a flag beats its environment variable, which beats the default (README "Configuration").
func TestPrecedence(t *testing.T) {
	cert, key := selfSigned(t)
	cert2, key2 := selfSigned(t)
	envAll := env(
		"PROMETHEUS_METRICS_PORT", "9200",
		"PROMETHEUS_BIND_ADDRESS", "127.0.0.2",
		"PROMETHEUS_SSL_CERTFILE", cert2,
		"PROMETHEUS_SSL_KEYFILE", key2,
		"PROMETHEUS_MULTIPROC_DIR", t.TempDir(),
		"GUNICORN_WORKERS", "4",
		"REDIS_ENABLED", "on",
		"REDIS_HOST", "redis.env",
		"REDIS_PORT", "6380",
		"REDIS_DB", "3",
		"REDIS_PASSWORD", "envsecret",
		"REDIS_KEY_PREFIX", "env:",
		"REDIS_FORWARD_INTERVAL", "7",
		"REDIS_INSTANCE", "env-instance",
	)
	flagDir := t.TempDir()
	flags := []string{
		"--metrics-port", "9300", "--bind-address", "127.0.0.3",
		"--tls-cert-file", cert, "--tls-key-file", key, "--multiproc-dir", flagDir,
		"--workers", "8", "--redis-enabled", "false", "--redis-host", "redis.flag", "--redis-port", "6381",
		"--redis-db", "5", "--redis-password", "flagsecret", "--redis-key-prefix", "flag:",
		"--redis-forward-interval", "9", "--redis-instance", "flag-instance",
	}

	type view struct {
		Port                     int
		Bind, Cert, Key, MPDir   string
		Workers                  int
		RedisOn                  bool
		RHost                    string
		RPort, RDB               int
		RPass, RPrefix, Instance string
		Interval                 time.Duration
	}
	get := func(c Config) view {
		return view{c.Server.Port, c.Server.BindAddress, c.Server.TLSCertFile, c.Server.TLSKeyFile, c.Multiproc,
			c.Workers, c.Redis.Enabled, c.Redis.Host, c.Redis.Port, c.Redis.DB, c.Redis.Password, c.Redis.KeyPrefix,
			c.Redis.Instance, c.Redis.Interval}
	}
	def := defaultConfig()
	cases := []struct {
		name   string
		args   []string
		lookup func(string) (string, bool)
		want   view
	}{
		{"defaults", nil, env(), view{9090, "0.0.0.0", "", "", "", 0, false, "localhost", 6379, 0, "", "gunicorn:metrics:", def.Redis.Instance, 30 * time.Second}},
		{"environment over defaults", nil, envAll, view{9200, "127.0.0.2", cert2, key2, "", 4, true, "redis.env", 6380, 3, "envsecret", "env:", "env-instance", 7 * time.Second}},
		{"flags over environment", flags, envAll, view{9300, "127.0.0.3", cert, key, flagDir, 8, false, "redis.flag", 6381, 5, "flagsecret", "flag:", "flag-instance", 9 * time.Second}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := parseConfig(append([]string{"--pid", "1"}, c.args...), c.lookup, io.Discard)
			if err != nil {
				t.Fatalf("parseConfig: %v", err)
			}
			got := get(cfg)
			if c.name == "environment over defaults" {
				got.MPDir = "" // a fresh temp dir; checked below
				if cfg.Multiproc == "" {
					t.Errorf("PROMETHEUS_MULTIPROC_DIR not applied")
				}
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
			if cfg.Redis.MetricsPort != cfg.Server.Port {
				t.Errorf("redis metadata port %d, metrics port %d", cfg.Redis.MetricsPort, cfg.Server.Port)
			}
		})
	}
}

// TestRedisEnabledValues: REDIS_ENABLED takes the reference's spellings, case-insensitively.
func TestRedisEnabledValues(t *testing.T) {
	for v, want := range map[string]bool{"true": true, "1": true, "yes": true, "on": true, "TRUE": true, "On": true,
		"false": false, "0": false, "no": false, "off": false} {
		cfg, err := parseConfig([]string{"--pid", "1"}, env("REDIS_ENABLED", v), io.Discard)
		if err != nil {
			t.Errorf("REDIS_ENABLED=%s: %v", v, err)
			continue
		}
		if cfg.Redis.Enabled != want {
			t.Errorf("REDIS_ENABLED=%s: enabled %v, want %v", v, cfg.Redis.Enabled, want)
		}
	}
}

// TestHooksFlag: --hooks reaches the probes' config as given, auto by default.
func TestHooksFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{{nil, "auto"}, {[]string{"--hooks", "socket"}, "socket"}, {[]string{"--hooks", "fentry"}, "fentry"}, {[]string{"--hooks", "kprobe"}, "kprobe"}, {[]string{"--hooks", "syscall"}, "syscall"}} {
		cfg, err := parseConfig(append([]string{"--pid", "1"}, tc.args...), env(), io.Discard)
		if err != nil || cfg.Probes.Hooks != tc.want {
			t.Errorf("%v: hooks %q, %v; want %q", tc.args, cfg.Probes.Hooks, err, tc.want)
		}
	}
}

// TestIgnoreRoutes: --ignore-route is repeatable and reaches the aggregator's config.
func TestIgnoreRoutes(t *testing.T) {
	cfg, err := parseConfig([]string{"--pid", "1", "--ignore-route", "/healthz", "--ignore-route", "/-/{probe}", "--route", "/users/{id}"}, env(), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/healthz", "/-/{probe}"}; !reflect.DeepEqual(cfg.Agent.Aggregate.IgnoreRoutes, want) {
		t.Errorf("IgnoreRoutes %q, want %q", cfg.Agent.Aggregate.IgnoreRoutes, want)
	}
	if want := []string{"/users/{id}"}; !reflect.DeepEqual(cfg.Agent.Aggregate.Routes, want) {
		t.Errorf("Routes %q, want %q", cfg.Agent.Aggregate.Routes, want)
	}
	cfg, err = parseConfig([]string{"--pid", "1"}, env(), io.Discard)
	if err != nil || len(cfg.Agent.Aggregate.IgnoreRoutes) != 0 {
		t.Errorf("default IgnoreRoutes %q (%v), want none", cfg.Agent.Aggregate.IgnoreRoutes, err)
	}
}

// TestReady: /-/ready wants a master, except under --discover, where serving is enough.
func TestReady(t *testing.T) {
	agg := aggregate.New(aggregate.DefaultConfig())
	if ready(false, agg)() {
		t.Error("ready with no master and no --discover")
	}
	if !ready(true, agg)() {
		t.Error("not ready under --discover on a node without Gunicorn")
	}
	agg.AddMaster(100, time.Now(), "app:app")
	if !ready(false, agg)() {
		t.Error("not ready with a master")
	}
}

// TestTLSUprobesFlag: --tls-uprobes turns the probes' TLS programs on (auto, the default, or
// perf: perf-event uprobes) or off.
func TestTLSUprobesFlag(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		tls, perf bool
	}{
		{nil, true, false},
		{[]string{"--tls-uprobes", "auto"}, true, false},
		{[]string{"--tls-uprobes", "perf"}, true, true},
		{[]string{"--tls-uprobes", "off"}, false, false},
	} {
		cfg, err := parseConfig(append([]string{"--pid", "1"}, tc.args...), env(), io.Discard)
		if err != nil || cfg.Probes.TLS != tc.tls || cfg.Probes.TLSPerfEvents != tc.perf {
			t.Errorf("%v: tls %v perf %v, %v; want %v %v", tc.args, cfg.Probes.TLS, cfg.Probes.TLSPerfEvents, err, tc.tls, tc.perf)
		}
	}
	if _, err := parseConfig([]string{"--pid", "1", "--tls-uprobes", "kprobe"}, env(), io.Discard); err == nil {
		t.Error("--tls-uprobes kprobe accepted")
	}
}

// TestPushAndNativeFlags: --native-histograms reaches the aggregator, --otlp-* the pusher; a
// bad endpoint or interval is a usage error.
func TestPushAndNativeFlags(t *testing.T) {
	cfg, err := parseConfig([]string{"--pid", "1"}, env(), io.Discard)
	if err != nil || cfg.Agent.Aggregate.NativeHistograms || cfg.OTLP.Endpoint != "" || cfg.OTLP.Interval != 30*time.Second {
		t.Errorf("defaults: native %v, OTLP %+v, %v; want off, none, 30s", cfg.Agent.Aggregate.NativeHistograms, cfg.OTLP, err)
	}
	cfg, err = parseConfig([]string{"--pid", "1", "--native-histograms", "--otlp-endpoint", "http://127.0.0.1:4318", "--otlp-interval", "5s"}, env(), io.Discard)
	if err != nil || !cfg.Agent.Aggregate.NativeHistograms || cfg.OTLP.Endpoint != "http://127.0.0.1:4318" || cfg.OTLP.Interval != 5*time.Second {
		t.Errorf("set: native %v, OTLP %+v, %v", cfg.Agent.Aggregate.NativeHistograms, cfg.OTLP, err)
	}
	for _, args := range [][]string{{"--otlp-endpoint", "collector:4318"}, {"--otlp-endpoint", "ftp://x"}, {"--otlp-interval", "10ms"}} {
		var ue usageError
		if _, err := parseConfig(append([]string{"--pid", "1"}, args...), env(), io.Discard); !errors.As(err, &ue) || !strings.Contains(err.Error(), args[0]) {
			t.Errorf("%v: %v, want a usage error naming %s", args, err, args[0])
		}
	}
}
