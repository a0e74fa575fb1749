package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/gpe-ebpf/gpe-ebpf/internal/agent"
	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/export"
	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
	"github.com/gpe-ebpf/gpe-ebpf/internal/redisfwd"
)

// Config is everything gpe-ebpf is told, built once from flags, then environment, then defaults.
type Config struct {
	Agent     agent.Config // the target, sampling, and the aggregate's labels
	Workers   int
	Multiproc string

	LogLevel  string
	LogFormat string

	Server export.ServerConfig
	Probes probes.Config
	Redis  redisfwd.Config
	OTLP   export.OTLPConfig

	ShowVersion bool
}

// usageError is a bad flag or environment value: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// envFlag ties a flag to its environment variable (README "Configuration").
type envFlag struct{ flag, env string }

// redisConnEnv are the flags that address Redis, the same for gpe-ebpf and redis-collect
// (redisConnFlags defines them).
var redisConnEnv = []envFlag{
	{"redis-host", "REDIS_HOST"},
	{"redis-port", "REDIS_PORT"},
	{"redis-db", "REDIS_DB"},
	{"redis-password", "REDIS_PASSWORD"},
	{"redis-key-prefix", "REDIS_KEY_PREFIX"},
}

var envFlags = append([]envFlag{
	{"metrics-port", "PROMETHEUS_METRICS_PORT"},
	{"bind-address", "PROMETHEUS_BIND_ADDRESS"},
	{"tls-cert-file", "PROMETHEUS_SSL_CERTFILE"},
	{"tls-key-file", "PROMETHEUS_SSL_KEYFILE"},
	{"multiproc-dir", "PROMETHEUS_MULTIPROC_DIR"},
	{"workers", "GUNICORN_WORKERS"},
	{"redis-enabled", "REDIS_ENABLED"},
	{"redis-forward-interval", "REDIS_FORWARD_INTERVAL"},
	{"redis-instance", "REDIS_INSTANCE"},
}, redisConnEnv...)

// redisConnFlags defines the flags of redisConnEnv on fs, with the values in the pointers as
// defaults.
func redisConnFlags(fs *pflag.FlagSet, host *string, port, db *int, password, keyPrefix *string) {
	fs.StringVar(host, "redis-host", *host, "Redis host")
	fs.IntVar(port, "redis-port", *port, "Redis port")
	fs.IntVar(db, "redis-db", *db, "Redis database")
	fs.StringVar(password, "redis-password", *password, "Redis password")
	fs.StringVar(keyPrefix, "redis-key-prefix", *keyPrefix, "prefix of every Redis key")
}

// applyEnv sets every flag of flags that the command line did not give from its environment
// variable, when that is set and not empty.
func applyEnv(fs *pflag.FlagSet, flags []envFlag, lookup func(string) (string, bool)) error {
	for _, ef := range flags {
		if fs.Changed(ef.flag) {
			continue
		}
		v, ok := lookup(ef.env)
		if !ok || v == "" {
			continue
		}
		if err := fs.Set(ef.flag, v); err != nil {
			return usagef("invalid value %q for environment variable %s: %v", v, ef.env, err)
		}
	}
	return nil
}

// flagGroups orders --help.
var flagGroups = []struct {
	title string
	flags []string
}{
	{"Attaching", []string{"pid", "pid-file", "discover", "force"}},
	{"Metrics endpoint", []string{"metrics-port", "bind-address", "metrics-path", "tls-cert-file", "tls-key-file", "web.config.file"}},
	{"Metrics", []string{"workers", "stale-after", "max-endpoints", "endpoint-mode", "route", "ignore-route", "sample-interval", "multiproc-dir", "native-histograms"}},
	{"OpenTelemetry push", []string{"otlp-endpoint", "otlp-interval"}},
	{"Redis forwarding", []string{"redis-enabled", "redis-host", "redis-port", "redis-db", "redis-password", "redis-key-prefix", "redis-forward-interval", "redis-instance"}},
	{"Kernel side", []string{"hooks", "queue-wait", "tls-uprobes", "ring-buffer-size", "wakeup-bytes"}},
	{"Logging and other", []string{"log-level", "log-format", "version", "help"}},
}

