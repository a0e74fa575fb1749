package e2e

// Issue 27's end-to-end proofs against real servers from Debian sid, run from the sid root that
// test/roots/build.sh builds (debootstrap, cached in .cache/roots): Prometheus 3.5 scraping
// --native-histograms with protobuf, and victoria-metrics receiving --otlp-endpoint's pushes.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sidRoot returns the sid root, building it on first use; under CI=true a root that cannot be
// built fails the test.
func sidRoot(t *testing.T) string {
	t.Helper()
	return buildRoot(t, "sid", "prometheus", "victoria-metrics")
}

// buildRoot returns the root test/roots/NAME.root declares, building it on first use (under
// CI=true a root that cannot be built fails the test), and logs the versions of show in it.
func buildRoot(t *testing.T, name string, show ...string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("bash", filepath.Join(repoDir(), "test/roots/build.sh"), name)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	need(t, fmt.Sprintf("the %s root (test/roots/build.sh %s)", name, name), func() error {
		if err != nil {
			return fmt.Errorf("%v\n%s", err, stderr.String())
		}
		return nil
	}())
	root := strings.TrimSpace(string(out))
	for _, pkg := range show {
		t.Logf("%s root: %s %s", name, pkg, rootVersion(t, root, pkg))
	}
	return root
}

// rootVersion is the version dpkg found of pkg in root (build.sh's ROOT.versions), "" if none.
func rootVersion(t *testing.T, root, pkg string) string {
	t.Helper()
	v, err := os.ReadFile(root + ".versions")
	if err != nil {
		t.Fatalf("versions of %s: %v", root, err)
	}
	for _, line := range strings.Split(string(v), "\n") {
		if name, version, ok := strings.Cut(line, " "); ok && name == pkg {
			return version
		}
	}
	return ""
}

func repoDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// sample is one element of a query's vector: a float, or a native histogram.
type sample struct {
	Metric    map[string]string `json:"metric"`
	Value     [2]any            `json:"value"`
	Histogram [2]any            `json:"histogram"`
}

// promAPI runs an instant query on a Prometheus query API (Prometheus', victoria-metrics') and
// returns its vector.
func promAPI(base, expr string) ([]sample, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status, Error string
		Data          struct {
			ResultType string   `json:"resultType"`
			Result     []sample `json:"result"`
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("HTTP %d: %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("%s: %s", expr, body.Error)
	}
	return body.Data.Result, nil
}

// scalarOf is the value of a one-sample vector, NaN when there is not exactly one.
func scalarOf(res []sample) float64 {
	if len(res) != 1 {
		return math.NaN()
	}
	s, _ := res[0].Value[1].(string)
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return math.NaN()
	}
	return v
}

// waitQuery polls expr until it returns the one value want, or fails after a minute.
func waitQuery(t *testing.T, base, expr string, want float64) {
	t.Helper()
	var last []sample
	var err error
	if !poll(time.Minute, 500*time.Millisecond, func() bool {
		last, err = promAPI(base, expr)
		return err == nil && scalarOf(last) == want
	}) {
		t.Fatalf("%s: %v (%v), want %v", expr, last, err, want)
	}
}

// TestNativeHistogramsPrometheus3: with --native-histograms, sid's Prometheus 3.5 (native
// histograms on, protobuf only) stores the duration, size and queue-wait histograms as native
// histograms and answers histogram_count and histogram_quantile on them; the classic buckets
// are still there (always_scrape_classic_histograms), so classic dashboards keep working.
func TestNativeHistogramsPrometheus3(t *testing.T) {
	requireE2E(t)
	root := sidRoot(t)
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--native-histograms")
	const oks, slows = 20, 10
	for range oks {
		get(t, g.URL()+"/ok")
	}
	for range slows {
		get(t, g.URL()+"/slow")
	}
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, oks+slows)

	port := freePort(t)
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
scrape_configs:
  - job_name: gpe-ebpf
    scrape_protocols: [PrometheusProto]
    always_scrape_classic_histograms: true
    static_configs:
      - targets: ["127.0.0.1:%d"]
