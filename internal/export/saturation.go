package export

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// saturation holds the series that say whether the workers keep up: busy workers, heartbeat
// ages and the master's timeout (README "Why is it slow?").
type saturation struct {
	busy, timeout, heartbeat *prometheus.Desc
}

func newSaturation(base []string, l func(...string) []string) saturation {
	d := prometheus.NewDesc
	return saturation{
		busy:      d("gunicorn_master_workers_busy", "Live workers serving as many requests as they can at once (sync: one; gthread: all their threads).", base, nil),
		timeout:   d("gunicorn_master_timeout_seconds", "The master's worker timeout, when its command line or --worker-timeout says it.", base, nil),
		heartbeat: d("gunicorn_worker_heartbeat_age_seconds", "Seconds since the worker last touched its heartbeat file, as the master checks it against its timeout.", l("worker_id"), nil),
	}
}

func (s saturation) describe(ch chan<- *prometheus.Desc) {
	ch <- s.busy
	ch <- s.timeout
	ch <- s.heartbeat
}

// collect sends m's series; gauge sends one with the master's labels and values.
func (s saturation) collect(m *aggregate.MasterSnapshot, gauge func(d *prometheus.Desc, v float64, values ...string)) {
	gauge(s.busy, float64(m.BusyWorkers))
	if m.TimeoutKnown && m.Timeout > 0 {
		gauge(s.timeout, m.Timeout)
	}
	for i := range m.Workers {
		if w := &m.Workers[i]; w.HeartbeatKnown {
			gauge(s.heartbeat, w.HeartbeatAge, w.ID)
		}
	}
}