func newFlagSet(cfg *Config, redisEnabled *string, routes *[]string, endpointMode *string, ringBytes *uint32, pid *int, workers *int, intervalSecs *int) *pflag.FlagSet {
	fs := pflag.NewFlagSet("gpe-ebpf", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.IntVar(pid, "pid", 0, "PID of the Gunicorn master to observe")
	fs.StringVar(&cfg.Agent.PIDFile, "pid-file", "", "file holding the master's PID, re-read to follow a replaced master")
	fs.BoolVar(&cfg.Agent.Discover, "discover", false, "observe every Gunicorn master on the host (adds the master_pid label)")
	fs.BoolVar(&cfg.Agent.Force, "force", false, "attach even if the process does not look like a Gunicorn master")

	fs.IntVar(&cfg.Server.Port, "metrics-port", cfg.Server.Port, "port of the metrics endpoint")
	fs.StringVar(&cfg.Server.BindAddress, "bind-address", cfg.Server.BindAddress, "address of the metrics endpoint")
	fs.StringVar(&cfg.Server.MetricsPath, "metrics-path", cfg.Server.MetricsPath, "path of the metrics endpoint")
	fs.StringVar(&cfg.Server.TLSCertFile, "tls-cert-file", "", "serve HTTPS with this certificate (with --tls-key-file)")
	fs.StringVar(&cfg.Server.TLSKeyFile, "tls-key-file", "", "key of --tls-cert-file")
	fs.StringVar(&cfg.Server.WebConfigFile, "web.config.file", "", "exporter-toolkit web config (TLS, client certificates, basic auth)")

	fs.IntVar(workers, "workers", 0, "workers expected; exported as gunicorn_master_workers_expected")
	fs.DurationVar(&cfg.Agent.Aggregate.StaleAfter, "stale-after", cfg.Agent.Aggregate.StaleAfter, "drop the series of an exited worker after this long")
	fs.IntVar(&cfg.Agent.Aggregate.MaxEndpoints, "max-endpoints", cfg.Agent.Aggregate.MaxEndpoints, "distinct endpoint values per master; the rest become \"other\"")
	fs.StringVar(endpointMode, "endpoint-mode", string(cfg.Agent.Aggregate.EndpointMode), "normalized (ids become {id}) or raw")
	fs.StringArrayVar(routes, "route", nil, "route template such as /users/{id}/orders/{order} (repeatable); wins over the id heuristic")
	fs.StringArrayVar(&cfg.Agent.Aggregate.IgnoreRoutes, "ignore-route", nil, "route template of requests not to count, such as /healthz (repeatable); counted in gpe_ebpf_ignored_requests_total")
	fs.DurationVar(&cfg.Agent.SampleInterval, "sample-interval", cfg.Agent.SampleInterval, "how often worker memory and CPU are sampled")
	fs.StringVar(&cfg.Multiproc, "multiproc-dir", "", "serve the app's prometheus_client multiprocess files from this directory too")
	fs.BoolVar(&cfg.Agent.Aggregate.NativeHistograms, "native-histograms", false, "give the duration, queue-wait and size histograms a native (exponential) form too, for a scraper that asks for protobuf; the classic buckets stay")
	fs.StringVar(&cfg.OTLP.Endpoint, "otlp-endpoint", "", "push the metrics over OTLP/HTTP (protobuf) to this URL, such as http://collector:4318 (path /v1/metrics when none is given)")
	fs.DurationVar(&cfg.OTLP.Interval, "otlp-interval", cfg.OTLP.Interval, "time between OTLP pushes")

	fs.StringVar(redisEnabled, "redis-enabled", "false", "forward the exposition to Redis (true/1/yes/on)")
	r := &cfg.Redis
	redisConnFlags(fs, &r.Host, &r.Port, &r.DB, &r.Password, &r.KeyPrefix)
	fs.IntVar(intervalSecs, "redis-forward-interval", int(cfg.Redis.Interval/time.Second), "seconds between forwards")
	fs.StringVar(&cfg.Redis.Instance, "redis-instance", cfg.Redis.Instance, "instance name in the Redis keys; the default is the host name")

	fs.BoolVar(&cfg.Probes.QueueWait, "queue-wait", cfg.Probes.QueueWait, "time each TCP connection's wait in the accept queue (gunicorn_request_queue_seconds): a hook on every TCP state change of the host, about ten per connection")
	fs.StringVar(&cfg.Probes.Hooks, "hooks", cfg.Probes.Hooks, "how socket calls are seen: socket (tracepoints, Linux 6.3+; other processes pay one memory read per socket call), syscall (Linux 5.17+; every syscall on the host takes the slow path) or auto (socket where the kernel has it)")
	fs.Var(tlsUprobes{&cfg.Probes}, "tls-uprobes", "auto: measure workers that serve TLS themselves (--certfile) through uprobes on the libssl each worker has mapped, scoped to the workers (uprobe_multi links on Linux 6.10+); perf: the same with perf-event uprobes on any kernel; off: none")
	fs.Uint32Var(ringBytes, "ring-buffer-size", cfg.Probes.RingBufferBytes, "ring buffer size in bytes (a power of two, at least the page size)")
	fs.Uint64Var(&cfg.Probes.WakeupBytes, "wakeup-bytes", cfg.Probes.WakeupBytes, "batch ring-buffer wake-ups: > 0 drains the ring every 100ms (a record waits at most that long); 0 wakes the reader for every record")

	fs.StringVar(&cfg.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.LogFormat, "log-format", "text", "text or json")
	fs.BoolVar(&cfg.ShowVersion, "version", false, "print the version and exit")
	fs.BoolP("help", "h", false, "show this help")
	return fs
}

func defaultConfig() Config {
	return Config{
		Agent:  agent.DefaultConfig(),
		Server: export.DefaultServerConfig(),
		Probes: probes.DefaultConfig(),
		Redis:  redisfwd.DefaultConfig(),
		OTLP:   export.DefaultOTLPConfig(),
	}
}

// errHelp asks main to print usage and exit 0.
var errHelp = errors.New("help requested")

// parseConfig builds the Config from arguments and the environment (lookup).
func parseConfig(args []string, lookup func(string) (string, bool), out io.Writer) (Config, error) {
	cfg := defaultConfig()
	var redisEnabled, endpointMode string
	var routes []string
	var pid, workers, intervalSecs int
	ringBytes := cfg.Probes.RingBufferBytes
	fs := newFlagSet(&cfg, &redisEnabled, &routes, &endpointMode, &ringBytes, &pid, &workers, &intervalSecs)
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			printUsage(out, fs)
			return cfg, errHelp
		}
		return cfg, usagef("%v (see --help)", err)
	}
	if help, _ := fs.GetBool("help"); help {
		printUsage(out, fs)
		return cfg, errHelp
	}
	if fs.NArg() > 0 {
		return cfg, usagef("unexpected argument %q (see --help)", fs.Arg(0))
	}
	if err := applyEnv(fs, envFlags, lookup); err != nil {
		return cfg, err
	}
	if cfg.ShowVersion {
		return cfg, nil
	}

	var err error
	if cfg.Redis.Enabled, err = parseBool(redisEnabled); err != nil {
		return cfg, usagef("invalid value %q for --redis-enabled (REDIS_ENABLED): %v", redisEnabled, err)
	}
	cfg.Redis.Interval = time.Duration(intervalSecs) * time.Second
	cfg.Redis.MetricsPort = cfg.Server.Port
	cfg.Agent.Aggregate.Routes = routes
	cfg.Agent.Aggregate.EndpointMode = aggregate.EndpointMode(endpointMode)
	cfg.Probes.RingBufferBytes = ringBytes
	cfg.Workers = workers

	modes := 0
	for _, set := range []bool{pid != 0, cfg.Agent.PIDFile != "", cfg.Agent.Discover} {
		if set {
			modes++
		}
	}
	switch {
	case modes == 0:
		return cfg, usagef("one of --pid, --pid-file or --discover is required (see --help)")
	case modes > 1:
		return cfg, usagef("--pid, --pid-file and --discover are exclusive")
	case pid < 0 || pid > 1<<22:
		return cfg, usagef("invalid --pid %d", pid)
	}
	cfg.Agent.PID = uint32(pid)

	checks := []struct {
		bad bool
		msg string
	}{
		{cfg.Server.Port < 1 || cfg.Server.Port > 65535, fmt.Sprintf("invalid --metrics-port (PROMETHEUS_METRICS_PORT) %d: must be 1-65535", cfg.Server.Port)},
		{net.ParseIP(cfg.Server.BindAddress) == nil && cfg.Server.BindAddress != "localhost", fmt.Sprintf("invalid --bind-address (PROMETHEUS_BIND_ADDRESS) %q: must be an IP address", cfg.Server.BindAddress)},
		{!strings.HasPrefix(cfg.Server.MetricsPath, "/"), fmt.Sprintf("invalid --metrics-path %q: must start with /", cfg.Server.MetricsPath)},
		{(cfg.Server.TLSCertFile == "") != (cfg.Server.TLSKeyFile == ""), "--tls-cert-file (PROMETHEUS_SSL_CERTFILE) and --tls-key-file (PROMETHEUS_SSL_KEYFILE) go together"},
		{cfg.Server.TLSCertFile != "" && cfg.Server.WebConfigFile != "", "--tls-cert-file and --web.config.file are exclusive: put the certificate in the web config"},
		{workers < 0, fmt.Sprintf("invalid --workers (GUNICORN_WORKERS) %d: must be 0 or more", workers)},
		{cfg.Agent.Aggregate.StaleAfter <= 0, "invalid --stale-after: must be positive"},
		{cfg.Agent.Aggregate.MaxEndpoints < 1, "invalid --max-endpoints: must be at least 1"},
		{endpointMode != string(aggregate.EndpointNormalized) && endpointMode != string(aggregate.EndpointRaw), fmt.Sprintf("invalid --endpoint-mode %q: normalized or raw", endpointMode)},
		{cfg.Agent.SampleInterval < 100*time.Millisecond, "invalid --sample-interval: at least 100ms"},
		{!slices.Contains(probes.HookModes, cfg.Probes.Hooks), fmt.Sprintf("invalid --hooks %q: auto, socket or syscall", cfg.Probes.Hooks)},
		{ringBytes < 4096 || ringBytes&(ringBytes-1) != 0, fmt.Sprintf("invalid --ring-buffer-size %d: a power of two of at least 4096", ringBytes)},
		{intervalSecs < 1, fmt.Sprintf("invalid --redis-forward-interval (REDIS_FORWARD_INTERVAL) %d: at least 1 second", intervalSecs)},
		{cfg.LogLevel != "debug" && cfg.LogLevel != "info" && cfg.LogLevel != "warn" && cfg.LogLevel != "error", fmt.Sprintf("invalid --log-level %q: debug, info, warn or error", cfg.LogLevel)},
		{cfg.LogFormat != "text" && cfg.LogFormat != "json", fmt.Sprintf("invalid --log-format %q: text or json", cfg.LogFormat)},
		{cfg.OTLP.Interval < time.Second, "invalid --otlp-interval: at least 1s"},
	}
	for _, c := range checks {
		if c.bad {
			return cfg, usagef("%s", c.msg)
		}
	}
	for _, r := range routes {
		if !strings.HasPrefix(r, "/") {
			return cfg, usagef("invalid --route %q: must start with /", r)
		}
	}
	for _, r := range cfg.Agent.Aggregate.IgnoreRoutes {
		if !strings.HasPrefix(r, "/") {
			return cfg, usagef("invalid --ignore-route %q: must start with /", r)
		}
	}
	for _, f := range []struct{ flag, path string }{
		{"--tls-cert-file (PROMETHEUS_SSL_CERTFILE)", cfg.Server.TLSCertFile},
		{"--tls-key-file (PROMETHEUS_SSL_KEYFILE)", cfg.Server.TLSKeyFile},
		{"--multiproc-dir (PROMETHEUS_MULTIPROC_DIR)", cfg.Multiproc},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return cfg, usagef("%s: %v", f.flag, err)
		}
	}
	if cfg.Server.TLSCertFile != "" {
		// Load the pair now: a bad certificate is a usage error found at start, not a
		// failure of the metrics server after the probes are attached.
		if _, err := tls.LoadX509KeyPair(cfg.Server.TLSCertFile, cfg.Server.TLSKeyFile); err != nil {
			return cfg, usagef("invalid --tls-cert-file/--tls-key-file (PROMETHEUS_SSL_CERTFILE/PROMETHEUS_SSL_KEYFILE): %v", err)
		}
	}
	if cfg.OTLP.Endpoint != "" {
		if _, _, _, err := export.CheckOTLPEndpoint(cfg.OTLP.Endpoint); err != nil {
			return cfg, usagef("invalid --otlp-endpoint: %v", err)
		}
	}
	if err := export.CheckWebConfig(cfg.Server.WebConfigFile); err != nil {
		return cfg, usagef("invalid --web.config.file: %v", err)
	}
	if cfg.Redis.Enabled {
		if err := cfg.Redis.Validate(); err != nil {
			return cfg, usagef("invalid Redis settings: %v", err)
		}
	}
	return cfg, nil
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

