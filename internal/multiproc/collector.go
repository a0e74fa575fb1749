package multiproc

import (
	"errors"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Collector is an unchecked prometheus.Collector that, on every Collect,
// reads the multiprocess files of a directory and merges them as
// prometheus_client's MultiProcessCollector does. It also exposes
// gpe_ebpf_multiproc_errors_total. It is safe for concurrent use.
type Collector struct {
	dir    string
	isLive func(pid int) bool
	logger *slog.Logger
	errors prometheus.Counter
}

// NewCollector returns a Collector over dir. isLive tells whether a process
// still runs; files of the live* gauge modes whose pid it rejects are
// ignored. A nil isLive counts every process as alive, as prometheus_client
// does (it relies on mark_process_dead deleting those files). A nil logger
// discards logs.
func NewCollector(dir string, isLive func(pid int) bool, logger *slog.Logger) *Collector {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if isLive == nil {
		isLive = func(int) bool { return true }
	}
	return &Collector{
		dir:    dir,
		isLive: isLive,
		logger: logger,
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "gpe_ebpf_multiproc_errors_total",
			Help: "Multiprocess files that could not be read (corrupt or truncated), counted at every scrape that skipped them.",
		}),
	}
}

// Describe sends nothing: the metrics depend on the files, so the Collector
// is unchecked.
func (c *Collector) Describe(chan<- *prometheus.Desc) {}

// Collect reads and merges the files, then sends the merged metrics and the
// error counter. A file that cannot be read is skipped, logged and counted.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	if c.dir != "" {
		for _, m := range c.build(c.read()) {
			ch <- m
		}
	}
	ch <- c.errors
}

// processFile is the decoded content of one file.
type processFile struct {
	typ  string // counter, gauge, histogram, summary
	mode string // gauge mode
	pid  string // as in the file name
	recs []record
}

// read decodes every *.db file of the directory, in name order.
func (c *Collector) read() []processFile {
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		c.fail("list multiprocess files", c.dir, err)
		return nil
	}
	// Like the reference's glob("*.db"): no hidden files. ReadDir sorts.
	var paths []string
	for _, e := range entries {
		if n := e.Name(); strings.HasSuffix(n, ".db") && !strings.HasPrefix(n, ".") && !e.IsDir() {
			paths = append(paths, filepath.Join(c.dir, n))
		}
	}
	cache := keyCache{}
	var files []processFile
	for _, p := range paths {
		pf, ok := c.classify(p)
		if !ok {
			continue
		}
		recs, _, err := readFile(p, cache)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			// Removed since the glob (mark_process_dead, a restart
			// cleaning the directory): nothing to read, not an error.
			continue
		case err != nil:
			c.fail("skip multiprocess file", p, err)
			continue
		}
		pf.recs = recs
		files = append(files, pf)
	}
	return files
}

// classify splits a file name as prometheus_client does (on "_": type,
// [mode,] pid.db), and decides whether the file is to be read.
func (c *Collector) classify(path string) (processFile, bool) {
	parts := strings.Split(filepath.Base(path), "_")
	pf := processFile{typ: parts[0]}
	switch pf.typ {
	case "counter", "histogram", "summary":
		return pf, true
	case "gauge":
		if len(parts) < 3 || len(parts[2]) < 3 {
			c.fail("skip multiprocess file", path, errors.New("gauge file name is not gauge_<mode>_<pid>.db"))
			return pf, false
		}
		pf.mode = parts[1]
		pf.pid = parts[2][:len(parts[2])-3]
		if strings.HasPrefix(pf.mode, "live") {
			// A pid that is not a number cannot be judged: keep it,
			// as the reference would.
			if pid, err := strconv.Atoi(pf.pid); err == nil && !c.isLive(pid) {
				return pf, false
			}
		}
		return pf, true
	default:
		c.fail("skip multiprocess file", path, errors.New("unknown metric type "+strconv.Quote(pf.typ)))
		return pf, false
	}
}

func (c *Collector) fail(msg, path string, err error) {
	c.errors.Inc()
	c.logger.Warn(msg, "path", path, "err", err)
}

// sample is a merged sample before it becomes a const metric.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// metric gathers the samples of one metric_name over all files, as
// prometheus_client's Metric does: the type and help of the first file that
// has it, the gauge mode of the last.
type metric struct {
	name    string
	typ     string
	help    string
	mode    string
	samples []rawSample
}

// rawSample is one record as read, with the pid label added for gauges.
type rawSample struct {
	name      string
	labels    map[string]string
	value     float64
	timestamp float64
}

