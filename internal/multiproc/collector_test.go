package multiproc

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCollectorMatchesReference writes files with the real prometheus_client
// (several simulated processes) and checks that the Collector reports exactly
// what prometheus_client's MultiProcessCollector renders for them.
func TestCollectorMatchesReference(t *testing.T) {
	tests := []struct {
		name     string
		scenario string
		dead     []int
	}{
		{
			name: "counter, one process",
			scenario: `
as_pid(101)
c = Counter('requests', 'Requests served.', ['method'])
c.labels('GET').inc(3)
c.labels('POST').inc(1.5)
`,
		},
		{
			name: "counters summed over processes, dead ones included",
			scenario: `
as_pid(101)
c = Counter('jobs_total', 'Jobs done.')
l = Counter('hits', 'Hits by path.', ['path', 'code'])
c.inc(2)
l.labels('/a', '200').inc()
as_pid(102)
c.inc(5)
l.labels('/a', '200').inc(4)
l.labels('/b', '500').inc()
as_pid(103)
c.inc(0.25)
`,
			dead: []int{102},
		},
		{
			name: "histograms: cumulative buckets, sum and count over processes",
			scenario: `
h = Histogram('latency_seconds', 'Latency.', ['route'], buckets=[0.005, 0.1, 1, 2.5, 10])
u = Histogram('plain', 'Default buckets.')
for pid, obs in [(101, [0.001, 0.2, 3]), (102, [0.05, 0.05, 20]), (103, [])]:
    as_pid(pid)
    for o in obs:
        h.labels('/x').observe(o)
        u.observe(o)
    h.labels('/y').observe(1)
`,
		},
		{
			name: "summaries: sum and count over processes",
			scenario: `
s = Summary('payload_bytes', 'Payload sizes.', ['kind'])
n = Summary('bare', 'No labels.')
for pid in (101, 102, 103):
    as_pid(pid)
    s.labels('json').observe(pid)
    s.labels('xml').observe(0.5)
    n.observe(2)
`,
		},
		{
			name:     "gauge modes, no process dead",
			scenario: gaugeModes,
		},
		{
			name:     "gauge modes, one process dead",
			scenario: gaugeModes,
			dead:     []int{102},
		},
		{
			name:     "gauge modes, all live-mode processes dead",
			scenario: gaugeModes,
			dead:     []int{101, 102, 103},
		},
		{
			name: "labels and help with unicode and escapes",
			scenario: `
c = Counter('esc', 'Help with a \\ backslash,\na newline and "quotes" ☃.', ['v', 'w'])
g = Gauge('esc_gauge', 'Gauge ünïcödé.', ['v'], multiprocess_mode='livesum')
for pid in (101, 102):
    as_pid(pid)
    c.labels('quote"d', 'back\\slash').inc()
    c.labels('new\nline', 'tab\there').inc(2)
    c.labels('naïve ☃ 日本語 😀', '').inc(3)
    c.labels('{"json": [1]}', '\\"\n').inc(4)
    g.labels('ç"\\\n').set(pid)
`,
		},
		{
			name: "many processes and every type at once",
			scenario: `
c = Counter('ops', 'Ops.', ['op'])
g = Gauge('temp', 'Temp.', ['room'], multiprocess_mode='max')
h = Histogram('size', 'Size.', buckets=[1, 10, 100])
s = Summary('wait', 'Wait.')
for pid in range(200, 216):
    as_pid(pid)
    c.labels('op%d' % (pid % 3)).inc(pid)
    g.labels('r%d' % (pid % 2)).set(pid * 1.5)
    h.observe(pid % 120)
    s.observe(pid / 8)
`,
			dead: []int{201, 202},
		},
		{
			name:     "no metric at all",
			scenario: `as_pid(101)`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir, want := runReference(t, tt.scenario, tt.dead)
			c := NewCollector(dir, liveExcept(tt.dead...), nil)
			compareExpositions(t, want, gather(t, c))
			if n := errorCount(t, c); n != 0 {
				t.Errorf("%s = %v on files written by prometheus_client", errorsMetric, n)
			}
		})
	}
}

// gaugeModes sets one gauge per multiprocess mode of prometheus_client 0.16
// in three processes, with labels, so that each mode's merge is visible.
const gaugeModes = `
modes = ['all', 'liveall', 'min', 'livemin', 'max', 'livemax', 'sum', 'livesum']
gs = {m: Gauge('g_' + m, 'Gauge in mode %s.' % m, ['shard'], multiprocess_mode=m) for m in modes}
plain = {m: Gauge('p_' + m, 'Unlabelled gauge in mode %s.' % m, multiprocess_mode=m) for m in modes}
for pid, v in [(101, 5.0), (102, -2.5), (103, 40.0)]:
    as_pid(pid)
    for m in modes:
        gs[m].labels('a').set(v)
        gs[m].labels('b').set(v * 2)
        plain[m].set(v + 1)
    if pid == 102:
        for m in modes:
            gs[m].labels('only102').set(7)
`

