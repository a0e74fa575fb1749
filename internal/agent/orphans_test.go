package agent

import (
	"bytes"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// logLines collects what the agent logs, for the tests that count log lines.
type logLines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// count is how many lines contain all of words.
func (l *logLines) count(words ...string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, line := range strings.Split(l.buf.String(), "\n") {
		all := line != ""
		for _, w := range words {
			all = all && strings.Contains(line, w)
		}
		if all {
			n++
		}
	}
	return n
}

func startDiscoverLogged(t *testing.T, f *procFixture) (*running, *logLines) {
	t.Helper()
	cfg := testConfig(f)
	cfg.Discover = true
	lines := &logLines{}
	k := newFakeKernel()
	return startLogging(t, cfg, k, k, slog.New(slog.NewTextHandler(lines, &slog.HandlerOptions{Level: slog.LevelDebug}))), lines
}

// addMaster adds a master of app with one worker and waits until discover attached it: the
// proof that the scans before it ran, and saw what the tree held then.
func addMaster(t *testing.T, f *procFixture, r *running, master, worker uint32) {
	t.Helper()
	f.gunicorn(master, app, worker)
	eventually(t, fmt.Sprintf("master %d is discovered", master), func() bool {
		return slices.Contains(masters(r.a), master)
	})
}

// TestDiscoverOrphans: after a kill -9 of a master, its workers, re-parented to init (or a
// subreaper) with the master's very command line, are not masters: neither attached nor
// tracked as one, logged once each, never as lost events; they stay the dead master's workers
// in the kernel until they exit.
func TestDiscoverOrphans(t *testing.T) {
	const subreaper = 4190050
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1, w2)
	f.add(subreaper, 1, 1, "/usr/lib/systemd/systemd", "--user")
	r, lines := startDiscoverLogged(t, f)
	if got := masters(r.a); !slices.Equal(got, []uint32{m1}) {
		t.Fatalf("masters at attach %v, want [%d]", got, m1)
	}

	// kill -9 of the master: its exit record, and its workers re-parented.
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: m1, ProcKind: events.ProcMaster, Code: 9})
	f.remove(m1)
	f.setStat(w1, 1, 20, "S")
	f.setStat(w2, subreaper, 21, "S")

	// Two more masters found one after the other: the scans in between saw the orphans.
	addMaster(t, f, r, m2, w4)
	addMaster(t, f, r, 4190300, 4190301)
	if got := masters(r.a); !slices.Equal(got, []uint32{m2, 4190300}) {
		t.Errorf("masters %v, want [%d 4190300]: the orphans are no masters", got, m2)
	}
	kinds := r.k.kinds()
	for _, w := range []uint32{w1, w2} {
		if kinds[w] != "worker of 4190100" {
			t.Errorf("orphan %d tracked as %q, want the dead master's worker", w, kinds[w])
		}
		if n := lines.count("worker whose master exited", fmt.Sprintf("worker_pid=%d ", w)); n != 1 {
			t.Errorf("orphan %d logged %d times, want once", w, n)
		}
	}
	if n := lines.count("events lost"); n != 0 {
		t.Errorf("%d lines say events were lost; none was", n)
	}

	// The orphans exit: the kernel's exit records of workers of a master that is gone.
	for _, w := range []uint32{w1, w2} {
		r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w, Master: m1, ProcKind: events.ProcWorker})
		f.remove(w)
	}
	addMaster(t, f, r, 4190400, 4190401)
	if got := masters(r.a); !slices.Equal(got, []uint32{m2, 4190300, 4190400}) {
		t.Errorf("masters %v after the orphans exited", got)
	}
	if n := lines.count("events lost"); n != 0 {
		t.Errorf("%d lines say events were lost; none was", n)
	}
}

// TestDiscoverTree: what /proc alone says, for processes gpe-ebpf never tracked. An untitled
// Gunicorn process whose parent is not Gunicorn is a master once it has a Gunicorn child (an
// orphaned worker has none), a titled one by its title; a master started by a launcher named
// gunicorn-* that does not exec is a master, and the launcher is not Gunicorn.
func TestDiscoverTree(t *testing.T) {
	const (
		launcher, launched, launchedW = 4190500, 4190501, 4190502
		titledM, titledW              = 4190600, 4190601
		titledOrphan, untitledOrphan  = 4190700, 4190800
		early                         = 4191000
	)
	f := newProcFixture(t)
	f.add(launcher, 1, 5, "/bin/bash", "/usr/local/bin/gunicorn-start")
	f.add(launched, launcher, 6, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", app)
	f.add(launchedW, launched, 7, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", app)
	f.add(titledM, 1, 8, "gunicorn: master [titled:app]")
	f.add(titledW, titledM, 9, "gunicorn: worker [titled:app]")
	f.add(titledOrphan, 1, 10, "gunicorn: worker [gone:app]")
	f.add(untitledOrphan, 1, 11, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "4", "gone:app")
	f.add(early, 1, 12, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", "early:app") // no worker yet
	r, _ := startDiscoverLogged(t, f)

	if got := masters(r.a); !slices.Equal(got, []uint32{launched, titledM}) {
		t.Fatalf("masters %v, want [%d %d]", got, launched, titledM)
	}
	wantKinds(t, r.k, map[uint32]string{
		launched: "master", launchedW: "worker of 4190501",
		titledM: "master", titledW: "worker of 4190600",
	})
	s := r.a.Aggregator().Snapshot(0)
	for _, m := range s.Masters {
		if m.PID == titledM && m.App != "titled:app" {
			t.Errorf("titled master's app %q", m.App)
		}
	}

	// The early master forks its first worker: now it is one.
	f.add(early+1, early, 13, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", "early:app")
	eventually(t, "the master is found once it has a worker", isMasters(r.a, launched, titledM, early))
}

// TestTargetsByRole: --pid with what the command line and the tree say: a master started by
// a launcher is accepted, the launcher is not Gunicorn, a titled worker is refused even with
// its master gone.
func TestTargetsByRole(t *testing.T) {
	f := newProcFixture(t)
	f.add(4190500, 1, 5, "/bin/bash", "/usr/local/bin/gunicorn-start")
	f.add(m1, 4190500, 6, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", app)
	f.add(w1, m1, 7, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", app)
	f.add(w2, 1, 8, "gunicorn: worker [app:app]")
	f.add(m2, w1, 9, "gunicorn: master [app:app]")
	cases := []struct {
		pid  uint32
		want string // "" accepts
	}{
		{m1, ""},
		{4190500, "is not a Gunicorn master: not a Python interpreter running gunicorn"},
		{w1, "is a Gunicorn worker, not the master: its master is pid 4190100"},
		{w2, "is a Gunicorn worker whose master is gone"},
		{m2, ""}, // a titled master is one, whatever its parent (a USR2 upgrade's new master)
	}
	for _, c := range cases {
		cfg := testConfig(f)
		cfg.PID = c.pid
		_, err := New(cfg, testLogger(t))
		switch {
		case c.want == "" && err != nil:
			t.Errorf("pid %d: %v, want accepted", c.pid, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("pid %d: %v, want %q", c.pid, err, c.want)
		}
	}
}
