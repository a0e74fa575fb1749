package listeners

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// These tests need no root: they open listening sockets in the test process, connect
// clients that are never accepted, and read the test's own PID.

// listenRaw opens a listening socket with an exact backlog (net.Listen always asks for
// somaxconn) and returns its address for clients.
func listenRaw(t *testing.T, domain int, sa unix.Sockaddr, backlog int) string {
	t.Helper()
	fd, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Skipf("socket(%d): %v", domain, err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if domain == unix.AF_INET6 {
		unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1)
	}
	if err := unix.Bind(fd, sa); err != nil {
		t.Skipf("bind %v: %v", sa, err) // e.g. IPv6 disabled on this machine
	}
	if err := unix.Listen(fd, backlog); err != nil {
		t.Fatal(err)
	}
	got, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	switch a := got.(type) {
	case *unix.SockaddrInet4:
		return fmt.Sprintf("127.0.0.1:%d", a.Port)
	case *unix.SockaddrInet6:
		return fmt.Sprintf("[::1]:%d", a.Port)
	case *unix.SockaddrUnix:
		return a.Name
	}
	t.Fatalf("unexpected socket address %T", got)
	return ""
}

func port(t *testing.T, addr string) string {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// dialN connects n clients that nobody accepts.
func dialN(t *testing.T, network, addr string, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout(network, addr, 5*time.Second)
		if err != nil {
			t.Fatalf("dial %s %s: %v", network, addr, err)
		}
		t.Cleanup(func() { c.Close() })
	}
}

func newTestReader(t *testing.T, buf *bytes.Buffer) *Reader {
	t.Helper()
	var h slog.Handler = slog.DiscardHandler
	if buf != nil {
		h = slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})
	}
	r := NewReader(DefaultConfig(), slog.New(h))
	t.Cleanup(func() { r.Close() })
	return r
}

// readUntil reads the test process's listeners until cond holds or 5 s pass (a connect
// returns before the kernel has always queued the connection), and returns the last read.
func readUntil(t *testing.T, r *Reader, cond func(map[string]Listener) bool) map[string]Listener {
	t.Helper()
	pid := uint32(os.Getpid())
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := make(map[string]Listener)
		for _, l := range r.Read([]uint32{pid})[pid] {
			got[l.Name] = l
		}
		if cond(got) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReaderQueues(t *testing.T) {
	tcp4 := listenRaw(t, unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, 7)
	tcp6 := listenRaw(t, unix.AF_INET6, &unix.SockaddrInet6{}, 9) // [::], reached over ::1
	path := filepath.Join(t.TempDir(), "gunicorn.sock")
	listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: path}, 5)
	abstract := fmt.Sprintf("gpe-listeners-test-%d", os.Getpid())
	listenRaw(t, unix.AF_UNIX, &unix.SockaddrUnix{Name: "@" + abstract}, 4)

	dialN(t, "tcp", tcp4, 3)
	dialN(t, "tcp", tcp6, 2)
	dialN(t, "unix", path, 4)
	dialN(t, "unix", "@"+abstract, 1)

	want := map[string]Listener{
		tcp4:                    {Name: tcp4, QueueLength: 3, QueueMax: 7, HasDrops: true},
		"[::]:" + port(t, tcp6): {Name: "[::]:" + port(t, tcp6), QueueLength: 2, QueueMax: 9, HasDrops: true},
		path:                    {Name: path, Unix: true, QueueLength: 4, QueueMax: 5},
		"@" + abstract:          {Name: "@" + abstract, Unix: true, QueueLength: 1, QueueMax: 4},
	}
	r := newTestReader(t, nil)
	got := readUntil(t, r, func(got map[string]Listener) bool {
		for name, w := range want {
			if got[name].QueueLength != w.QueueLength {
				return false
			}
		}
		return true
	})
	if len(got) != len(want) {
		t.Errorf("read %d listeners, want %d: %+v", len(got), len(want), got)
	}
	for name, w := range want {
		g, ok := got[name]
		if !ok {
			t.Errorf("listener %s not read; got %+v", name, got)
			continue
		}
		if g.Inode == 0 {
			t.Errorf("%s: no inode", name)
		}
		g.Inode = 0
		if g != w {
			t.Errorf("%s = %+v, want %+v", name, g, w)
		}
	}
}

