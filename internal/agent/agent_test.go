package agent

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

const app = "app:app"

// workers are the snapshot's workers by PID; a missing one is a zero WorkerSnapshot, which
// no test's expectation matches.
func workers(s aggregate.Snapshot) map[uint32]aggregate.WorkerSnapshot {
	out := make(map[uint32]aggregate.WorkerSnapshot)
	for _, m := range s.Masters {
		for _, w := range m.Workers {
			out[w.PID] = w
		}
	}
	return out
}

// kindsAre is a condition for eventually: the kernel tracks exactly want.
func kindsAre(k *fakeKernel, want map[uint32]string) func() bool {
	return func() bool { return maps.Equal(k.kinds(), want) }
}

func wantKinds(t *testing.T, k *fakeKernel, want map[uint32]string) {
	t.Helper()
	if got := k.kinds(); !maps.Equal(got, want) {
		t.Errorf("tracked %v, want %v", got, want)
	}
}

// TestAttach: a master with two running workers is tracked with both, the workers numbered
// by start time, and the master's application named.
func TestAttach(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w2, w1) // w2 started first
	f.add(other, 1, 5, "sleep", "60")
	cfg := testConfig(f)
	cfg.PID = m1
	r := start(t, cfg)

	wantKinds(t, r.k, map[uint32]string{m1: "master", w1: "worker of 4190100", w2: "worker of 4190100"})
	s := r.a.Aggregator().Snapshot(0)
	if len(s.Masters) != 1 || s.Masters[0].PID != m1 || s.Masters[0].App != app || s.Masters[0].LiveWorkers != 2 {
		t.Fatalf("snapshot masters %+v, want %d (%s) with 2 live workers", s.Masters, m1, app)
	}
	for pid, id := range map[uint32]string{w2: "worker_1_1700000020", w1: "worker_2_1700000021"} {
		if w := workers(s)[pid]; w.ID != id || w.State != aggregate.StateRunning {
			t.Errorf("worker %d: id %s state %s, want %s running", pid, w.ID, w.State, id)
		}
	}
	if got := r.a.Masters(); !slices.Equal(got, []int{m1}) {
		t.Errorf("Masters() = %v", got)
	}
}

// TestForkAndExit: a fork of the master is a new worker, a worker's exit marks it exited,
// and neither ends Run.
func TestForkAndExit(t *testing.T) {
	_, r := startPID(t, w1, w2)

	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w3, Other: m1, ProcKind: events.ProcWorker})
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	if got, want := r.a.Aggregator().LiveWorkers(), []uint32{w2, w3}; !slices.Equal(got, want) {
		t.Errorf("live workers %v, want %v", got, want)
	}
	s := r.a.Aggregator().Snapshot(0)
	if w := workers(s)[w1]; w.State != aggregate.StateExited {
		t.Errorf("worker %d state %s, want exited", w1, w.State)
	}
	if w := workers(s)[w3]; !strings.HasPrefix(w.ID, "worker_3_") {
		t.Errorf("forked worker id %s, want age 3", w.ID)
	}
	if s.Masters[0].Exits[aggregate.ExitGraceful] != 1 {
		t.Errorf("exits %v, want one graceful", s.Masters[0].Exits)
	}
	if r.returned() {
		t.Errorf("Run returned after a worker's exit")
	}
}

// TestMasterExits: with --pid, the master's exit ends Run (exit 0), and Run closes the kernel.
func TestMasterExits(t *testing.T) {
	_, r := startPID(t, w1, w2)

	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: m1, ProcKind: events.ProcMaster})
	r.wantEnd(t)
	if !r.k.isClosed() {
		t.Errorf("Run returned without closing the kernel")
	}
	if got := masters(r.a); len(got) != 0 {
		t.Errorf("masters %v after the exit", got)
	}
}

// TestMasterGoneUnseen: a master whose exit record was lost is dropped when /proc no longer
// shows it (here a zombie), untracked, and --pid then ends as after an exit.
func TestMasterGoneUnseen(t *testing.T) {
	f, r := startPID(t, w1)

	f.setStat(m1, 1, 10, "Z")
	r.wantEnd(t)
	if _, ok := r.k.kinds()[m1]; ok {
		t.Errorf("master %d still tracked", m1)
	}
}

