package deploytest

import (
	"bufio"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

const dashboardPath = "deploy/grafana/gpe-ebpf.json"

// goldenPath is the exposition the exporter's own tests compare /metrics with:
// the one list of what gpe-ebpf exports. GPE_GOLDEN overrides it.
func goldenPath() string {
	if p := os.Getenv("GPE_GOLDEN"); p != "" {
		return p
	}
	return filepath.Join(repoRoot, "internal/export/testdata/golden.prom")
}

// exportedFamilies reads the metric families (name → type) from the # TYPE
// lines of a Prometheus text exposition.
func exportedFamilies(t *testing.T) map[string]string {
	t.Helper()
	fams := map[string]string{}
	paths := []string{goldenPath()}
	if os.Getenv("GPE_GOLDEN") == "" {
		// The listener gauges come from a collector of their own, with a golden file of its own.
		paths = append(paths, filepath.Join(repoRoot, "internal/export/testdata/listeners.prom"))
	}
	for _, path := range paths {
		f, err := os.Open(path)
		if err != nil {
			t.Fatalf("the dashboard is checked against the metrics gpe-ebpf exports, read from the exporter's golden "+
				"exposition %s, which cannot be read: %v (set GPE_GOLDEN to use another file)", path, err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			if fields := strings.Fields(sc.Text()); len(fields) == 4 && fields[0] == "#" && fields[1] == "TYPE" {
				fams[fields[2]] = fields[3]
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatalf("read %s: %v", path, err)
		}
	}
	if len(fams) == 0 {
		t.Fatalf("%v have no # TYPE lines", paths)
	}
	return fams
}

// query is one PromQL expression of the dashboard and where it is.
type query struct{ where, expr string }

// dashboardQueries walks the dashboard, rows' nested panels included, and
// returns every target's expr and every query variable's query.
func dashboardQueries(t *testing.T, d map[string]any) []query {
	t.Helper()
	var qs []query
	var walk func(panels []any)
	walk = func(panels []any) {
		for _, p := range panels {
			pm, _ := p.(map[string]any)
			title, _ := pm["title"].(string)
			targets, _ := pm["targets"].([]any)
			for _, tg := range targets {
				tm, _ := tg.(map[string]any)
				if expr, _ := tm["expr"].(string); expr != "" {
					qs = append(qs, query{"panel " + title, expr})
				}
			}
			if pm["type"] != "row" && len(targets) == 0 {
				t.Errorf("panel %q has no query", title)
			}
			nested, _ := pm["panels"].([]any)
			walk(nested)
		}
	}
	panels, _ := d["panels"].([]any)
	walk(panels)
	tmpl, _ := d["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	for _, v := range vars {
		vm, _ := v.(map[string]any)
		if vm["type"] != "query" {
			continue
		}
		switch q := vm["query"].(type) {
		case string:
			qs = append(qs, query{"variable " + vm["name"].(string), q})
		case map[string]any:
			s, _ := q["query"].(string)
			qs = append(qs, query{"variable " + vm["name"].(string), s})
		}
	}
	return qs
}

var metricName = regexp.MustCompile(`\b(?:gunicorn|gpe_ebpf)_[A-Za-z0-9_]*`)

// familyOf maps a series name to its family: a histogram's _bucket, _sum and
// _count series belong to the histogram (and a summary's _sum and _count).
func familyOf(name string, fams map[string]string) string {
	if _, ok := fams[name]; ok {
		return name
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		if typ := fams[base]; typ == "histogram" || (typ == "summary" && suffix != "_bucket") {
			return base
		}
	}
	return ""
}

func loadDashboard(t *testing.T) map[string]any {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal([]byte(readRepoFile(t, dashboardPath)), &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// TestDashboardMetricsAreExported fails on any metric the dashboard queries
// that gpe-ebpf does not export: a renamed metric must not leave a blank panel.
func TestDashboardMetricsAreExported(t *testing.T) {
	d := loadDashboard(t)
	fams := exportedFamilies(t)
	used := map[string]bool{}
	for _, q := range dashboardQueries(t, d) {
		for _, name := range metricName.FindAllString(q.expr, -1) {
			fam := familyOf(name, fams)
			if fam == "" {
				t.Errorf("%s: %s is not exported by gpe-ebpf (not in %s)", q.where, name, goldenPath())
				continue
			}
			used[fam] = true
		}
	}
	// What the dashboard is for: each of these must be on it.
	for _, want := range []string{
		"gunicorn_worker_requests_total", "gunicorn_http_requests_total",
		"gunicorn_worker_request_duration_seconds", "gunicorn_http_request_duration_seconds",
		"gunicorn_worker_failed_requests_total", "gunicorn_worker_error_handling_total",
		"gunicorn_worker_memory_bytes", "gunicorn_worker_cpu_percent", "gunicorn_worker_uptime_seconds",
		"gunicorn_worker_state", "gunicorn_master_worker_restarts_total", "gunicorn_master_signals_total",
		"gunicorn_worker_exits_total", "gunicorn_worker_requests_in_flight", "gunicorn_worker_busy_seconds_total",
		"gunicorn_master_workers", "gpe_ebpf_events_lost_total",
	} {
		if !used[want] {
			t.Errorf("no panel shows %s", want)
		}
	}
	names := make([]string, 0, len(used))
	for n := range used {
		names = append(names, n)
	}
	sort.Strings(names)
	t.Logf("dashboard uses %d exported families: %s", len(names), strings.Join(names, " "))
}

// TestDashboardShape checks what Grafana needs to import the dashboard and
// what makes it usable across instances, masters and workers.
func TestDashboardShape(t *testing.T) {
	d := loadDashboard(t)
	if v, _ := d["schemaVersion"].(float64); v < 36 || v > 41 {
		t.Errorf("schemaVersion %v, want about 39", d["schemaVersion"])
	}
	if uid, _ := d["uid"].(string); uid == "" {
		t.Error("no uid")
	}
	tmpl, _ := d["templating"].(map[string]any)
	vars, _ := tmpl["list"].([]any)
	var names []string
	for _, v := range vars {
		vm, _ := v.(map[string]any)
		name, _ := vm["name"].(string)
		names = append(names, name)
		if name == "DS_PROMETHEUS" && (vm["type"] != "datasource" || vm["query"] != "prometheus") {
			t.Errorf("DS_PROMETHEUS must be a prometheus datasource variable, got %v", vm)
		}
	}
	for _, want := range []string{"DS_PROMETHEUS", "instance", "master_pid", "worker_id"} {
		if !slices.Contains(names, want) {
			t.Errorf("no templating variable %s (have %v)", want, names)
		}
	}

	ids := map[float64]string{}
	var walk func(panels []any)
	walk = func(panels []any) {
		for _, p := range panels {
			pm, _ := p.(map[string]any)
			title, _ := pm["title"].(string)
			id, _ := pm["id"].(float64)
			if other, dup := ids[id]; dup {
				t.Errorf("panels %q and %q share id %v", other, title, id)
			}
			ids[id] = title
			if pm["type"] != "row" {
				ds, _ := pm["datasource"].(map[string]any)
				if ds["uid"] != "${DS_PROMETHEUS}" {
					t.Errorf("panel %q: datasource %v, want uid ${DS_PROMETHEUS}", title, pm["datasource"])
				}
				targets, _ := pm["targets"].([]any)
				for _, tg := range targets {
					expr, _ := tg.(map[string]any)["expr"].(string)
					if strings.Contains(expr, "gunicorn_") && !strings.Contains(expr, "$instance") {
						t.Errorf("panel %q: %s ignores $instance", title, expr)
					}
				}
			}
			nested, _ := pm["panels"].([]any)
			walk(nested)
		}
	}
	panels, _ := d["panels"].([]any)
	walk(panels)
}
