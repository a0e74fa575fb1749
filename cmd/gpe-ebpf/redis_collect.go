package main

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/pflag"

	"github.com/gpe-ebpf/gpe-ebpf/internal/redisfwd"
)

// runRedisCollect is `gpe-ebpf redis-collect`: serve, on one /metrics, every instance that
// forwards to Redis, each series labelled instance.
func runRedisCollect(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) error {
	cfg := redisfwd.DefaultCollectorConfig()
	fs := pflag.NewFlagSet("gpe-ebpf redis-collect", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.SetOutput(io.Discard)
	redisConnFlags(fs, &cfg.Host, &cfg.Port, &cfg.DB, &cfg.Password, &cfg.KeyPrefix)
	for _, ef := range redisConnEnv {
		fs.Lookup(ef.flag).Usage += " [env " + ef.env + "]"
	}
	fs.StringVar(&cfg.ListenAddress, "listen-address", cfg.ListenAddress, "where to serve the merged metrics")
	fs.StringVar(&cfg.MetricsPath, "metrics-path", cfg.MetricsPath, "path of the merged metrics")
	fs.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "bound on the Redis reads of one scrape")
	fs.BoolVar(&cfg.RemoveStale, "remove-stale", false, "SREM instances whose latest forward is older than 3 intervals")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")
	help := fs.BoolP("help", "h", false, "show this help")
	if err := fs.Parse(args); err != nil {
		return usagef("redis-collect: %v (see redis-collect --help)", err)
	}
	if *help {
		fmt.Fprintln(stdout, "Usage: gpe-ebpf redis-collect [flags]\n\nServes every instance listed under {prefix}instances on one /metrics, each series labelled instance.\n\nFlags:")
		fmt.Fprint(stdout, fs.FlagUsages())
		return nil
	}
	if err := applyEnv(fs, redisConnEnv, lookup); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return usagef("redis-collect: %v", err)
	}
	logger := newLogger(stderr, *logLevel, *logFormat)
	redis.SetLogger(redisLogger{logger})
	err := redisfwd.RunCollector(ctx, cfg, logger)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