// TestPIDFileNewMaster: with --pid-file, the master's exit does not end Run; when the file
// names a new master, the agent attaches to it and its workers.
func TestPIDFileNewMaster(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1)
	pidFile := filepath.Join(t.TempDir(), "gunicorn.pid")
	writePID := func(pid string) {
		if err := os.WriteFile(pidFile, []byte(pid+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writePID("4190100")
	cfg := testConfig(f)
	cfg.PIDFile = pidFile
	r := start(t, cfg)

	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: m1, ProcKind: events.ProcMaster})
	f.remove(m1)
	f.remove(w1)
	os.Remove(pidFile) // between a service's stop and start
	f.gunicorn(m2, "other:app", w4)
	writePID("4190200")
	// Attach names the master before it tracks and seeds its workers: wait for both.
	eventually(t, "the new master is observed", isMasters(r.a, m2))
	eventually(t, "the new master's worker is tracked", kindsAre(r.k, map[uint32]string{m2: "master", w4: "worker of 4190200"}))
	if r.returned() {
		t.Fatalf("Run returned while the pid file could name a new master")
	}
	wantKinds(t, r.k, map[uint32]string{m2: "master", w4: "worker of 4190200"})
	if s := r.a.Aggregator().Snapshot(0); s.Masters[0].App != "other:app" || s.Masters[0].LiveWorkers != 1 {
		t.Errorf("new master %+v, want other:app with one worker", s.Masters[0])
	}
	r.stop()
	r.wantEnd(t)
}

// TestDiscover: --discover attaches the masters it finds, adds one that starts later, drops
// one whose exit it sees and one that is gone without an exit record, and keeps running
// when none is left.
func TestDiscover(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1)
	f.add(other, 1, 5, "sleep", "60")
	cfg := testConfig(f)
	cfg.Discover = true
	r := start(t, cfg)
	if got := masters(r.a); !slices.Equal(got, []uint32{m1}) {
		t.Fatalf("masters at attach %v, want [%d]", got, m1)
	}

	f.gunicorn(m2, "other:app", w4)
	eventually(t, "the second master is discovered", isMasters(r.a, m1, m2))
	eventually(t, "the second master's worker is tracked", kindsAre(r.k, map[uint32]string{m1: "master", w1: "worker of 4190100", m2: "master", w4: "worker of 4190200"}))
	wantKinds(t, r.k, map[uint32]string{m1: "master", w1: "worker of 4190100", m2: "master", w4: "worker of 4190200"})

	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: m1, ProcKind: events.ProcMaster})
	f.remove(m1)
	f.remove(w1)
	// The exit is handled by Run's loop, after feed returns: wait for it, then check.
	eventually(t, "the exited master is dropped", isMasters(r.a, m2))

	f.remove(m2) // gone, its exit record lost, and its worker with it
	f.remove(w4)
	eventually(t, "the vanished master is dropped", isMasters(r.a))
	if _, ok := r.k.kinds()[m2]; ok {
		t.Errorf("vanished master %d still tracked", m2)
	}
	if r.returned() {
		t.Errorf("Run returned under --discover with no master left")
	}
}

// TestUSR2: a worker that execs is the new master of a USR2 upgrade; the old master's exit
// then does not end Run, the new master's does.
func TestUSR2(t *testing.T) {
	f, r := startPID(t, w1)

	// The master forks the new master, which execs gunicorn again.
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w3, Other: m1, ProcKind: events.ProcWorker})
	f.add(w3, m1, 30, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", "1", app)
	r.k.feed(t, events.Event{Kind: events.KindExec, TGID: w3, Other: m1, ProcKind: events.ProcWorker})
	if got := masters(r.a); !slices.Equal(got, []uint32{m1, w3}) {
		t.Fatalf("masters after the exec %v, want [%d %d]", got, m1, w3)
	}
	if got := r.a.Aggregator().LiveWorkers(); !slices.Equal(got, []uint32{w1}) {
		t.Errorf("live workers %v: the new master is no worker", got)
	}

	// The old master and its worker go; the new master's worker comes.
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: m1, ProcKind: events.ProcMaster})
	f.remove(m1)
	f.remove(w1)
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w4, Other: w3, ProcKind: events.ProcWorker})
	if r.returned() {
		t.Fatalf("Run returned at the old master's exit")
	}
	if got := masters(r.a); !slices.Equal(got, []uint32{w3}) {
		t.Errorf("masters %v, want the new one %d", got, w3)
	}
	if got := r.a.Aggregator().LiveWorkers(); !slices.Equal(got, []uint32{w4}) {
		t.Errorf("live workers %v, want [%d]", got, w4)
	}

	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w3, ProcKind: events.ProcMaster})
	r.wantEnd(t)
}

