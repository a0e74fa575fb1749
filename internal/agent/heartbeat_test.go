package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// TestMasterSettings: a worker's capacity and the master's timeout come from its command line
// and GUNICORN_CMD_ARGS; --worker-timeout stands for a timeout they do not say, and never
// overrides one they say.
func TestMasterSettings(t *testing.T) {
	tests := []struct {
		name          string
		args          []string // after gunicorn
		env           string   // GUNICORN_CMD_ARGS
		conf          bool     // a gunicorn.conf.py in its working directory
		workerTimeout time.Duration
		busy          int // of w1 (2 in flight) and w2 (1)
		timeout       float64
		known         bool
	}{
		{"sync defaults", nil, "", false, 0, 2, 30, true},
		{"gthread", []string{"--threads", "2", "--timeout", "120"}, "", false, time.Minute, 1, 120, true},
		{"from the environment", nil, "--threads=3 -t 15", false, 0, 0, 15, true},
		{"config file", []string{"-c", "conf.py"}, "", false, 0, 2, 0, false},
		{"config file, --worker-timeout", []string{"-c", "conf.py"}, "", false, 45 * time.Second, 2, 45, true},
		{"gunicorn.conf.py", nil, "", true, 0, 2, 0, false},
		{"--worker-timeout over the default", nil, "", false, 10 * time.Second, 2, 10, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newProcFixture(t)
			f.gunicorn(m1, app, w1, w2)
			args := append([]string{"/usr/bin/python3", "/usr/bin/gunicorn"}, tt.args...)
			f.add(m1, 1, 10, append(args, app)...)
			f.write(fmt.Sprintf("%d/environ", m1), "HOME=/root\x00GUNICORN_CMD_ARGS="+tt.env+"\x00")
			cwd := filepath.Join(f.root, "cwd")
			if err := os.MkdirAll(cwd, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(cwd, filepath.Join(f.root, fmt.Sprint(m1), "cwd")); err != nil {
				t.Fatal(err)
			}
			if tt.conf {
				f.write("cwd/gunicorn.conf.py", "timeout = 300\n")
			}
			cfg := testConfig(f)
			cfg.PID, cfg.WorkerTimeout = m1, tt.workerTimeout
			r := start(t, cfg)
			r.k.setOccupancy(w1, events.Occupancy{InFlight: 2})
			r.k.setOccupancy(w2, events.Occupancy{InFlight: 1})
			m := r.a.Aggregator().Snapshot(0).Masters[0]
			if m.BusyWorkers != tt.busy || m.Timeout != tt.timeout || m.TimeoutKnown != tt.known {
				t.Errorf("busy %d, timeout %v (known %v); want %d, %v (%v)", m.BusyWorkers, m.Timeout, m.TimeoutKnown, tt.busy, tt.timeout, tt.known)
			}
		})
	}
}

// TestHeartbeat: a worker's heartbeat is the change time of the wgunicorn-* file among its
// fds, found once and stat'ed at each snapshot; when the fd comes to name another file it is
// looked for again, and a worker with no such file has no heartbeat.
func TestHeartbeat(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1, w2)
	files := t.TempDir()
	link := func(pid uint32, fd int, name string) {
		t.Helper()
		target := filepath.Join(files, name)
		if err := os.WriteFile(target, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(f.root, fmt.Sprint(pid), "fd", fmt.Sprint(fd))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	link(w1, 1, "log")
	link(w1, 6, "wgunicorn-aaaa")
	link(w2, 1, "log")
	cfg := testConfig(f)
	cfg.PID = m1
	ctime := func(name string) time.Time {
		t.Helper()
		st, err := os.Stat(filepath.Join(files, name))
		if err != nil {
			t.Fatal(err)
		}
		c := st.Sys().(*syscall.Stat_t).Ctim
		return time.Unix(int64(c.Sec), int64(c.Nsec))
	}
	var now time.Time
	cfg.Aggregate.Now = func() time.Time { return now }
	r := start(t, cfg)

	now = ctime("wgunicorn-aaaa").Add(7 * time.Second)
	s := r.a.Aggregator().Snapshot(0)
	if w := workers(s)[w1]; !w.HeartbeatKnown || w.HeartbeatAge != 7 {
		t.Errorf("worker %d: heartbeat age %v (known %v), want 7", w1, w.HeartbeatAge, w.HeartbeatKnown)
	}
	if w := workers(s)[w2]; w.HeartbeatKnown {
		t.Errorf("worker %d has a heartbeat (%v) with no wgunicorn file", w2, w.HeartbeatAge)
	}
	// Not looked for again at every snapshot, but after the next sampling (the agent's own
	// cache is sampled by Run at its start: this one is not).
	h := newHeartbeats(proc.FS{Root: f.root})
	if _, ok := h.read(w2); ok {
		t.Errorf("worker %d: a heartbeat with no wgunicorn file", w2)
	}
	link(w2, 4, "wgunicorn-cccc")
	if _, ok := h.read(w2); ok {
		t.Errorf("worker %d: its fds were listed again before the next sampling", w2)
	}
	h.forget(map[uint32]bool{w1: true, w2: true})
	if _, ok := h.read(w2); !ok {
		t.Errorf("worker %d: its heartbeat was not looked for again after the sampling", w2)
	}
	// The fd now names another file (the PID reused, say): found again among the fds.
	link(w1, 6, "other")
	link(w1, 9, "wgunicorn-bbbb")
	now = ctime("wgunicorn-bbbb").Add(3 * time.Second)
	if w := workers(r.a.Aggregator().Snapshot(0))[w1]; !w.HeartbeatKnown || w.HeartbeatAge != 3 {
		t.Errorf("worker %d after its fd changed: heartbeat age %v (known %v), want 3", w1, w.HeartbeatAge, w.HeartbeatKnown)
	}
	if !slices.Contains(strings.Fields(r.a.heartbeatFDs()), fmt.Sprintf("%d:9", w1)) {
		t.Errorf("cached fds %s, want worker %d's at fd 9", r.a.heartbeatFDs(), w1)
	}
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	if w := workers(r.a.Aggregator().Snapshot(0))[w1]; w.State != aggregate.StateExited || w.HeartbeatKnown {
		t.Errorf("exited worker %d: state %s, heartbeat known %v", w1, w.State, w.HeartbeatKnown)
	}
}

// heartbeatFDs lists the cached heartbeat fds as pid:fd.
func (a *Agent) heartbeatFDs() string {
	a.heartbeats.mu.Lock()
	defer a.heartbeats.mu.Unlock()
	var s []string
	for pid, c := range a.heartbeats.fds {
		s = append(s, fmt.Sprintf("%d:%d", pid, c.fd))
	}
	return strings.Join(s, " ")
}
