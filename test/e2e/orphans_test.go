package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 25, point 2: who is a master. Debian's Gunicorn runs without setproctitle, so a worker
// shows its master's very command line; after a kill -9 of the master its workers are
// re-parented to init and run on until they notice (a sync worker at its next accept timeout,
// half of --timeout). gpe-ebpf used to attach each of them as a master.

// mastersSeen are the master_pid values of gunicorn_master_info in a scrape.
func mastersSeen(ms metrics) []string {
	var out []string
	for _, m := range ms.series("gunicorn_master_info", nil) {
		out = append(out, label(m, "master_pid"))
	}
	return out
}

// alive lists the pids that still run (not gone, not a zombie).
func alive(pids []int) []int {
	var out []int
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		if f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:]); len(f) > 0 && f[0] != "Z" {
			out = append(out, pid)
		}
	}
	return out
}

// TestOrphanedWorkersAreNoMasters: under --discover, kill -9 of two masters leaves their four
// workers running without a master for several scans; none of them is ever attached as a
// master (gunicorn_master_info, gpe_ebpf_masters_attached), each is logged once as a worker
// whose master exited, and nothing is reported as lost events. The surviving master is
// observed throughout. Other Gunicorns on the host may be discovered too: the test looks at
// its own PIDs, and at gpe_ebpf_masters_attached agreeing with gunicorn_master_info.
func TestOrphanedWorkersAreNoMasters(t *testing.T) {
	requireE2E(t)
	// --timeout 20: an orphaned sync worker notices within 10 s, several 2 s scans.
	var gs []*gunicorn
	for i := 0; i < 3; i++ {
		g := startGunicorn(t, gunicornOpts{Args: []string{"--timeout", "20"}})
		t.Cleanup(func() { syscall.Kill(-g.PID, syscall.SIGKILL) }) // the orphans keep its group
		gs = append(gs, g)
	}
	p := startGPE(t, "--discover")
	p.waitScrape(t, 15*time.Second, "the three masters and their workers", func(ms metrics) bool {
		for _, g := range gs {
			if !slices.Contains(mastersSeen(ms), strconv.Itoa(g.PID)) || !seesWorkers(ms, g.Workers()) {
				return false
			}
		}
		return true
	})

	var orphans []int
	for _, g := range gs[:2] {
		orphans = append(orphans, g.Workers()...)
		if err := syscall.Kill(g.PID, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
	}
	if len(orphans) != 4 {
		t.Fatalf("workers of the killed masters: %v, want 4", orphans)
	}
	survivor := strconv.Itoa(gs[2].PID)
	scrapes := 0
	// Scrape every 500 ms while the orphans live: none may ever show as a master.
	if !poll(40*time.Second, 500*time.Millisecond, func() bool {
		if len(alive(orphans)) == 0 {
			return true
		}
		ms := p.scrape(t)
		scrapes++
		seen := mastersSeen(ms)
		for _, o := range orphans {
			if slices.Contains(seen, strconv.Itoa(o)) {
				t.Fatalf("orphaned worker %d attached as a master: gunicorn_master_info %v", o, seen)
			}
		}
		for _, g := range gs[:2] {
			if slices.Contains(seen, strconv.Itoa(g.PID)) && scrapes > 20 {
				t.Errorf("killed master %d still observed after %d scrapes", g.PID, scrapes)
			}
		}
		if !slices.Contains(seen, survivor) {
			t.Errorf("the surviving master %s is not observed: %v", survivor, seen)
		}
		if got := ms.sum("gpe_ebpf_masters_attached", nil); got != float64(len(seen)) {
			t.Errorf("gpe_ebpf_masters_attached %v, with %d gunicorn_master_info series %v", got, len(seen), seen)
		}
		return false
	}) {
		t.Fatalf("orphans %v still running after 40 s", alive(orphans))
	}
	out := p.out.String()
	logged := 0
	for _, o := range orphans {
		n := strings.Count(out, fmt.Sprintf("worker whose master exited runs on; it is no master and is not observed\" worker_pid=%d ", o))
		if n > 1 {
			t.Errorf("orphan %d logged %d times, want at most once", o, n)
		}
		logged += n
	}
	if logged == 0 {
		t.Errorf("no scan saw the orphans %v while they ran (%d scrapes): the test proved nothing", orphans, scrapes)
	}
	if strings.Contains(out, "events lost") {
		t.Errorf("gpe-ebpf reported lost events:\n%s", out)
	}
	ms := p.scrape(t)
	if n := ms.sum("gpe_ebpf_events_lost_total", nil); n != 0 {
		t.Errorf("gpe_ebpf_events_lost_total %v", n)
	}
	t.Logf("%d orphans, %d of them seen by a scan while they ran, %d scrapes", len(orphans), logged, scrapes)
}

// TestLauncherMaster: a master started by a launcher script named gunicorn-start that does
// not exec is a master: --pid accepts it, --discover observes it (and not the launcher), and
// its requests are counted.
func TestLauncherMaster(t *testing.T) {
	requireE2E(t)
	port := freePort(t)
	script := filepath.Join(t.TempDir(), "gunicorn-start")
	body := fmt.Sprintf("#!/bin/sh\n# no exec: the shell stays the master's parent\ngunicorn -w 2 -k sync -b 127.0.0.1:%d --chdir %s app:app\necho gunicorn stopped\n", port, appDir())
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	launcher := exec.Command(script)
	launcher.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := launcher.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-launcher.Process.Pid, syscall.SIGTERM)
		launcher.Wait()
	})
	var master int
	waitFor(t, 20*time.Second, "the launched master and its 2 workers", func() bool {
		if kids := children(launcher.Process.Pid); len(kids) == 1 {
			master = kids[0]
		}
		return master != 0 && len(children(master)) == 2
	})
	url := fmt.Sprintf("http://127.0.0.1:%d/ok", port)

	t.Run("pid", func(t *testing.T) {
		p := startGPE(t, "--pid", strconv.Itoa(master))
		for i := 0; i < 3; i++ {
			get(t, url)
		}
		p.waitMetric(t, "gunicorn_worker_requests_total", nil, 3)
	})
	t.Run("discover", func(t *testing.T) {
		p := startGPE(t, "--discover")
		mp := strconv.Itoa(master)
		ms := p.waitScrape(t, 15*time.Second, "the launched master with its workers", func(ms metrics) bool {
			return slices.Contains(mastersSeen(ms), mp) && seesWorkers(ms, children(master))
		})
		if slices.Contains(mastersSeen(ms), strconv.Itoa(launcher.Process.Pid)) {
			t.Errorf("the launcher %d is observed as a master", launcher.Process.Pid)
		}
		if got := ms.sum("gunicorn_master_workers", map[string]string{"master_pid": mp}); got != 2 {
			t.Errorf("gunicorn_master_workers{master_pid=%s} = %v, want 2", mp, got)
		}
		for i := 0; i < 4; i++ {
			get(t, url)
		}
		p.waitMetric(t, "gunicorn_worker_requests_total", map[string]string{"master_pid": mp}, 4)
	})
}
