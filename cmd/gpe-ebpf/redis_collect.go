package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/gpe-ebpf/gpe-ebpf/internal/redisfwd"
	"github.com/gpe-ebpf/gpe-ebpf/internal/setting"
)

// runRedisCollect is `gpe-ebpf redis-collect`: serve, on one /metrics, every instance that
// forwards to Redis, each series labelled instance.
func runRedisCollect(ctx context.Context, args []string, lookup func(string) (string, bool), stdout, stderr io.Writer) error {
	cfg := redisfwd.DefaultCollectorConfig()
	c := common{LogLevel: "info", LogFormat: "text"}
	rows := setting.Sort(slices.Concat(redisfwd.CollectorSettings(&cfg), c.settings(nil)))
	fs, err := parseArgs(rows, args, lookup, &c.ShowHelp, "redis-collect --help")
	if errors.Is(err, errHelp) {
		fmt.Fprintln(stdout, "Usage: gpe-ebpf redis-collect [flags]\n\nServes every instance listed under {prefix}instances on one /metrics, each series labelled instance.")
		setting.Usage(stdout, fs, rows)
		return nil
	}
	if err == nil {
		err = setting.Check(rows)
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		return usagef("redis-collect: %v", err)
	}
	logger := newLogger(stderr, c.LogLevel, c.LogFormat)
	redisfwd.RouteLogs(logger)
	err = redisfwd.RunCollector(ctx, cfg, logger)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
