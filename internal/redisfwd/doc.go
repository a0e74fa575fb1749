// Package redisfwd ships gpe-ebpf's Prometheus exposition through Redis, and
// reads it back.
//
// It is its own package, rather than a file of internal/export, because Redis
// forwarding is its own concern with its own failure modes (a slow or absent
// Redis must never stall /metrics or the event pipeline), and because both
// halves of the protocol live here so they cannot drift apart:
//
//   - [Forwarder] runs next to a gpe-ebpf that observes Gunicorn. Every
//     interval it gathers the registry once, renders the text exposition
//     (format 0.0.4, the same text /metrics serves) and writes it in one
//     MULTI/EXEC transaction:
//
//     SET    {prefix}{instance}:latest     <text>
//     SETEX  {prefix}{instance}:{unix_ts}  <3 x interval, whole seconds> <text>
//     SET    {prefix}{instance}:metadata   <JSON, see [Metadata]>
//     SADD   {prefix}instances             {instance}
//
//   - [Collector] backs the `gpe-ebpf redis-collect` subcommand: it reads the
//     instances set, the latest exposition and the metadata of each instance,
//     drops instances whose metadata is older than 3 x their interval, adds an
//     `instance` label to every series and serves the merged result on one
//     /metrics, so a single Prometheus job can scrape many hosts that it cannot
//     reach directly.
//
// Nothing here exits the process or owns a global: configuration arrives as
// [Config] and [CollectorConfig], logging as a *slog.Logger.
//
// go-redis writes a few messages (failed dials) through its own package-level
// logger; routing those through slog is a process-wide decision, so main makes
// it ([RouteLogs]).
package redisfwd
