// Package export serves the aggregate as Prometheus metrics: a Collector that turns one
// aggregate.Snapshot per scrape into the series of CONTRACT §2 and §3, and the HTTP server
// (plain, TLS, or an exporter-toolkit web config) with the reference's port-retry schedule.
package export
