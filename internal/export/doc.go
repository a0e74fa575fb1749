// Package export serves the aggregate as Prometheus metrics: a Collector that turns one
// aggregate.Snapshot per scrape into the series of README "Metrics", and the HTTP server
// (plain, TLS, or an exporter-toolkit web config) with the Python plugin's port-retry schedule.
package export
