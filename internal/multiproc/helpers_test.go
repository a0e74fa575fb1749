package multiproc

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// debianPython is Debian's interpreter, the one python3-prometheus-client
// installs into; the python3 on PATH may be another one without it.
const debianPython = "/usr/bin/python3"

// requirePython returns the interpreter, or skips the test (fails it under
// CI=true) when Debian's python3 or its prometheus_client is missing.
func requirePython(t testing.TB) string {
	t.Helper()
	out, err := exec.Command(debianPython, "-c", "import prometheus_client.multiprocess, prometheus_client.values").CombinedOutput()
	if err == nil {
		return debianPython
	}
	msg := fmt.Sprintf("%s with prometheus_client is needed to generate reference files (apt-get install python3-prometheus-client): %v: %s", debianPython, err, out)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// runReference runs testdata/reference.py over scenario and returns the
// directory of files it wrote and the exposition MultiProcessCollector
// renders for them once the dead pids are marked dead.
func runReference(t *testing.T, scenario string, dead []int) (dir, exposition string) {
	t.Helper()
	py := requirePython(t)
	tmp := t.TempDir()
	dir = filepath.Join(tmp, "multiproc")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(tmp, "scenario.py")
	if err := os.WriteFile(script, []byte(scenario), 0o644); err != nil {
		t.Fatal(err)
	}
	deadArg := make([]string, len(dead))
	for i, p := range dead {
		deadArg[i] = strconv.Itoa(p)
	}
	ref, err := filepath.Abs("testdata/reference.py")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, ref, dir, filepath.Join(tmp, "reference"), strings.Join(deadArg, ","), script)
	cmd.Env = append(os.Environ(), "PYTHONDONTWRITEBYTECODE=1", "PYTHONIOENCODING=utf-8")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("reference.py: %v\n%s", err, stderr.String())
	}
	return dir, string(out)
}

// fileSpec is one file for testdata/write_layout.py.
type fileSpec struct {
	Layout  string  `json:"layout"`
	Records [][]any `json:"records"`
}

// writeLayout writes files with testdata/write_layout.py into a new directory.
func writeLayout(t *testing.T, files map[string]fileSpec) string {
	t.Helper()
	py := requirePython(t)
	dir := t.TempDir()
	spec, err := json.Marshal(map[string]any{"files": files})
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "testdata/write_layout.py", dir)
	cmd.Stdin = bytes.NewReader(spec)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("write_layout.py: %v\n%s", err, out)
	}
	return dir
}

// rec is a record for writeLayout.
func rec(metric, name string, labels map[string]string, help string, value, ts float64) []any {
	if labels == nil {
		labels = map[string]string{}
	}
	return []any{metric, name, labels, help, value, ts}
}

// gather registers c alone, gathers, and renders the text exposition with
// expfmt, as the /metrics handler would.
func gather(t *testing.T, c prometheus.Collector) string {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var b bytes.Buffer
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatalf("render: %v", err)
		}
	}
	return b.String()
}

// flatSample is one line of an exposition, identified by flatten's key.
type flatSample struct {
	typ   dto.MetricType
	value float64
}

const errorsMetric = "gpe_ebpf_multiproc_errors_total"

// flatten parses an exposition with expfmt's TextParser and returns every
// sample keyed by name{sorted labels}, le and quantile normalised as numbers,
// leaving out the collector's own error counter.
func flatten(t *testing.T, text string) map[string]flatSample {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatalf("parse exposition: %v\n%s", err, text)
	}
	out := map[string]flatSample{}
	add := func(mf *dto.MetricFamily, name string, labels []*dto.LabelPair, extra map[string]string, v float64) {
		pairs := map[string]string{}
		for _, l := range labels {
			pairs[l.GetName()] = l.GetValue()
		}
		for k, v := range extra {
			pairs[k] = v
		}
		names := make([]string, 0, len(pairs))
		for k := range pairs {
			names = append(names, k)
		}
		sort.Strings(names)
		parts := make([]string, len(names))
		for i, k := range names {
			parts[i] = k + "=" + strconv.Quote(pairs[k])
		}
		k := name + "{" + strings.Join(parts, ",") + "}"
		if _, dup := out[k]; dup {
			t.Errorf("duplicate sample %s", k)
		}
		out[k] = flatSample{typ: mf.GetType(), value: v}
	}
	num := func(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }
	for name, mf := range mfs {
		if name == errorsMetric {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				add(mf, name, m.GetLabel(), nil, m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				add(mf, name, m.GetLabel(), nil, m.GetGauge().GetValue())
			case dto.MetricType_UNTYPED:
				add(mf, name, m.GetLabel(), nil, m.GetUntyped().GetValue())
			case dto.MetricType_SUMMARY:
				s := m.GetSummary()
				for _, q := range s.GetQuantile() {
					add(mf, name, m.GetLabel(), map[string]string{"quantile": num(q.GetQuantile())}, q.GetValue())
				}
				add(mf, name+"_sum", m.GetLabel(), nil, s.GetSampleSum())
				add(mf, name+"_count", m.GetLabel(), nil, float64(s.GetSampleCount()))
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				for _, b := range h.GetBucket() {
					add(mf, name+"_bucket", m.GetLabel(), map[string]string{"le": num(b.GetUpperBound())}, float64(b.GetCumulativeCount()))
				}
				add(mf, name+"_sum", m.GetLabel(), nil, h.GetSampleSum())
				add(mf, name+"_count", m.GetLabel(), nil, float64(h.GetSampleCount()))
			default:
				t.Fatalf("unexpected type %v of %s", mf.GetType(), name)
			}
		}
	}
	return out
}