func printUsage(out io.Writer, fs *pflag.FlagSet) {
	env := make(map[string]string)
	for _, ef := range envFlags {
		env[ef.flag] = ef.env
	}
	fmt.Fprintf(out, "gpe-ebpf %s: Prometheus metrics of a running Gunicorn, observed from the kernel with eBPF.\n\n", version)
	fmt.Fprintln(out, "Usage:\n  gpe-ebpf --pid N | --pid-file F | --discover [flags]\n  gpe-ebpf redis-collect [flags]   (serve what many hosts forwarded to Redis; see redis-collect --help)")
	for _, g := range flagGroups {
		fmt.Fprintf(out, "\n%s:\n", g.title)
		for _, name := range g.flags {
			f := fs.Lookup(name)
			if f == nil {
				continue
			}
			left := "  --" + f.Name
			if f.Shorthand != "" {
				left = "  -" + f.Shorthand + ", --" + f.Name
			}
			if f.Value.Type() != "bool" {
				left += " " + f.Value.Type()
			}
			usage := f.Usage
			if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "[]" {
				usage += " (default " + strconv.Quote(f.DefValue) + ")"
			}
			if e, ok := env[name]; ok {
				usage += " [env " + e + "]"
			}
			fmt.Fprintf(out, "%-34s %s\n", left, usage)
		}
	}
}
