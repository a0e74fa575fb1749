package export

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/crypto/bcrypt"
)

func status(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(body)
}

// TestProbes: /-/healthy is 200 whatever the state; /-/ready follows ready.
func TestProbes(t *testing.T) {
	var attached atomic.Bool
	h := Handler(DefaultServerConfig(), prometheus.NewRegistry(), attached.Load, slog.New(slog.DiscardHandler))
	for _, step := range []struct {
		attached     bool
		healthy, rdy int
	}{
		{false, 200, 503},
		{true, 200, 200},
		{false, 200, 503}, // the master exited; --pid-file waits for the next
	} {
		attached.Store(step.attached)
		if code, body := status(t, h, HealthyPath); code != step.healthy {
			t.Errorf("attached=%v: %s = %d %q, want %d", step.attached, HealthyPath, code, body, step.healthy)
		}
		if code, body := status(t, h, ReadyPath); code != step.rdy {
			t.Errorf("attached=%v: %s = %d %q, want %d", step.attached, ReadyPath, code, body, step.rdy)
		}
	}
	if code, _ := status(t, h, "/-/other"); code != 404 {
		t.Errorf("/-/other = %d, want 404", code)
	}
}

// TestProbesBehindWebConfig: with a web config asking for basic auth, the probes need it
// as /metrics does (exporter-toolkit wraps the whole handler).
func TestProbesBehindWebConfig(t *testing.T) {
	hash, err := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webCfg := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(webCfg, []byte(fmt.Sprintf("basic_auth_users:\n  prom: %s\n", hash)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckWebConfig(webCfg); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultServerConfig()
	cfg.WebConfigFile = webCfg
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, l, cfg, Handler(cfg, prometheus.NewRegistry(), func() bool { return true }, slog.New(slog.DiscardHandler)), slog.New(slog.DiscardHandler))
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	}()
	c := &http.Client{Timeout: 5 * time.Second}
	for _, path := range []string{HealthyPath, ReadyPath, cfg.MetricsPath} {
		for _, auth := range []bool{false, true} {
			req, _ := http.NewRequest(http.MethodGet, "http://"+l.Addr().String()+path, nil)
			if auth {
				req.SetBasicAuth("prom", "secret")
			}
			resp, err := c.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			want := http.StatusUnauthorized
			if auth {
				want = http.StatusOK
			}
			if resp.StatusCode != want {
				t.Errorf("%s with auth=%v: %d, want %d", path, auth, resp.StatusCode, want)
			}
		}
	}
}

// TestMastersAttached: gpe_ebpf_masters_attached is the number of masters in the snapshot,
// 0 once the last one is gone.
func TestMastersAttached(t *testing.T) {
	out := string(gather(t, CollectorConfig{}))
	if !strings.Contains(out, "\ngpe_ebpf_masters_attached 1\n") {
		t.Errorf("no gpe_ebpf_masters_attached 1 in:\n%s", out)
	}
	a := scenario(t)
	a.RemoveMaster(100)
	if got := testutil.ToFloat64(onlyAttached{NewCollector(CollectorConfig{}, a, nil, func() uint64 { return 0 })}); got != 0 {
		t.Errorf("gpe_ebpf_masters_attached = %v with no master, want 0", got)
	}
}

// onlyAttached passes on the collector's gpe_ebpf_masters_attached alone.
type onlyAttached struct{ c *Collector }

func (o onlyAttached) Describe(ch chan<- *prometheus.Desc) { ch <- o.c.attached }
func (o onlyAttached) Collect(ch chan<- prometheus.Metric) {
	all := make(chan prometheus.Metric)
	go func() { o.c.Collect(all); close(all) }()
	for m := range all {
		if m.Desc() == o.c.attached {
			ch <- m
		}
	}
}