// TestReaderStops: a kernel reader that stops by itself is an error of Run.
func TestReaderStops(t *testing.T) {
	_, r := startPID(t, w1)
	r.k.Close()
	if err := r.wait(t); err == nil || !strings.Contains(err.Error(), "reader stopped") {
		t.Errorf("Run: %v, want the reader's stop", err)
	}
}

// TestTargets: New refuses what is not a Gunicorn master with a *TargetError naming it,
// before any kernel is involved.
func TestTargets(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1)
	f.add(other, 1, 5, "sleep", "60")
	dir := t.TempDir()
	pidFile := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name    string
		pid     uint32
		pidFile string
		force   bool
		want    string // "" accepts
	}{
		{"master", m1, "", false, ""},
		{"no such process", 4190999, "", false, "pid 4190999: no such process"},
		{"not gunicorn", other, "", false, "pid 4190900 (sleep 60) is not a Gunicorn master"},
		{"not gunicorn, forced", other, "", true, ""},
		{"a worker", w1, "", false, "pid 4190101 is a Gunicorn worker, not the master: its master is pid 4190100 (use --pid 4190100)"},
		{"pid file", 0, pidFile("ok.pid", "4190100\n"), false, ""},
		{"pid file missing", 0, filepath.Join(dir, "none.pid"), false, "--pid-file: open "},
		{"pid file garbage", 0, pidFile("bad.pid", "garbage\n"), false, `no PID in it ("garbage")`},
		{"pid file names a worker", 0, pidFile("w.pid", "4190101"), false, "is a Gunicorn worker"},
		{"discover", 0, "", false, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(f)
			cfg.PID, cfg.PIDFile, cfg.Force = c.pid, c.pidFile, c.force
			cfg.Discover = c.name == "discover"
			_, err := New(cfg, testLogger(t))
			var te *TargetError
			switch {
			case c.want == "" && err != nil:
				t.Errorf("New: %v, want accepted", err)
			case c.want != "" && !errors.As(err, &te):
				t.Errorf("New: %v (%T), want a *TargetError", err, err)
			case c.want != "" && !strings.Contains(err.Error(), c.want):
				t.Errorf("New: %q, want it to contain %q", err, c.want)
			}
		})
	}
}

// TestMultiprocLive: a live worker counts; an exited worker of ours does not, although /proc
// still shows it; another running process counts; a zombie or a missing one does not.
func TestMultiprocLive(t *testing.T) {
	f, r := startPID(t, w1, w2)
	f.add(other, 1, 5, "cron")
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w2, Master: m1, ProcKind: events.ProcWorker})

	a := r.a
	if !a.MultiprocLive(m1) || !a.MultiprocLive(w1) {
		t.Errorf("the master or a live worker is not live")
	}
	if a.MultiprocLive(w2) {
		t.Errorf("an exited worker still shown by /proc is live")
	}
	if !a.MultiprocLive(other) {
		t.Errorf("another running process is not live")
	}
	f.setStat(other, 1, 5, "Z")
	if a.MultiprocLive(other) || a.MultiprocLive(4190999) || a.MultiprocLive(-1) {
		t.Errorf("a zombie, a missing or an invalid pid is live")
	}
}