// compareExpositions checks that got has exactly the samples of want, with
// the same types and values.
func compareExpositions(t *testing.T, want, got string) {
	t.Helper()
	w, g := flatten(t, want), flatten(t, got)
	for k, ws := range w {
		gs, ok := g[k]
		switch {
		case !ok:
			t.Errorf("missing sample %s = %v", k, ws.value)
		case gs.typ != ws.typ:
			t.Errorf("sample %s: type %v, want %v", k, gs.typ, ws.typ)
		case !sameFloat(gs.value, ws.value):
			t.Errorf("sample %s = %v, want %v", k, gs.value, ws.value)
		}
	}
	for k, gs := range g {
		if _, ok := w[k]; !ok {
			t.Errorf("unexpected sample %s = %v", k, gs.value)
		}
	}
	if t.Failed() {
		t.Logf("want:\n%s\ngot:\n%s", want, got)
	}
}

// sameFloat allows for sums taken in another order.
func sameFloat(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	if a == b {
		return true
	}
	return math.Abs(a-b) <= 1e-12*math.Max(math.Abs(a), math.Abs(b))
}

// errorCount returns gpe_ebpf_multiproc_errors_total as gathered from c.
func errorCount(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(gather(t, c)))
	if err != nil {
		t.Fatal(err)
	}
	mf := mfs[errorsMetric]
	if mf == nil {
		t.Fatalf("%s not exposed", errorsMetric)
	}
	return mf.GetMetric()[0].GetCounter().GetValue()
}

// liveExcept returns a liveness callback for which only the given pids are dead.
func liveExcept(dead ...int) func(int) bool {
	return func(pid int) bool {
		for _, d := range dead {
			if pid == d {
				return false
			}
		}
		return true
	}
}

// encodeRecord is the Go twin of the writer, for hand-made and fuzz inputs.
type encodeRecord struct {
	key       string
	value, ts float64
}

// encode builds a file image in layout l (value or value+timestamp),
// preallocated to size bytes if size is larger than needed.
func encode(l layout, size int, recs ...encodeRecord) []byte {
	var body []byte
	for _, r := range recs {
		body = binary.NativeEndian.AppendUint32(body, uint32(len(r.key)))
		body = append(body, r.key...)
		body = append(body, bytes.Repeat([]byte(" "), 8-(len(r.key)+4)%8)...)
		body = binary.NativeEndian.AppendUint64(body, math.Float64bits(r.value))
		if l == layoutValueTimestamp {
			body = binary.NativeEndian.AppendUint64(body, math.Float64bits(r.ts))
		}
	}
	data := binary.NativeEndian.AppendUint32(nil, uint32(headerSize+len(body)))
	data = append(data, 0, 0, 0, 0)
	data = append(data, body...)
	if size > len(data) {
		data = append(data, make([]byte, size-len(data))...)
	}
	return data
}

// jsonKey makes a key the way mmap_key does (sorted label keys; Go's
// encoding differs in spacing and escapes, which the reader must not care about).
func jsonKey(metric, name string, labels map[string]string, help string) string {
	if labels == nil {
		labels = map[string]string{}
	}
	b, err := json.Marshal([]any{metric, name, labels, help})
	if err != nil {
		panic(err)
	}
	return string(b)
}