`, p.Port)
	startInRoot(t, root, map[string]string{"prometheus.yml": cfg}, func(dir string) []string {
		return []string{"prometheus", "--config.file=" + dir + "/prometheus.yml", "--storage.tsdb.path=" + dir + "/data",
			"--web.listen-address=127.0.0.1:" + strconv.Itoa(port), "--enable-feature=native-histograms", "--log.level=warn"}
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)

	// Native: histogram_count over the native series, which only a protobuf scrape of a native
	// histogram gives (on a classic series it returns nothing).
	waitQuery(t, base, `histogram_count(sum(gunicorn_worker_request_duration_seconds))`, oks+slows)
	waitQuery(t, base, `histogram_count(sum(gunicorn_http_request_duration_seconds{endpoint="/slow"}))`, slows)
	waitQuery(t, base, `histogram_count(sum(gunicorn_worker_response_size_bytes))`, oks+slows)
	waitQuery(t, base, `histogram_count(sum(gunicorn_worker_request_size_bytes))`, oks+slows)
	res, err := promAPI(base, `gunicorn_worker_request_duration_seconds`)
	if err != nil || len(res) == 0 || res[0].Histogram[1] == nil {
		t.Errorf("gunicorn_worker_request_duration_seconds is not a native histogram in Prometheus: %v %v", res, err)
	}
	if res, err := promAPI(base, `histogram_count(sum(gunicorn_request_queue_seconds))`); err != nil || !(scalarOf(res) >= 1) {
		t.Errorf("queue wait: histogram_count %v (%v), want at least one connection", res, err)
	}
	// /slow sleeps 50 ms: its native median lies in the bucket around it (8 buckets a power of
	// two: 0.0482-0.0526 s and the next ones), well apart from /ok's.
	slow := scalarOf(must(promAPI(base, `histogram_quantile(0.5, sum(gunicorn_http_request_duration_seconds{endpoint="/slow"}))`)))
	ok := scalarOf(must(promAPI(base, `histogram_quantile(0.5, sum(gunicorn_http_request_duration_seconds{endpoint="/ok"}))`)))
	t.Logf("native medians: /slow %.4f s, /ok %.5f s", slow, ok)
	if !(slow >= 0.048 && slow < 0.5) || !(ok > 0 && ok < slow) {
		t.Errorf("native medians /slow %v, /ok %v: want /slow from 0.048 s, /ok below it", slow, ok)
	}
	// Classic: the buckets and the dashboard's form of the quantile still answer.
	waitQuery(t, base, `sum(gunicorn_worker_request_duration_seconds_count)`, oks+slows)
	classic := scalarOf(must(promAPI(base, `histogram_quantile(0.5, sum by (le) (gunicorn_http_request_duration_seconds_bucket{endpoint="/slow"}))`)))
	if !(classic > 0.05 && classic <= 0.1) {
		t.Errorf("classic median of /slow %v, want in its bucket (0.05, 0.1]", classic)
	}
}

// startInRoot runs a server from root (test/roots/run.sh: the host's network, so it listens
// on loopback) until the test ends. Its files are written first into a fresh directory of the
// root, whose path inside the root args is given.
func startInRoot(t *testing.T, root string, files map[string]string, args func(dir string) []string) {
	t.Helper()
	host, dir := rootTempDir(t, root)
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(host, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := args(dir)
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(repoDir(), "test/roots/run.sh"), root}, a...)...)
	logs := new(safeBuffer)
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", a[0], logs.String())
		}
	})
}

// rootTempDir makes a fresh directory in root's /tmp, removed when the test ends (after the
// cleanups registered later, which stop what uses it), and returns its path on the host and
// inside the root.
func rootTempDir(t *testing.T, root string) (host, inside string) {
	t.Helper()
	host, err := os.MkdirTemp(filepath.Join(root, "tmp"), "gpe-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(host) })
	return host, "/tmp/" + filepath.Base(host)
}

func must(res []sample, err error) []sample {
	if err != nil {
		return nil
	}
	return res
}

// TestOTLPPushVictoriaMetrics: --otlp-endpoint pushes to sid's victoria-metrics (OTLP in, the
// Prometheus query API out). The receiver is down at first: the failed pushes are counted in
// gpe_ebpf_otlp_errors_total while /metrics keeps answering, and retried; once it is up, the
// pushed totals equal the scraped ones, under the resource's host name, app and master PID.
func TestOTLPPushVictoriaMetrics(t *testing.T) {
	requireE2E(t)
	root := sidRoot(t)
	port := freePort(t) // victoria-metrics' port, nothing listening yet
	g := startGunicorn(t, gunicornOpts{})
	p := startGPE(t, "--pid", strconv.Itoa(g.PID), "--otlp-endpoint",
		fmt.Sprintf("http://127.0.0.1:%d/opentelemetry/v1/metrics", port), "--otlp-interval", "2s")
	const n = 25
	for i := range n {
		path := "/ok"
		if i%5 == 0 {
			path = "/fail"
		}
		get(t, g.URL()+path)
	}
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, n)
	waitFor(t, 30*time.Second, "a failed OTLP push counted", func() bool {
		return p.scrape(t).sum("gpe_ebpf_otlp_errors_total", nil) >= 2
	})

	startInRoot(t, root, nil, func(dir string) []string {
		return []string{"victoria-metrics", "-httpListenAddr=127.0.0.1:" + strconv.Itoa(port), "-storageDataPath=" + dir + "/data",
			"-retentionPeriod=1d", "-search.latencyOffset=0s", "-loggerLevel=ERROR"}
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	waitFor(t, 30*time.Second, "an accepted OTLP push", func() bool {
		return p.scrape(t).sum("gpe_ebpf_otlp_pushes_total", nil) >= 1
	})
	scraped := p.scrape(t)
	for _, tc := range []struct {
		expr, name string
		labels     map[string]string
	}{
		{`sum(gunicorn_worker_requests_total)`, "gunicorn_worker_requests_total", nil},
		{`sum(gunicorn_http_requests_total{status="500"})`, "gunicorn_http_requests_total", map[string]string{"status": "500"}},
		{`sum(gunicorn_http_requests_total{endpoint="/ok"})`, "gunicorn_http_requests_total", map[string]string{"endpoint": "/ok"}},
		{`sum(gunicorn_worker_failed_requests_total)`, "gunicorn_worker_failed_requests_total", nil},
	} {
		want := scraped.sum(tc.name, tc.labels)
		if want == 0 {
			t.Fatalf("%s%v scraped 0: the comparison would prove nothing", tc.name, tc.labels)
		}
		waitQuery(t, base, tc.expr, want)
	}
	waitQuery(t, base, `sum(gunicorn_worker_request_duration_seconds_count)`, n)
	res, err := promAPI(base, `gunicorn_worker_requests_total`)
	if err != nil || len(res) == 0 {
		t.Fatalf("gunicorn_worker_requests_total in victoria-metrics: %v %v", res, err)
	}
	host, _ := os.Hostname()
	labels := res[0].Metric
	t.Logf("labels of a pushed series: %v", labels)
	for k, want := range map[string]string{"service.name": "app:app", "host.name": host, "process.pid": strconv.Itoa(g.PID)} {
		if labels[k] != want && labels[strings.ReplaceAll(k, ".", "_")] != want {
			t.Errorf("pushed resource attribute %s = %q, want %q", k, labels[k], want)
		}
	}
}
