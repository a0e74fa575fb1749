// Command gpe-ebpf observes a running Gunicorn server from the kernel with eBPF and serves
// Prometheus metrics about it. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"github.com/gpe-ebpf/gpe-ebpf/internal/agent"
	"github.com/gpe-ebpf/gpe-ebpf/internal/redisfwd"
)

// Set at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = "dev"
	commit  = "unknown"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr))
}

// realMain is main without os.Exit, so tests can run it. It returns the exit code:
// 0 done, 1 a runtime failure, 2 a usage, target or privilege error (README "Failure
// behaviour").
func realMain(args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	if len(args) > 0 && args[0] == "redis-collect" {
		return exitCode(stderr, runRedisCollect(ctx, args[1:], lookup, stdout, stderr))
	}
	cfg, err := parseConfig(args, lookup, stdout)
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		return exitCode(stderr, err)
	}
	if cfg.ShowVersion {
		fmt.Fprintf(stdout, "gpe-ebpf %s (commit %s, %s %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	logger := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)
	redisfwd.RouteLogs(logger)
	warnLegacyEnv(lookup, logger)
	return exitCode(stderr, run(ctx, cfg, logger))
}

func exitCode(stderr io.Writer, err error) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(stderr, "gpe-ebpf: %v\n", err)
	var u usageError
	var target *agent.TargetError
	if errors.As(err, &u) || errors.As(err, &target) {
		return 2
	}
	return 1
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	var lv slog.Level // info, unless level (checked by --log-level) says otherwise
	_ = lv.UnmarshalText([]byte(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