// TestNewerLayout reads files in the value+timestamp layout of
// prometheus_client 0.17+, written byte for byte by testdata/write_layout.py,
// including the mostrecent modes that only that layout can support.
func TestNewerLayout(t *testing.T) {
	const newer, older = "value+timestamp", "value"
	gauge := func(v, ts float64) []any {
		return rec("g", "g", map[string]string{"k": "v☃"}, "A gauge.", v, ts)
	}
	tests := []struct {
		name  string
		files map[string]fileSpec
		dead  []int
		want  string
	}{
		{
			name: "mostrecent takes the newest write over all processes",
			files: map[string]fileSpec{
				"gauge_mostrecent_1.db": {newer, [][]any{gauge(1, 100)}},
				"gauge_mostrecent_2.db": {newer, [][]any{gauge(2, 300)}},
				"gauge_mostrecent_3.db": {newer, [][]any{gauge(3, 200)}},
			},
			dead: []int{2}, // mostrecent is not a live mode: dead pids count
			want: "# TYPE g gauge\ng{k=\"v☃\"} 2\n",
		},
		{
			name: "livemostrecent ignores dead processes",
			files: map[string]fileSpec{
				"gauge_livemostrecent_1.db": {newer, [][]any{gauge(1, 100)}},
				"gauge_livemostrecent_2.db": {newer, [][]any{gauge(2, 300)}},
				"gauge_livemostrecent_3.db": {newer, [][]any{gauge(3, 200)}},
			},
			dead: []int{2},
			want: "# TYPE g gauge\ng{k=\"v☃\"} 3\n",
		},
		{
			name: "mostrecent never written (timestamp 0) is not reported",
			files: map[string]fileSpec{
				"gauge_mostrecent_1.db": {newer, [][]any{
					gauge(9, 0),
					rec("h", "h", nil, "Set once.", 4, 50),
				}},
			},
			want: "# TYPE h gauge\nh 4\n",
		},
		{
			name: "counters, histograms and summaries of both layouts sum",
			files: map[string]fileSpec{
				"counter_1.db": {newer, [][]any{rec("c", "c_total", map[string]string{"a": "x"}, "C.", 2, 10)}},
				"counter_2.db": {older, [][]any{rec("c", "c_total", map[string]string{"a": "x"}, "C.", 3, 0)}},
				"histogram_1.db": {newer, [][]any{
					rec("h", "h_sum", nil, "H.", 1.5, 1),
					rec("h", "h_bucket", map[string]string{"le": "1.0"}, "H.", 1, 1),
					rec("h", "h_bucket", map[string]string{"le": "+Inf"}, "H.", 1, 1),
				}},
				"histogram_2.db": {newer, [][]any{
					rec("h", "h_sum", nil, "H.", 0.5, 1),
					rec("h", "h_bucket", map[string]string{"le": "1.0"}, "H.", 1, 1),
					rec("h", "h_bucket", map[string]string{"le": "+Inf"}, "H.", 0, 1),
				}},
				"summary_7.db": {newer, [][]any{
					rec("s", "s_count", nil, "S.", 3, 1),
					rec("s", "s_sum", nil, "S.", 4.5, 1),
				}},
				"gauge_all_7.db": {newer, [][]any{rec("a", "a", nil, "A.", 1, 1)}},
				"gauge_all_8.db": {older, [][]any{rec("a", "a", nil, "A.", 2, 0)}},
				"gauge_max_7.db": {newer, [][]any{rec("m", "m", nil, "M.", 1, 1)}},
				"gauge_max_8.db": {older, [][]any{rec("m", "m", nil, "M.", 2, 0)}},
				"gauge_sum_1.db": {newer, nil},
				"gauge_sum_9.db": {older, nil},
			},
			want: `# TYPE c_total counter
c_total{a="x"} 5
# TYPE h histogram
h_bucket{le="1"} 2
h_bucket{le="+Inf"} 3
h_sum 2
h_count 3
# TYPE s summary
s_sum 4.5
s_count 3
# TYPE a gauge
a{pid="7"} 1
a{pid="8"} 2
# TYPE m gauge
m 2
`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeLayout(t, tt.files)
			for name := range tt.files {
				data, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Fatal(err)
				}
				_, l, err := parse(data, nil)
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if want := tt.files[name].Layout; len(tt.files[name].Records) > 0 && l.String() != want {
					t.Errorf("%s: layout %s, want %s", name, l, want)
				}
			}
			c := NewCollector(dir, liveExcept(tt.dead...), nil)
			compareExpositions(t, tt.want, gather(t, c))
			if n := errorCount(t, c); n != 0 {
				t.Errorf("%s = %v", errorsMetric, n)
			}
		})
	}
}