// TestContainer: a master in a container (its own PID namespace and a docker cgroup) and its
// workers, those at attach and one forked later, are recorded with the PIDs they see and the
// container; the multiprocess files they name by those PIDs count as theirs.
func TestContainer(t *testing.T) {
	const id = "3f1c2d4e5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1)
	inside := func(pid, nspid uint32) {
		f.write(fmt.Sprintf("%d/status", pid), fmt.Sprintf("Name:\tgunicorn\nNSpid:\t%d\t%d\n", pid, nspid))
		f.write(fmt.Sprintf("%d/cgroup", pid), "0::/system.slice/docker-"+id+".scope\n")
	}
	inside(m1, 1)
	inside(w1, 7)
	cfg := testConfig(f)
	cfg.PID = m1
	r := start(t, cfg)
	f.add(w2, m1, 30, "gunicorn")
	inside(w2, 8)
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w2, Other: m1, Master: m1, ProcKind: events.ProcWorker})

	s := r.a.Aggregator().Snapshot(0)
	if m := s.Masters[0]; m.ContainerID != id || m.PodUID != "" {
		t.Errorf("master container %q pod %q, want %q and none", m.ContainerID, m.PodUID, id)
	}
	got := map[uint32]uint32{}
	for _, w := range s.Masters[0].Workers {
		got[w.PID] = w.ContainerPID
	}
	if got[w1] != 7 || got[w2] != 8 {
		t.Errorf("container PIDs %v, want %d→7 and %d→8", got, w1, w2)
	}
	a := r.a
	if !a.MultiprocLive(1) || !a.MultiprocLive(7) || !a.MultiprocLive(8) {
		t.Errorf("the files of the master (1) or a worker (7, 8) as they name themselves are not live")
	}
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w2, Master: m1, ProcKind: events.ProcWorker})
	if a.MultiprocLive(8) {
		t.Errorf("the exited worker's file (8) is still live")
	}
}

// TestListenPorts: the kernel is given the TCP ports the master listens on (its fds' sockets
// in LISTEN in its net/tcp), once at attach.
func TestListenPorts(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1)
	if err := os.MkdirAll(filepath.Join(f.root, strconv.Itoa(m1), "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("socket:[4242]", filepath.Join(f.root, strconv.Itoa(m1), "fd", "5")); err != nil {
		t.Fatal(err)
	}
	f.write(strconv.Itoa(m1)+"/net/tcp", "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"+
		"   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n"+
		"   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 17 1 0 100 0 0 10 0\n")
	cfg := testConfig(f)
	cfg.PID = m1
	r := start(t, cfg)
	if got := r.k.listenPorts(); !slices.Equal(got, []uint16{8000}) {
		t.Errorf("listening ports given to the kernel: %v, want [8000] (not another process's 22)", got)
	}
}

// TestOccupancy: a worker's requests in flight and busy time are the kernel's counts, read at
// each snapshot (no record says when a request starts); after its exit, the busy time its
// exit record carries stays.
func TestOccupancy(t *testing.T) {
	_, r := startPID(t, w1, w2)
	const now = 50e9
	r.k.setOccupancy(w1, events.Occupancy{InFlight: 2, BusyNS: 3e9, BusySince: 49e9})
	s := r.a.Aggregator().Snapshot(now)
	if w := workers(s)[w1]; w.InFlight != 2 || w.BusySeconds != 4 {
		t.Errorf("worker %d: in flight %d busy %v s, want 2 and 3 + 1 s", w1, w.InFlight, w.BusySeconds)
	}
	if w := workers(s)[w2]; w.InFlight != 0 || w.BusySeconds != 0 {
		t.Errorf("idle worker %d: in flight %d busy %v s, want 0 and 0", w2, w.InFlight, w.BusySeconds)
	}
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker, BusyNS: 4.5e9})
	s = r.a.Aggregator().Snapshot(now + 10e9)
	if w := workers(s)[w1]; w.State != aggregate.StateExited || w.InFlight != 0 || w.BusySeconds != 4.5 {
		t.Errorf("exited worker %d: state %s in flight %d busy %v s, want exited, 0, 4.5 s", w1, w.State, w.InFlight, w.BusySeconds)
	}
}