// group collects the records of all files by metric name, in first-seen order.
func group(files []processFile) []*metric {
	var order []*metric
	byName := map[string]*metric{}
	for _, f := range files {
		for _, r := range f.recs {
			m := byName[r.metricName]
			if m == nil {
				m = &metric{name: r.metricName, typ: f.typ, help: r.help}
				byName[r.metricName] = m
				order = append(order, m)
			}
			labels := r.labels
			if f.typ == "gauge" {
				m.mode = f.mode
				labels = withLabel(labels, "pid", f.pid)
			}
			m.samples = append(m.samples, rawSample{name: r.name, labels: labels, value: r.value, timestamp: r.timestamp})
		}
	}
	return order
}

// accumulator is an insertion-ordered map from (name, labels) to a value.
type accumulator struct {
	index   map[string]int
	samples []sample
	ts      []float64
}

func newAccumulator() *accumulator {
	return &accumulator{index: map[string]int{}}
}

// slot returns the index of (name, labels), and whether it already existed.
func (a *accumulator) slot(name string, labels map[string]string) (int, bool) {
	k := name + "\xff" + labelKey(labels)
	if i, ok := a.index[k]; ok {
		return i, true
	}
	a.index[k] = len(a.samples)
	a.samples = append(a.samples, sample{name: name, labels: labels})
	a.ts = append(a.ts, 0)
	return len(a.samples) - 1, false
}

// merge turns the raw samples of m into the samples MultiProcessCollector
// reports (accumulate=True), in its rules, sample names included.
func merge(m *metric) []sample {
	acc := newAccumulator()
	type histBuckets struct {
		labels map[string]string
		bounds map[float64]float64
	}
	var hists []*histBuckets
	histIndex := map[string]*histBuckets{}

	for _, s := range m.samples {
		switch m.typ {
		case "gauge":
			switch m.mode {
			case "min", "livemin", "max", "livemax":
				i, seen := acc.slot(s.name, without(s.labels, "pid"))
				isMin := m.mode == "min" || m.mode == "livemin"
				if !seen || (isMin && s.value < acc.samples[i].value) || (!isMin && s.value > acc.samples[i].value) {
					acc.samples[i].value = s.value
				}
			case "sum", "livesum":
				i, _ := acc.slot(s.name, without(s.labels, "pid"))
				acc.samples[i].value += s.value
			case "mostrecent", "livemostrecent":
				// Only a write with a newer, non-zero timestamp
				// counts; a series never written reports nothing.
				if s.timestamp > 0 {
					i, seen := acc.slot(s.name, without(s.labels, "pid"))
					if !seen || acc.ts[i] < s.timestamp {
						acc.samples[i].value = s.value
						acc.ts[i] = s.timestamp
					}
				}
			default: // all, liveall
				i, _ := acc.slot(s.name, s.labels)
				acc.samples[i].value = s.value
			}
		case "histogram":
			le, ok := s.labels["le"]
			if !ok {
				i, _ := acc.slot(s.name, s.labels)
				acc.samples[i].value += s.value
				continue
			}
			bound, err := strconv.ParseFloat(le, 64)
			if err != nil {
				continue // the reference would fail the whole scrape
			}
			rest := without(s.labels, "le")
			k := labelKey(rest)
			h := histIndex[k]
			if h == nil {
				h = &histBuckets{labels: rest, bounds: map[float64]float64{}}
				histIndex[k] = h
				hists = append(hists, h)
			}
			h.bounds[bound] += s.value
		default: // counter, summary
			i, _ := acc.slot(s.name, s.labels)
			acc.samples[i].value += s.value
		}
	}
	for _, h := range hists {
		bounds := make([]float64, 0, len(h.bounds))
		for b := range h.bounds {
			bounds = append(bounds, b)
		}
		slices.Sort(bounds)
		total := 0.0
		for _, b := range bounds {
			total += h.bounds[b]
			i, _ := acc.slot(m.name+"_bucket", withLabel(h.labels, "le", formatBound(b)))
			acc.samples[i].value = total
		}
		i, _ := acc.slot(m.name+"_count", h.labels)
		acc.samples[i].value = total
	}
	return acc.samples
}

