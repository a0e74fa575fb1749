package main

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/spf13/pflag"

	"github.com/gpe-ebpf/gpe-ebpf/internal/agent"
	"github.com/gpe-ebpf/gpe-ebpf/internal/export"
	"github.com/gpe-ebpf/gpe-ebpf/internal/multiproc"
	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
	"github.com/gpe-ebpf/gpe-ebpf/internal/redisfwd"
	"github.com/gpe-ebpf/gpe-ebpf/internal/setting"
)

// Config is everything gpe-ebpf is told, built once from flags, then environment, then defaults.
type Config struct {
	Agent     agent.Config // the target, sampling, and the aggregate's labels
	Workers   int
	Multiproc string

	Server export.ServerConfig
	Probes probes.Config
	Redis  redisfwd.Config
	OTLP   export.OTLPConfig

	common
	ShowVersion bool
}

// common are the settings of both commands.
type common struct {
	LogLevel, LogFormat string
	ShowHelp            bool
}

func defaultConfig() Config {
	return Config{
		Agent:  agent.DefaultConfig(),
		Server: export.DefaultServerConfig(),
		Probes: probes.DefaultConfig(),
		Redis:  redisfwd.DefaultConfig(),
		OTLP:   export.DefaultOTLPConfig(),
		common: common{LogLevel: "info", LogFormat: "text"},
	}
}

// settings are c's rows, each from the package that owns it, in --help order.
func (c *Config) settings() []setting.Setting {
	return setting.Sort(slices.Concat(
		export.Settings(&c.Server),
		export.WorkersSettings(&c.Workers),
		agent.Settings(&c.Agent),
		multiproc.Settings(&c.Multiproc),
		redisfwd.Settings(&c.Redis),
		export.OTLPSettings(&c.OTLP),
		probes.Settings(&c.Probes),
		c.common.settings(&c.ShowVersion),
	))
}

// settings are the rows of c, with --version when version is not nil.
func (c *common) settings(version *bool) []setting.Setting {
	rows := []setting.Setting{
		{Name: "log-level", Group: setting.Other, Value: setting.String(&c.LogLevel), Help: "debug, info, warn or error",
			Check: func(name string) error {
				return setting.Require(slices.Contains([]string{"debug", "info", "warn", "error"}, c.LogLevel), "invalid %s %q: debug, info, warn or error", name, c.LogLevel)
			}},
		{Name: "log-format", Group: setting.Other, Value: setting.String(&c.LogFormat), Help: "text or json",
			Check: func(name string) error {
				return setting.Require(c.LogFormat == "text" || c.LogFormat == "json", "invalid %s %q: text or json", name, c.LogFormat)
			}},
	}
	if version != nil {
		rows = append(rows, setting.Setting{Name: "version", Group: setting.Other, Value: setting.Bool(version), Help: "print the version and exit"})
	}
	return append(rows, setting.Setting{Name: "help", Short: "h", Group: setting.Other, Value: setting.Bool(&c.ShowHelp), Help: "show this help"})
}

// usageError is a bad flag or environment value: exit 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, a ...any) error { return usageError{fmt.Errorf(format, a...)} }

// errHelp asks main to print usage and exit 0.
var errHelp = errors.New("help requested")

// parseConfig builds the Config from arguments and the environment (lookup).
func parseConfig(args []string, lookup func(string) (string, bool), out io.Writer) (Config, error) {
	cfg := defaultConfig()
	rows := cfg.settings()
	fs, err := parseArgs(rows, args, lookup, &cfg.ShowHelp, "--help")
	if errors.Is(err, errHelp) {
		fmt.Fprintf(out, "gpe-ebpf %s: Prometheus metrics of a running Gunicorn, observed from the kernel with eBPF.\n\n", version)
		fmt.Fprintln(out, "Usage:\n  gpe-ebpf --pid N | --pid-file F | --discover [flags]\n  gpe-ebpf redis-collect [flags]   (serve what many hosts forwarded to Redis; see redis-collect --help)")
		setting.Usage(out, fs, rows)
	}
	if err != nil || cfg.ShowVersion {
		return cfg, err
	}
	cfg.Redis.MetricsPort = cfg.Server.Port
	if err := setting.Check(rows); err != nil {
		return cfg, usageError{err}
	}
	return cfg, nil
}

// parseArgs defines rows on a flag set and sets them from args, then from the environment;
// it stops after args when they ask for help. see is where a bad flag's message points.
func parseArgs(rows []setting.Setting, args []string, lookup func(string) (string, bool), help *bool, see string) (*pflag.FlagSet, error) {
	fs := pflag.NewFlagSet("gpe-ebpf", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	setting.Define(fs, rows)
	switch err := fs.Parse(args); {
	case err != nil:
		return fs, usagef("%v (see %s)", err, see)
	case *help:
		return fs, errHelp
	case fs.NArg() > 0:
		return fs, usagef("unexpected argument %q (see %s)", fs.Arg(0), see)
	}
	if err := setting.FromEnv(fs, rows, lookup); err != nil {
		return fs, usageError{err}
	}
	return fs, nil
}
