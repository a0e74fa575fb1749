package agent

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// PIDs of the fixtures, just under the largest pid_max (1<<22): the sampler, which reads the
// host's /proc, finds no such process on a host with the default pid_max (32768), and were
// it to sample one, it would only set a worker's memory and CPU, which no test looks at.
const (
	m1, w1, w2, w3 = 4190100, 4190101, 4190102, 4190103
	m2, w4         = 4190200, 4190201
	other          = 4190900
)

// fakeKernel is a Kernel whose events the test hands over one at a time.
type fakeKernel struct {
	in     chan events.Event
	done   chan struct{} // the event handed over has been handled: Read is called again
	closed chan struct{}
	once   sync.Once

	mu      sync.Mutex
	tracked map[uint32]events.ProcKind
	masters map[uint32]uint32 // a worker's master
	reads   int
	ports   []uint16 // SetListenPorts
	occ     map[uint32]events.Occupancy
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{
		in: make(chan events.Event), done: make(chan struct{}), closed: make(chan struct{}),
		tracked: make(map[uint32]events.ProcKind), masters: make(map[uint32]uint32),
		occ: make(map[uint32]events.Occupancy),
	}
}

// Occupancy is what setOccupancy last said of tgid, while it is tracked.
func (k *fakeKernel) Occupancy(tgid uint32) (events.Occupancy, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if _, ok := k.tracked[tgid]; !ok {
		return events.Occupancy{}, false
	}
	return k.occ[tgid], true
}

func (k *fakeKernel) setOccupancy(tgid uint32, o events.Occupancy) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.occ[tgid] = o
}

func (k *fakeKernel) Track(tgid, master uint32, kind events.ProcKind) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.tracked[tgid], k.masters[tgid] = kind, master
	return nil
}

func (k *fakeKernel) SetListenPorts(ports []uint16) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.ports = append([]uint16{}, ports...)
	return nil
}

func (k *fakeKernel) listenPorts() []uint16 {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.ports
}

func (k *fakeKernel) Untrack(tgid uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.tracked, tgid)
	return nil
}

func (k *fakeKernel) Read(ev *events.Event) error {
	k.mu.Lock()
	k.reads++
	again := k.reads > 1
	k.mu.Unlock()
	if again {
		// The previous event went through the agent's read loop.
		select {
		case k.done <- struct{}{}:
		case <-k.closed:
			return events.ErrClosed
		}
	}
	select {
	case *ev = <-k.in:
		return nil
	case <-k.closed:
		return events.ErrClosed
	}
}

func (k *fakeKernel) Close() error {
	k.once.Do(func() { close(k.closed) })
	return nil
}

// feed hands ev to the agent and returns once the agent has handled it. First it changes
// the kernel's table as the BPF programs do: a fork of a tracked master tracks the child as
// its worker, a worker that execs becomes a master, a process that exits is untracked.
func (k *fakeKernel) feed(t *testing.T, ev events.Event) {
	t.Helper()
	k.mu.Lock()
	switch kind, ok := k.tracked[ev.TGID]; {
	case ev.Kind == events.KindFork && k.tracked[ev.Other] == events.ProcMaster:
		k.tracked[ev.TGID], k.masters[ev.TGID] = events.ProcWorker, ev.Other
	case ev.Kind == events.KindExec && ok && kind == events.ProcWorker:
		k.tracked[ev.TGID], k.masters[ev.TGID] = events.ProcMaster, ev.TGID
	case ev.Kind == events.KindExit:
		delete(k.tracked, ev.TGID)
	}
	k.mu.Unlock()
	select {
	case k.in <- ev:
	case <-k.closed:
		t.Fatalf("kernel closed before event %v of pid %d", ev.Kind, ev.TGID)
	}
	select {
	case <-k.done:
	case <-k.closed: // the event made Run return
	}
}

// kinds returns what the kernel tracks: pid → "master" or "worker of N".
func (k *fakeKernel) kinds() map[uint32]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[uint32]string)
	for pid, kind := range k.tracked {
		if kind == events.ProcMaster {
			out[pid] = "master"
		} else {
			out[pid] = fmt.Sprintf("worker of %d", k.masters[pid])
		}
	}
	return out
}

func (k *fakeKernel) isClosed() bool {
	select {
	case <-k.closed:
		return true
	default:
		return false
	}
}

// procFixture is a /proc tree in a temporary directory: stat with the boot time, and a
// stat and cmdline per process.
type procFixture struct {
	t    *testing.T
	root string
}

