package export

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// dirty holds the series of Gunicorn 25+'s dirty arbiters and their workers (README "Dirty
// arbiters"): processes of the master that serve no HTTP request, so they are in no worker
// series. Their counts are always served (0 without them), so that an alert can tell a pool
// that died from one never configured; their memory and CPU only while an arbiter runs.
type dirty struct {
	arbiters, workers, memory, cpu *prometheus.Desc
}

// The values of gunicorn_dirty_*{process}.
const (
	dirtyArbiter = "arbiter"
	dirtyWorker  = "worker"
)

func newDirty(base []string, l func(...string) []string) dirty {
	d := prometheus.NewDesc
	return dirty{
		arbiters: d("gunicorn_dirty_arbiters", "Live dirty arbiters of the master (Gunicorn 25+ dirty_workers and dirty_apps): 1 when it runs one, else 0.", base, nil),
		workers:  d("gunicorn_dirty_workers", "Live dirty workers: the dirty arbiter's children, which run the dirty apps' jobs and serve no HTTP request.", base, nil),
		memory:   d("gunicorn_dirty_memory_bytes", "Resident set size of the dirty arbiter (process=\"arbiter\") and the sum over its dirty workers (process=\"worker\").", l("process"), nil),
		cpu:      d("gunicorn_dirty_cpu_percent", "CPU over the last sampling interval, percent of one core, of the dirty arbiter and summed over its dirty workers.", l("process"), nil),
	}
}

func (s dirty) describe(ch chan<- *prometheus.Desc) {
	ch <- s.arbiters
	ch <- s.workers
	ch <- s.memory
	ch <- s.cpu
}

// collect sends m's series; gauge sends one with the master's labels and values.
func (s dirty) collect(m *aggregate.MasterSnapshot, gauge func(d *prometheus.Desc, v float64, values ...string)) {
	d := m.Dirty
	gauge(s.arbiters, float64(d.Arbiters))
	gauge(s.workers, float64(d.Usage.Workers))
	if d.Arbiters == 0 {
		return
	}
	gauge(s.memory, float64(d.Usage.RSS), dirtyArbiter)
	gauge(s.memory, float64(d.Usage.WorkersRSS), dirtyWorker)
	gauge(s.cpu, d.Usage.CPUPercent, dirtyArbiter)
	gauge(s.cpu, d.Usage.WorkersCPUPercent, dirtyWorker)
}
