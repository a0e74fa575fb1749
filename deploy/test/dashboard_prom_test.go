package deploytest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestDashboardQueriesOnPrometheus runs every query of the dashboard on a real Prometheus 2
// (Debian 12's 2.42, on the host) and a real Prometheus 3 (sid's 3.5, from the sid root), each
// scraping the golden expositions every second with its counters growing: every query must
// parse and return at least one number (not NaN) on both.
func TestDashboardQueriesOnPrometheus(t *testing.T) {
	target := servedGolden(t)
	queries := dashboardQueries(t, loadDashboard(t))
	t.Run("2.42-host", func(t *testing.T) {
		bin := requireTool(t, "prometheus", "prometheus")
		dir := t.TempDir()
		checkQueries(t, queries, func(ctx context.Context, port int) *exec.Cmd {
			writePromConfig(t, filepath.Join(dir, "prometheus.yml"), target)
			return exec.CommandContext(ctx, bin, promArgs(dir, port)...)
		})
	})
	t.Run("3.5-sid", func(t *testing.T) {
		root := debianRoot(t, "sid")
		t.Logf("prometheus %s", rootVersion(t, root, "prometheus"))
		host, inside := rootTempDir(t, root)
		checkQueries(t, queries, func(ctx context.Context, port int) *exec.Cmd {
			writePromConfig(t, filepath.Join(host, "prometheus.yml"), target)
			return inRoot(ctx, root, "prometheus", promArgs(inside, port)...)
		})
	})
}

// promArgs runs a Prometheus with its configuration and storage in dir, on loopback.
func promArgs(dir string, port int) []string {
	return []string{"--config.file=" + dir + "/prometheus.yml", "--storage.tsdb.path=" + dir + "/data",
		"--web.listen-address=127.0.0.1:" + strconv.Itoa(port), "--log.level=warn"}
}

func writePromConfig(t *testing.T, path, target string) {
	t.Helper()
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"+
		"  - job_name: gpe-ebpf\n    static_configs:\n      - targets: [%q]\n", target)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// servedGolden serves the golden expositions on loopback and returns host:port. Scrape n
// serves every counter and histogram sample as (value+1)·n, so each grows (a rate is never 0,
// a quantile never NaN) and the buckets stay cumulative; gauges are served as they are.
func servedGolden(t *testing.T) string {
	t.Helper()
	var text strings.Builder
	text.WriteString(readRepoFile(t, "internal/export/testdata/golden.prom"))
	text.WriteString(readRepoFile(t, "internal/export/testdata/listeners.prom"))
	fams := exportedFamilies(t)
	var scrapes atomic.Int64
	sample := regexp.MustCompile(`^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? (\S+)$`)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := float64(scrapes.Add(1))
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		sc := bufio.NewScanner(strings.NewReader(text.String()))
		for sc.Scan() {
			line := sc.Text()
			if m := sample.FindStringSubmatch(line); m != nil {
				typ := fams[familyOf(m[1], fams)]
				if v, err := strconv.ParseFloat(m[3], 64); err == nil && (typ == "counter" || typ == "histogram") {
					line = m[1] + m[2] + " " + strconv.FormatFloat((v+1)*n, 'g', -1, 64)
				}
			}
			fmt.Fprintln(w, line)
		}
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return l.Addr().String()
}

// dashboardVars are the values the checks give Grafana's variables: every series.
var dashboardVars = strings.NewReplacer(`$instance`, `.*`, `$master_pid`, `.*`, `$worker_id`, `.*`,
	`$__rate_interval`, `10s`, `$__range`, `1m`)

// labelValues is Grafana's label_values(selector, label) variable query.
var labelValues = regexp.MustCompile(`^label_values\((.*), *([a-zA-Z_]+)\)$`)

// checkQueries starts a Prometheus (start runs it on the port), waits for ten scrapes and runs
// every query.
func checkQueries(t *testing.T, queries []query, start func(ctx context.Context, port int) *exec.Cmd) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	port := freePort(t)
	cmd := start(ctx, port)
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("prometheus log:\n%s", logs.String())
		}
	})
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	waitHTTP(t, base+"/-/ready")
	deadline := time.Now().Add(time.Minute)
	for {
		res, err := promQuery(base, `count_over_time(up{job="gpe-ebpf"}[1m])`)
		if err == nil && len(res) == 1 && res[0] >= 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Prometheus did not scrape the golden exposition ten times in a minute: %v %v", res, err)
		}
		time.Sleep(time.Second)
	}
	for _, q := range queries {
		expr := dashboardVars.Replace(q.expr)
		if m := labelValues.FindStringSubmatch(expr); m != nil {
			expr = m[1] // the series the variable's values come from
		}
		res, err := promQuery(base, expr)
		if err != nil {
			t.Errorf("%s: %s: %v", q.where, expr, err)
			continue
		}
		finite := 0
		for _, v := range res {
			if !math.IsNaN(v) {
				finite++
			}
		}
		if finite == 0 {
			t.Errorf("%s: %s returned no number (%v)", q.where, expr, res)
		}
	}
}

// promQuery runs an instant query and returns the values of its vector.
func promQuery(base, expr string) ([]float64, error) {
	resp, err := httpClient.Get(base + "/api/v1/query?query=" + url.QueryEscape(expr))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string `json:"resultType"`
			Result     []struct {
				Value [2]any `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("decode the answer (HTTP %d): %w", resp.StatusCode, err)
	}
	if body.Status != "success" {
		return nil, fmt.Errorf("%s: %s", body.Status, body.Error)
	}
	if body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("result type %s, want vector", body.Data.ResultType)
	}
	out := make([]float64, 0, len(body.Data.Result))
	for _, r := range body.Data.Result {
		s, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return nil, fmt.Errorf("value %v: %w", r.Value[1], err)
		}
		out = append(out, v)
	}
	return out, nil
}
