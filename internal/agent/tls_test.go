package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// tlsFake is a fakeKernel that also attaches TLS uprobes (TLSKernel), recording which
// processes it was asked to attach to and detach from.
type tlsFake struct {
	*fakeKernel
	mu                 sync.Mutex
	attached, detached []uint32
}

func (k *tlsFake) AttachTLS(pid uint32) (events.TLSAttach, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.attached = append(k.attached, pid)
	return events.TLSAttach{Lib: "/usr/lib/x86_64-linux-gnu/libssl.so.3", Probes: 10}, nil
}

func (k *tlsFake) DetachTLS(pid uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.detached = append(k.detached, pid)
	return nil
}

func (k *tlsFake) calls() (attached, detached []uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(slices.Values(k.attached)), slices.Sorted(slices.Values(k.detached))
}

// TestTLSFollowsWorkers: the TLS uprobes go on the workers of a master that serves TLS running
// at attach and on each one forked later (a reload's, a replacement's), never on the master, and come off a worker that
// exits or execs (a USR2 upgrade's new master).
func TestTLSFollowsWorkers(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1, w2)
	f.add(m1, 1, 10, "/usr/bin/python3", "/usr/bin/gunicorn", "--certfile", "c.pem", "--keyfile", "k.pem", app)
	cfg := testConfig(f)
	cfg.PID = m1
	k := &tlsFake{fakeKernel: newFakeKernel()}
	r := startOn(t, cfg, k.fakeKernel, k)
	want := func(step string, attached, detached []uint32) {
		t.Helper()
		a, d := k.calls()
		if !slices.Equal(a, attached) || !slices.Equal(d, detached) {
			t.Errorf("%s: attached %v, detached %v; want %v, %v", step, a, d, attached, detached)
		}
	}
	want("attach", []uint32{w1, w2}, nil)
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w3, Other: m1, ProcKind: events.ProcWorker, TS: 1})
	want("fork", []uint32{w1, w2, w3}, nil)
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	want("exit", []uint32{w1, w2, w3}, []uint32{w1})
	r.k.feed(t, events.Event{Kind: events.KindExec, TGID: w3, Other: m1, ProcKind: events.ProcWorker})
	want("exec", []uint32{w1, w2, w3}, []uint32{w1, w3})
}

// TestTLSOnlyWhereServed: the workers of a master that serves no TLS get no uprobes, at attach
// or forked later, while those of one that does get them.
func TestTLSOnlyWhereServed(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1)
	f.gunicorn(m2, app, w4)
	f.add(m2, 1, 10, "/usr/bin/python3", "/usr/bin/gunicorn", "--certfile=c.pem", app)
	cfg := testConfig(f)
	cfg.Discover = true
	k := &tlsFake{fakeKernel: newFakeKernel()}
	r := startOn(t, cfg, k.fakeKernel, k)
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w2, Other: m1, ProcKind: events.ProcWorker, TS: 1})
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: 4190202, Other: m2, ProcKind: events.ProcWorker, TS: 1})
	if a, _ := k.calls(); !slices.Equal(a, []uint32{w4, 4190202}) {
		t.Errorf("attached %v, want the TLS master's workers [%d 4190202]", a, w4)
	}
}

// TestTLSSeen: a worker of a master taken for plaintext that reads a TLS handshake (the kernel's
// KindTLS) gets the uprobes, and so do its master's other workers when they report, and those
// forked after it.
func TestTLSSeen(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1)
	cfg := testConfig(f)
	cfg.Discover = true
	k := &tlsFake{fakeKernel: newFakeKernel()}
	r := startOn(t, cfg, k.fakeKernel, k)
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w2, Other: m1, ProcKind: events.ProcWorker, TS: 1})
	if a, _ := k.calls(); len(a) != 0 {
		t.Fatalf("attached %v to a plaintext master's workers", a)
	}
	r.k.feed(t, events.Event{Kind: events.KindTLS, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w3, Other: m1, ProcKind: events.ProcWorker, TS: 2})
	r.k.feed(t, events.Event{Kind: events.KindTLS, TGID: w2, Master: m1, ProcKind: events.ProcWorker})
	if a, _ := k.calls(); !slices.Equal(a, []uint32{w1, w2, w3}) {
		t.Errorf("attached %v, want [%d %d %d]: the reporting worker, the next report, the next fork", a, w1, w2, w3)
	}
}

// TestServesTLS: where a master's TLS is read from, and what cannot be ruled out.
func TestServesTLS(t *testing.T) {
	f := newProcFixture(t)
	cwd, root := t.TempDir(), t.TempDir()
	write := func(path, content string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(cwd, "tls.conf.py"), "bind = '0.0.0.0:443'\ncertfile = '/etc/ssl/c.pem'\n")
	write(filepath.Join(cwd, "plain.conf.py"), "bind = '0.0.0.0:80'\nworkers = 4\n")
	write(filepath.Join(root, "etc", "g.py"), "keyfile = 'k.pem'\n")
	gun := []string{"/usr/bin/python3", "/usr/bin/gunicorn"}
	cases := []struct {
		name    string
		cmdline []string
		env     string
		defConf string // gunicorn.conf.py in the working directory
		want    bool
	}{
		{"plain", append(gun, "-w", "2", app), "", "", false},
		{"certfile", append(gun, "--certfile", "c.pem", "--keyfile", "k.pem", app), "", "", true},
		{"keyfile=", append(gun, "--keyfile=k.pem", app), "", "", true},
		{"GUNICORN_CMD_ARGS", append(gun, app), "GUNICORN_CMD_ARGS=--workers 2 --certfile c.pem", "", true},
		{"GUNICORN_CMD_ARGS plain", append(gun, app), "GUNICORN_CMD_ARGS=--workers 2", "", false},
		{"config with certfile", append(gun, "-c", "tls.conf.py", app), "", "", true},
		{"config without", append(gun, "--config=plain.conf.py", app), "", "", false},
		{"absolute config", append(gun, "--config", "/etc/g.py", app), "", "", true},
		{"config missing", append(gun, "-c", "none.py", app), "", "", true},
		{"python: config", append(gun, "-c", "python:myconf", app), "", "", true},
		{"default config with certfile", append(gun, app), "", "certfile = 'c.pem'\n", true},
		{"default config plain", append(gun, app), "", "workers = 2\n", false},
		{"title", []string{"gunicorn: master [app:app]"}, "", "", true},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			pid := uint32(4191000 + i)
			f.add(pid, 1, 10, c.cmdline...)
			f.write(fmt.Sprintf("%d/environ", pid), "PATH=/usr/bin\x00"+c.env+"\x00")
			dir := filepath.Join(f.root, fmt.Sprint(pid))
			wd := cwd
			if c.defConf != "" {
				wd = t.TempDir()
				write(filepath.Join(wd, "gunicorn.conf.py"), c.defConf)
			}
			if err := os.Symlink(wd, filepath.Join(dir, "cwd")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(root, filepath.Join(dir, "root")); err != nil {
				t.Fatal(err)
			}
			if got, why := servesTLS(proc.FS{Root: f.root}, pid); got != c.want {
				t.Errorf("servesTLS = %v (%s), want %v", got, why, c.want)
			}
		})
	}
}