// build turns the files into const metrics, dropping (and logging) what
// client_golang would refuse so that one odd series never fails the scrape.
func (c *Collector) build(files []processFile) []prometheus.Metric {
	var out []prometheus.Metric
	families := map[string]string{} // family name → type, to refuse conflicts
	desc := descCache{}.get
	claim := func(family, typ string) bool {
		if t, ok := families[family]; ok && t != typ {
			c.logger.Warn("skip multiprocess metric: name taken by another type", "metric", family, "type", typ, "taken_by", t)
			return false
		}
		families[family] = typ
		return true
	}
	emit := func(m prometheus.Metric, err error, name string) {
		if err != nil {
			c.logger.Warn("skip multiprocess sample", "metric", name, "err", err)
			return
		}
		out = append(out, m)
	}

	for _, m := range group(files) {
		samples := merge(m)
		// A summary or a histogram is claimed by its name, counters and gauges sample by sample.
		if (m.typ == "summary" || m.typ == "histogram") && !claim(m.name, m.typ) {
			continue
		}
		get, order := byLabels() // of a summary's or a histogram's series
		switch m.typ {
		case "counter", "gauge":
			vt := prometheus.GaugeValue
			if m.typ == "counter" {
				vt = prometheus.CounterValue
			}
			for _, s := range samples {
				if !claim(s.name, m.typ) {
					continue
				}
				d, values := desc(s.name, m.help, s.labels)
				cm, err := prometheus.NewConstMetric(d, vt, s.value, values...)
				emit(cm, err, s.name)
			}
		case "summary":
			for _, s := range samples {
				e := get(s.labels)
				switch s.name {
				case m.name + "_count":
					e.count = s.value
				case m.name + "_sum":
					e.sum = s.value
				}
			}
			for _, e := range *order {
				d, values := desc(m.name, m.help, e.labels)
				cm, err := prometheus.NewConstSummary(d, toCount(e.count), e.sum, nil, values...)
				emit(cm, err, m.name)
			}
		case "histogram":
			for _, s := range samples {
				switch s.name {
				case m.name + "_bucket":
					bound, err := strconv.ParseFloat(s.labels["le"], 64)
					if err == nil && !math.IsInf(bound, +1) {
						get(without(s.labels, "le")).buckets[bound] = toCount(s.value)
					}
				case m.name + "_count":
					h := get(s.labels)
					h.count, h.hasCount = s.value, true
				case m.name + "_sum":
					get(s.labels).sum = s.value
				}
			}
			for _, h := range *order {
				if !h.hasCount {
					// A _sum without any bucket: nothing a histogram
					// can say about it.
					continue
				}
				d, values := desc(m.name, m.help, h.labels)
				cm, err := prometheus.NewConstHistogram(d, toCount(h.count), h.sum, h.buckets, values...)
				emit(cm, err, m.name)
			}
		}
	}
	return out
}

// descCache holds one Desc per metric name and label names, for one build.
type descCache map[string]*prometheus.Desc

// get is the Desc of metric fq with labels' names (sorted), and labels' values in that order.
func (dc descCache) get(fq, help string, labels map[string]string) (*prometheus.Desc, []string) {
	names := make([]string, 0, len(labels))
	for n := range labels {
		names = append(names, n)
	}
	sort.Strings(names)
	k := fq + "\xff" + strings.Join(names, "\xff")
	d := dc[k]
	if d == nil {
		d = prometheus.NewDesc(fq, help, names, nil)
		dc[k] = d
	}
	values := make([]string, len(names))
	for i, n := range names {
		values[i] = labels[n]
	}
	return d, values
}

// series is a summary's or a histogram's samples of one label set, merged.
type series struct {
	labels     map[string]string
	count, sum float64
	buckets    map[float64]uint64 // histograms only
	hasCount   bool               // histograms only: a _count sample was seen
}

// byLabels returns get, which finds or adds the series of a label set, and the series in
// the order their label sets were first seen.
func byLabels() (get func(labels map[string]string) *series, order *[]*series) {
	byKey := map[string]*series{}
	order = new([]*series)
	get = func(labels map[string]string) *series {
		k := labelKey(labels)
		e := byKey[k]
		if e == nil {
			e = &series{labels: labels, buckets: map[float64]uint64{}}
			byKey[k] = e
			*order = append(*order, e)
		}
		return e
	}
	return get, order
}

// toCount converts an observation count kept as a float (as Python keeps
// it) to the integer client_golang wants.
func toCount(v float64) uint64 {
	if !(v > 0) {
		return 0
	}
	if v >= math.MaxUint64 {
		return math.MaxUint64
	}
	return uint64(math.Round(v))
}

// formatBound prints a bucket bound; only its value matters downstream.
func formatBound(b float64) string {
	return strconv.FormatFloat(b, 'g', -1, 64)
}

// labelKey is a canonical string for a label set.
func labelKey(labels map[string]string) string {
	names := make([]string, 0, len(labels))
	for n := range labels {
		names = append(names, n)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(0xfe)
		b.WriteString(labels[n])
		b.WriteByte(0xff)
	}
	return b.String()
}

// withLabel returns a copy of labels with name set to value.
func withLabel(labels map[string]string, name, value string) map[string]string {
	out := make(map[string]string, len(labels)+1)
	for k, v := range labels {
		out[k] = v
	}
	out[name] = value
	return out
}

// without returns labels without name, copying only when needed.
func without(labels map[string]string, name string) map[string]string {
	if _, ok := labels[name]; !ok {
		return labels
	}
	out := make(map[string]string, len(labels))
	for k, v := range labels {
		if k != name {
			out[k] = v
		}
	}
	return out
}