const bootTime = 1_700_000_000

func newProcFixture(t *testing.T) *procFixture {
	t.Helper()
	f := &procFixture{t: t, root: t.TempDir()}
	f.write("stat", fmt.Sprintf("cpu  1 2 3 4\nbtime %d\n", bootTime))
	return f
}

func (f *procFixture) write(name, content string) {
	f.t.Helper()
	p := filepath.Join(f.root, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// add puts a running process in the tree, started startSec seconds after boot.
func (f *procFixture) add(pid, ppid uint32, startSec int, cmdline ...string) {
	f.t.Helper()
	f.setStat(pid, ppid, startSec, "S")
	f.write(fmt.Sprintf("%d/cmdline", pid), strings.Join(cmdline, "\x00")+"\x00")
}

// setStat writes a process's stat: state, parent and start time (field 22, in ticks).
func (f *procFixture) setStat(pid, ppid uint32, startSec int, state string) {
	f.t.Helper()
	fields := []string{state, fmt.Sprint(ppid)}
	for i := 5; i <= 21; i++ {
		fields = append(fields, "0")
	}
	fields = append(fields, fmt.Sprint(startSec*100), "0", "0")
	f.write(fmt.Sprintf("%d/stat", pid), fmt.Sprintf("%d (gunicorn) %s\n", pid, strings.Join(fields, " ")))
}

func (f *procFixture) remove(pid uint32) {
	f.t.Helper()
	if err := os.RemoveAll(filepath.Join(f.root, fmt.Sprint(pid))); err != nil {
		f.t.Fatal(err)
	}
}

// gunicorn adds a master running app with workers, each started a second after the one before.
func (f *procFixture) gunicorn(master uint32, app string, workers ...uint32) {
	f.add(master, 1, 10, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", fmt.Sprint(len(workers)), app)
	for i, w := range workers {
		f.add(w, master, 20+i, "/usr/bin/python3", "/usr/bin/gunicorn", "-w", fmt.Sprint(len(workers)), app)
	}
}

// testConfig is a Config over the fixture that rescans /proc quickly; sampling never fires.
func testConfig(f *procFixture) Config {
	cfg := DefaultConfig()
	cfg.ProcRoot = f.root
	cfg.RescanInterval = 10 * time.Millisecond
	cfg.SampleInterval = time.Hour
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// running is an agent attached to k and running in the background.
type running struct {
	a    *Agent
	k    *fakeKernel
	stop func()
	done chan error
}

// start builds, attaches and runs an agent; the test's cleanup stops it.
func start(t *testing.T, cfg Config) *running {
	t.Helper()
	k := newFakeKernel()
	return startOn(t, cfg, k, k)
}

// startOn is start with the kernel given: kernel is k, or a Kernel built around it.
func startOn(t *testing.T, cfg Config, k *fakeKernel, kernel Kernel) *running {
	t.Helper()
	return startLogging(t, cfg, k, kernel, testLogger(t))
}

// startLogging is startOn with the agent's logger given.
func startLogging(t *testing.T, cfg Config, k *fakeKernel, kernel Kernel, log *slog.Logger) *running {
	t.Helper()
	a, err := New(cfg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := a.Attach(kernel); err != nil {
		t.Fatalf("Attach: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{a: a, k: k, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	return r
}

// wait returns Run's result, failing the test if Run does not return. The bound is a guard
// against a hang, not a timing assertion.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return")
		return nil
	}
}

// wantEnd checks that Run returns nil.
func (r *running) wantEnd(t *testing.T) {
	t.Helper()
	if err := r.wait(t); err != nil {
		t.Errorf("Run: %v, want nil", err)
	}
}

// startPID runs an agent on --pid m1, a master of app with workers.
func startPID(t *testing.T, workers ...uint32) (*procFixture, *running) {
	t.Helper()
	f := newProcFixture(t)
	f.gunicorn(m1, app, workers...)
	cfg := testConfig(f)
	cfg.PID = m1
	return f, start(t, cfg)
}

// returned says whether Run has returned.
func (r *running) returned() bool {
	select {
	case err := <-r.done:
		r.done <- err
		return true
	default:
		return false
	}
}

// eventually polls cond until it holds, failing the test with what after a guard of 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func masters(a *Agent) []uint32 { return a.Aggregator().Masters() }

func isMasters(a *Agent, want ...uint32) func() bool {
	return func() bool { return slices.Equal(masters(a), want) }
}
