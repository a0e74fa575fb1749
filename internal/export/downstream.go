package export

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// downstream holds the series of the requests' calls to other services (databases, caches,
// APIs) by endpoint and peer (README "Why is it slow?").
type downstream struct {
	calls, seconds *prometheus.Desc
}

func newDownstream(l func(...string) []string) downstream {
	d := prometheus.NewDesc
	return downstream{
		calls:   d("gunicorn_http_downstream_calls_total", "Calls the requests made to other services while being served (a send, then the receives before the next send on that connection), by endpoint and peer (ip:port or unix:<path>).", l("endpoint", "peer"), nil),
		seconds: d("gunicorn_http_downstream_seconds_total", "Time of those calls, from each call's first send to its last receive, by endpoint and peer.", l("endpoint", "peer"), nil),
	}
}

func (s downstream) describe(ch chan<- *prometheus.Desc) {
	ch <- s.calls
	ch <- s.seconds
}

// collect sends m's series; counter sends one with the master's labels and values.
func (s downstream) collect(m *aggregate.MasterSnapshot, counter func(d *prometheus.Desc, v float64, values ...string)) {
	for _, c := range m.Downstream {
		counter(s.calls, float64(c.Calls), c.Endpoint, c.Peer)
		counter(s.seconds, c.Seconds, c.Endpoint, c.Peer)
	}
}
