package export

import (
	"sort"

	"github.com/prometheus/client_golang/prometheus"
)

// DropCollector exports what the kernel side had to drop, by reason
// (gpe_ebpf_connections_dropped_total): read from the kernel's counters at scrape time, like
// the listener gauges, so it is a collector of its own.
type DropCollector struct {
	dropped func() (map[string]uint64, error)
	desc    *prometheus.Desc
}

// NewDropCollector returns a collector over dropped (probes.Probes.Dropped), which gives a
// count for every reason the kernel has, zeros included.
func NewDropCollector(dropped func() (map[string]uint64, error)) *DropCollector {
	return &DropCollector{dropped: dropped, desc: prometheus.NewDesc("gpe_ebpf_connections_dropped_total",
		"Requests the kernel side could not track, by reason: table_full, a request on a connection the full connection table (--max-connections) had no room for; tls_untied, a TLS read or write whose plaintext the uprobes saw on an SSL tied to no socket (one a call). They are not in the request metrics.",
		[]string{"reason"}, nil)}
}

// Describe sends the one descriptor.
func (c *DropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect reads the counters; a read that fails sends nothing (the scrape still succeeds).
func (c *DropCollector) Collect(ch chan<- prometheus.Metric) {
	got, err := c.dropped()
	if err != nil {
		return
	}
	reasons := make([]string, 0, len(got))
	for r := range got {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(got[r]), r)
	}
}
