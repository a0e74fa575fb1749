package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func probe(t *testing.T, p *gpe, path string) int {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d%s", p.Port, path))
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// TestReadyProbes: with --pid-file, /-/ready is 200 and gpe_ebpf_masters_attached 1 while a
// master is observed, 503 and 0 while gpe-ebpf waits for the next one, and 200 again once it
// is attached; /-/healthy is 200 throughout.
func TestReadyProbes(t *testing.T) {
	requireE2E(t)
	pidFile := filepath.Join(t.TempDir(), "app.pid")
	g1 := startGunicorn(t, gunicornOpts{Args: []string{"--pid", pidFile}})
	p := startGPE(t, "--pid-file", pidFile)
	check := func(when string, ready int, attached float64) {
		t.Helper()
		p.waitScrape(t, 15*time.Second, fmt.Sprintf("gpe_ebpf_masters_attached %v %s", attached, when), func(ms metrics) bool {
			return ms.sum("gpe_ebpf_masters_attached", nil) == attached
		})
		if got := probe(t, p, "/-/ready"); got != ready {
			t.Errorf("%s: /-/ready = %d, want %d", when, got, ready)
		}
		if got := probe(t, p, "/-/healthy"); got != 200 {
			t.Errorf("%s: /-/healthy = %d, want 200", when, got)
		}
	}
	check("attached to the first master", 200, 1)
	g1.Stop()
	check("waiting for the pid file to name a new master", 503, 0)
	g2 := startGunicorn(t, gunicornOpts{Args: []string{"--pid", pidFile}})
	p.waitScrape(t, 15*time.Second, "the new master", func(ms metrics) bool {
		return len(ms.series("gunicorn_master_info", map[string]string{"master_pid": strconv.Itoa(g2.PID)})) == 1
	})
	check("attached to the new master", 200, 1)
}
