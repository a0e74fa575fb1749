package export

import (
	"sort"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gpe-ebpf/gpe-ebpf/internal/listeners"
)

// ListenerReader reads the listening sockets of masters at scrape time: listeners.Reader, or
// a fake in tests.
type ListenerReader interface {
	Read(pids []uint32) map[uint32][]listeners.Listener
}

// ListenerCollector exports the accept-queue gauges and drop counter of every listening
// socket of every master, read from the kernel at each scrape. It is a collector of its own
// because it reads the kernel at scrape time instead of the aggregate's snapshot.
type ListenerCollector struct {
	masterLabel bool
	masters     func() []uint32
	reader      ListenerReader

	length, max, drops *prometheus.Desc
}

// NewListenerCollector returns a collector of the listeners of the masters that masters
// returns. Only cfg.MasterLabel is used.
func NewListenerCollector(cfg CollectorConfig, masters func() []uint32, r ListenerReader) *ListenerCollector {
	labels := []string{"listener"}
	if cfg.MasterLabel {
		labels = []string{"master_pid", "listener"}
	}
	return &ListenerCollector{
		masterLabel: cfg.MasterLabel, masters: masters, reader: r,
		length: prometheus.NewDesc("gunicorn_listen_queue_length", "Connections waiting in the listening socket's accept queue.", labels, nil),
		max:    prometheus.NewDesc("gunicorn_listen_queue_max", "The listening socket's backlog: the most connections its accept queue holds.", labels, nil),
		drops:  prometheus.NewDesc("gunicorn_listen_drops_total", "Connection attempts the TCP listening socket dropped, mostly because its accept queue was full (not counted for Unix sockets).", labels, nil),
	}
}

// Describe sends the three descriptors.
func (c *ListenerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.length
	ch <- c.max
	ch <- c.drops
}

// Collect reads the listeners of every master and sends their series.
func (c *ListenerCollector) Collect(ch chan<- prometheus.Metric) {
	pids := c.masters()
	if len(pids) == 0 {
		return
	}
	got := c.reader.Read(pids)
	sort.Slice(pids, func(i, j int) bool { return pids[i] < pids[j] })
	if !c.masterLabel {
		// One series per listener name: masters that share a socket (the old and new master
		// of a USR2 upgrade) count it once.
		var all []listeners.Listener
		for _, pid := range pids {
			all = append(all, got[pid]...)
		}
		c.send(ch, byName(all))
		return
	}
	for _, pid := range pids {
		c.send(ch, byName(got[pid]), strconv.FormatUint(uint64(pid), 10))
	}
}

func (c *ListenerCollector) send(ch chan<- prometheus.Metric, ls []listeners.Listener, mpid ...string) {
	for _, l := range ls {
		values := append(append([]string(nil), mpid...), l.Name)
		ch <- prometheus.MustNewConstMetric(c.length, prometheus.GaugeValue, float64(l.QueueLength), values...)
		ch <- prometheus.MustNewConstMetric(c.max, prometheus.GaugeValue, float64(l.QueueMax), values...)
		if l.HasDrops {
			ch <- prometheus.MustNewConstMetric(c.drops, prometheus.CounterValue, float64(l.Drops), values...)
		}
	}
}

// byName counts each socket once and adds up the sockets that share a name (SO_REUSEPORT
// listeners on one address), so no two series have the same labels.
func byName(ls []listeners.Listener) []listeners.Listener {
	seen := make(map[uint64]bool)
	idx := make(map[string]int)
	var out []listeners.Listener
	for _, l := range ls {
		if seen[l.Inode] {
			continue
		}
		seen[l.Inode] = true
		i, ok := idx[l.Name]
		if !ok {
			idx[l.Name] = len(out)
			out = append(out, l)
			continue
		}
		out[i].QueueLength += l.QueueLength
		out[i].QueueMax += l.QueueMax
		out[i].Drops += l.Drops
		out[i].HasDrops = out[i].HasDrops && l.HasDrops
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