// TestReaderDrops fills a backlog of 1 (the kernel queues backlog+1) and checks that the
// SYNs it drops after that are counted.
func TestReaderDrops(t *testing.T) {
	addr := listenRaw(t, unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, 1)
	dialN(t, "tcp", addr, 2)
	r := newTestReader(t, nil)
	if got := readUntil(t, r, func(m map[string]Listener) bool { return m[addr].QueueLength == 2 }); got[addr].QueueLength != 2 || got[addr].Drops != 0 {
		t.Fatalf("before the overflow: %+v, want a full queue of 2 and no drop", got[addr])
	}
	// The queue is full: this SYN is dropped (and retransmitted, and dropped again).
	if c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond); err == nil {
		c.Close()
		t.Fatalf("connect to a full accept queue succeeded")
	}
	got := readUntil(t, r, func(m map[string]Listener) bool { return m[addr].Drops >= 1 })
	if l := got[addr]; l.Drops < 1 || !l.HasDrops || l.QueueLength != 2 || l.QueueMax != 1 {
		t.Errorf("after the overflow: %+v, want Drops >= 1, QueueLength 2, QueueMax 1", l)
	}
}

// TestReaderBadInput: masters that are gone, or whose sockets are no listeners, are left out
// and logged once; the others are still read.
func TestReaderBadInput(t *testing.T) {
	addr := listenRaw(t, unix.AF_INET, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}, 3)
	var logs bytes.Buffer
	r := newTestReader(t, &logs)
	self := uint32(os.Getpid())
	const gone = 1<<22 + 12345 // above pid_max's default ceiling
	for i := 0; i < 3; i++ {
		got := r.Read([]uint32{gone, self})
		if _, ok := got[gone]; ok {
			t.Errorf("a process that is not there has listeners: %+v", got[gone])
		}
		if len(got[self]) != 1 || got[self][0].Name != addr {
			t.Errorf("own listeners = %+v, want %s only", got[self], addr)
		}
	}
	if n := strings.Count(logs.String(), "not resolved"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs.String())
	}

	// A process with sockets and no listener (the fixture's inodes are nobody's).
	f := NewReader(Config{ProcRoot: "testdata/proc", Timeout: time.Second}, slog.New(slog.DiscardHandler))
	defer f.Close()
	if got := f.Read([]uint32{4242}); len(got) != 0 {
		t.Errorf("fixture process has listeners: %+v", got)
	}
}

func TestUnixName(t *testing.T) {
	for in, want := range map[string]string{
		"/run/gunicorn.sock\x00": "/run/gunicorn.sock",
		"/run/gunicorn.sock":     "/run/gunicorn.sock",
		"\x00abstract":           "@abstract",
		"":                       "",
	} {
		if got := unixName([]byte(in)); got != want {
			t.Errorf("unixName(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestReaderWorkersListeners: the sockets the master's workers hold are its listeners; one
// it serves alone (Gunicorn 25.1+'s control socket) is left out. This test process is the
// master and a sleep(1) that inherits the HTTP socket is its worker.
func TestReaderWorkersListeners(t *testing.T) {
	dir := t.TempDir()
	httpPath, ctlPath := filepath.Join(dir, "gunicorn.sock"), filepath.Join(dir, "gunicorn.ctl")
	httpL, err := net.Listen("unix", httpPath)
	if err != nil {
		t.Fatal(err)
	}
	defer httpL.Close()
	ctlL, err := net.Listen("unix", ctlPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ctlL.Close()
	file, err := httpL.(*net.UnixListener).File() // a dup without CLOEXEC for the child
	if err != nil {
		t.Fatal(err)
	}
	worker := exec.Command("sleep", "30")
	worker.ExtraFiles = []*os.File{file}
	if err := worker.Start(); err != nil {
		t.Fatal(err)
	}
	file.Close()
	t.Cleanup(func() { worker.Process.Kill(); worker.Wait() })

	self := uint32(os.Getpid())
	const gone = 1<<22 + 12345
	names := func(workers ...uint32) []string {
		r := newTestReader(t, nil)
		if workers != nil {
			r.SetWorkers(func(m uint32) []uint32 {
				if m != self {
					t.Errorf("workers asked of %d, not the master %d", m, self)
				}
				return workers
			})
		}
		var out []string
		for _, l := range r.Read([]uint32{self})[self] {
			out = append(out, l.Name)
		}
		return out
	}
	if got := names(); !slices.Contains(got, ctlPath) || !slices.Contains(got, httpPath) {
		t.Errorf("without workers: %v, want both sockets", got)
	}
	if got, want := names(gone, uint32(worker.Process.Pid)), []string{httpPath}; !slices.Equal(got, want) {
		t.Errorf("with a worker (after one that is gone): %v, want %v", got, want)
	}
	if got := names(gone); !slices.Contains(got, ctlPath) {
		t.Errorf("with no worker readable: %v, want every listener", got)
	}
}
