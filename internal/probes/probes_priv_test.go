package probes

import (
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// requireRoot skips, or under CI=true fails: loading BPF needs root (CAP_BPF, CAP_PERFMON).
func requireRoot(t *testing.T) {
	t.Helper()
	need(t, "this test loads BPF programs and needs root", CheckPrivileges())
}

// hookModes are the modes the state-machine tests run in: both feed the same code (on_io in
// bpf/gpe.bpf.c) from different hooks.
var hookModes = []string{HooksSocket, HooksSyscall}

// workerIO is how a test's worker side reads and writes a socket. The socket hooks see read
// and write too; syscall mode sees recvfrom, recvmsg, sendto, sendmsg and sendfile only.
type workerIO struct {
	recv func(fd int, b []byte) (int, error)
	send func(fd int, b []byte)
}

func ioFor(mode string) workerIO {
	if mode == HooksSocket {
		return workerIO{unix.Read, func(fd int, b []byte) { unix.Write(fd, b) }}
	}
	return workerIO{
		func(fd int, b []byte) (int, error) { n, _, err := unix.Recvfrom(fd, b, 0); return n, err },
		func(fd int, b []byte) { unix.Sendto(fd, b, 0, nil) },
	}
}

// testObject is the object loadMode and loadWorkerWith load: GPE_TEST_OBJECT (modern or
// compat), or "" to let Load choose. GPE_TEST_OBJECT=compat runs the request tests on the
// compat object, which any kernel that loads the modern one loads too.
func testObject() string { return os.Getenv("GPE_TEST_OBJECT") }

// forEachMode runs test as a subtest per hook mode.
func forEachMode(t *testing.T, test func(t *testing.T, mode string)) {
	for _, mode := range hookModes {
		t.Run(mode, func(t *testing.T) { test(t, mode) })
	}
}

// loadMode loads the probes in one hook mode and checks that this mode is what was loaded.
func loadMode(t *testing.T, mode string) *Probes {
	t.Helper()
	requireRoot(t)
	cfg := DefaultConfig()
	cfg.Hooks = mode
	cfg.Object = testObject()
	p, err := Load(cfg)
	if err != nil {
		t.Fatalf("load %s hooks: %v", mode, err)
	}
	if p.Hooks() != mode {
		p.Close()
		t.Fatalf("loaded %s hooks, asked for %s", p.Hooks(), mode)
	}
	if cfg.Object != "" && p.Object() != cfg.Object {
		p.Close()
		t.Fatalf("loaded the %s object, asked for %s", p.Object(), cfg.Object)
	}
	return p
}

// TestRequestStateMachine drives one real HTTP exchange over loopback with the syscalls a
// Gunicorn worker uses (accept4, recvfrom, sendto, close: seen by the socket or syscall hooks
// and the TCP socket's end), from this very process tracked as a worker, and checks the
// records the kernel side emits, in each hook mode.
func TestRequestStateMachine(t *testing.T) { forEachMode(t, testRequestStateMachine) }

func testRequestStateMachine(t *testing.T, mode string) {
	p := loadMode(t, mode)
	ids := p.ProgramIDs()
	defer func() {
		p.Close()
		// The kernel frees a detached program once its last reference goes, which for a BTF
		// tracepoint can wait for an RCU grace period: give it a moment.
		for _, id := range ids {
			deadline := time.Now().Add(2 * time.Second)
			for {
				prog, err := ebpf.NewProgramFromID(id)
				if err != nil {
					break
				}
				prog.Close()
				if time.Now().After(deadline) {
					t.Errorf("program %d still loaded 2 s after Close", id)
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
	}()
	me := uint32(os.Getpid())
	if err := p.Track(me, 1, events.ProcWorker); err != nil {
		t.Fatal(err)
	}

	ln := tcpListen(t)
	cl, srv := tcpConnect(t, ln)
	defer unix.Close(cl)
	req := "GET /users/42?token=secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t\r\n\r\n"
	unix.Sendto(cl, []byte(req), 0, nil)
	buf := make([]byte, 4096)
	if _, _, err := unix.Recvfrom(srv, buf, 0); err != nil {
		t.Fatal(err)
	}
	// In flight in the kernel's count from its read to its status line, and busy meanwhile.
	if o, ok := p.Occupancy(me); !ok || o.InFlight != 1 || o.BusySince == 0 {
		t.Errorf("after the read: occupancy %+v (tracked %v), want 1 in flight", o, ok)
	}
	time.Sleep(20 * time.Millisecond)
	unix.Sendto(srv, []byte("HTTP/1.1 100 Continue\r\n\r\n"), 0, nil)
	if o, _ := p.Occupancy(me); o.InFlight != 1 {
		t.Errorf("after a 100 Continue: %d in flight, want 1 (interim)", o.InFlight)
	}
	unix.Sendto(srv, []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n"), 0, nil)
	if o, _ := p.Occupancy(me); o.InFlight != 0 || o.BusyNS < uint64(20*time.Millisecond) || o.BusyNS > uint64(time.Second) {
		t.Errorf("after the status line: occupancy %+v, want 0 in flight and about 20 ms busy", o)
	}
	unix.Sendto(srv, []byte("no"), 0, nil)
	unix.Close(srv)

	// One record for the whole request, when it ends.
	rec := record(p)
	got := rec.requests(t, 3*time.Second)
	if len(got) != 1 {
		t.Fatalf("got %d request records, want 1: %+v", len(got), got)
	}
	end := got[0]
	if end.Kind != events.KindReqEnd || end.Status != 503 || end.Reason != events.EndClose || string(end.Line) != "GET /users/42" {
		t.Errorf("end: kind %s status %d reason %d line %q, want request_end 503 close %q", end.Kind, end.Status, end.Reason, end.Line, "GET /users/42")
	}
	if d := time.Duration(end.LastWriteNS - end.StartNS); d < 20*time.Millisecond || d > time.Second {
		t.Errorf("duration %v, want about 20ms", d)
	}
	if end.BytesIn != uint64(len(req)) {
		t.Errorf("bytes in %d, want %d", end.BytesIn, len(req))
	}
	if want := uint64(len("HTTP/1.1 100 Continue\r\n\r\n") + len("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n") + 2); end.BytesOut != want {
		t.Errorf("bytes out %d, want %d", end.BytesOut, want)
	}
	if n, err := p.Lost(); err != nil || n != 0 {
		t.Errorf("lost %d, %v", n, err)
	}

	// A request line that arrives a few bytes at a time is reassembled from the END's first
	// piece and the LINE records before it, and the query string still never leaves the kernel.
	cl2, srv2 := tcpConnect(t, ln)
	defer unix.Close(cl2)
	var line []byte
	frag := "POST /frag/x?token=secret HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
	var pieces []string
	for len(frag) > 3 {
		pieces, frag = append(pieces, frag[:3]), frag[3:]
	}
	pieces = append(pieces, frag)
	go func() {
		for _, piece := range pieces {
			unix.Sendto(cl2, []byte(piece), 0, nil)
			time.Sleep(15 * time.Millisecond)
		}
	}()
	for got := 0; got < len(strings.Join(pieces, "")); {
		n, _, err := unix.Recvfrom(srv2, buf, 0)
		if err != nil {
			t.Fatal(err)
		}
		got += n
	}
	unix.Sendto(srv2, []byte("HTTP/1.1 200 OK\r\n\r\n"), 0, nil)
	unix.Close(srv2)
	var kinds []events.Kind
	var more []byte
	for _, ev := range rec.requests(t, 3*time.Second) {
		switch ev.Kind {
		case events.KindReqLine:
			more = append(more, ev.Line...)
		case events.KindReqEnd:
			line = append(append(line, ev.Line...), more...)
		}
		kinds = append(kinds, ev.Kind)
	}
	if string(line) != "POST /frag/x" {
		t.Errorf("reassembled line %q, want %q (records %v)", line, "POST /frag/x", kinds)
	}
	// Records carry the kept bytes padded to 8 with zeros: not a byte of what follows.
	for _, s := range []string{"?t", "token", "secret", "HTTP/1.1\r", "Bearer"} {
		if rec.rawContains(s) {
			t.Errorf("a record holds %q: bytes past the path left the kernel", s)
		}
	}

	if err := p.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := p.Read(new(events.Event)); !errors.Is(err, ErrClosed) {
		t.Errorf("read after close: %v, want ErrClosed", err)
	}
}

// TestUnixConnectionClose: no hook sees a Unix socket close, so the reader's sweep ends the
// request once the worker's fd no longer names the socket, with the kernel's own figures.
func TestUnixConnectionClose(t *testing.T) { forEachMode(t, testUnixConnectionClose) }

func testUnixConnectionClose(t *testing.T, mode string) {
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	path := t.TempDir() + "/s.sock"
	ln, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(ln, 4)
	cl, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	defer unix.Close(cl)
	if err := unix.Connect(cl, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	srv, _, err := unix.Accept4(ln, 0)
	if err != nil {
		t.Fatal(err)
	}
	req := "GET /over/unix HTTP/1.0\r\n\r\n"
	unix.Write(cl, []byte(req))
	buf := make([]byte, 4096)
	if _, err := io.recv(srv, buf); err != nil {
		t.Fatal(err)
	}
	time.Sleep(10 * time.Millisecond)
	head, body := "HTTP/1.1 404 Not Found\r\nContent-Length: 4\r\n\r\n", "nope"
	io.send(srv, []byte(head))
	io.send(srv, []byte(body))
	closedAt := time.Now()
	unix.Close(srv)

	got := record(p).requests(t, 3*SweepInterval)
	if len(got) != 1 {
		t.Fatalf("got %d request records, want 1 (the end, from the sweep): %+v", len(got), got)
	}
	end := got[0]
	if end.Kind != events.KindReqEnd || end.Reason != events.EndClose || end.Status != 404 || end.FD != uint32(srv) || string(end.Line) != "GET /over/unix" {
		t.Errorf("end: %+v line %q, want request_end close 404 on fd %d, %q", end, end.Line, srv, "GET /over/unix")
	}
	if end.BytesIn != uint64(len(req)) || end.BytesOut != uint64(len(head)+len(body)) {
		t.Errorf("bytes in/out %d/%d, want %d/%d", end.BytesIn, end.BytesOut, len(req), len(head)+len(body))
	}
	if d := time.Duration(end.LastWriteNS - end.StartNS); d < 10*time.Millisecond || d > time.Second {
		t.Errorf("duration %v, want about 10ms (first byte read to last byte written)", d)
	}
	t.Logf("end seen %v after the close", time.Since(closedAt))
	var sk uint64
	var c gpeConn
	if p.objs.Conns.Iterate().Next(&sk, &c) {
		t.Errorf("the closed connection is still in the kernel's table: %x %+v", sk, c)
	}
}

// loadAsWorker loads the probes in a hook mode, closed when the test ends, with this process
// tracked as a worker.
func loadAsWorker(t *testing.T, mode string) *Probes {
	t.Helper()
	p := loadMode(t, mode)
	t.Cleanup(func() { p.Close() })
	if err := p.Track(uint32(os.Getpid()), 1, events.ProcWorker); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadWorkerWith loads the probes as cfg says, closed when the test ends, with this process
// tracked as a worker.
func loadWorkerWith(t *testing.T, cfg Config) *Probes {
	t.Helper()
	requireRoot(t)
	if cfg.Object == "" {
		cfg.Object = testObject()
	}
	p, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	if err := p.Track(uint32(os.Getpid()), 1, events.ProcWorker); err != nil {
		t.Fatal(err)
	}
	return p
}

// tcpListen opens a listener of this process on loopback, closed when the test ends.
func tcpListen(t *testing.T) int {
	t.Helper()
	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(ln) })
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(ln, 4); err != nil {
		t.Fatal(err)
	}
	return ln
}

// tcpConnect connects a client to the listener and returns both ends.
func tcpConnect(t *testing.T, ln int) (client, server int) {
	t.Helper()
	sa, err := unix.Getsockname(ln)
	if err != nil {
		t.Fatal(err)
	}
	client, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(client, sa); err != nil {
		t.Fatal(err)
	}
	server, _, err = unix.Accept4(ln, 0)
	if err != nil {
		t.Fatal(err)
	}
	return client, server
}

// recorder is the one reader of a test's probes: a second goroutine in Read would take
// records away from the test.
type recorder struct {
	events chan events.Event
	mu     sync.Mutex
	raw    [][]byte // every record as the ring buffer held it
}

// record reads every record of p, with its line copied, until p is closed.
func record(p *Probes) *recorder {
	r := &recorder{events: make(chan events.Event, 4096)}
	go func() {
		defer close(r.events)
		for {
			ev := new(events.Event)
			if err := p.Read(ev); err != nil {
				return
			}
			r.mu.Lock()
			r.raw = append(r.raw, append([]byte(nil), p.rd.ring.rec.RawSample...))
			r.mu.Unlock()
			ev.Line = append([]byte(nil), ev.Line...)
			r.events <- *ev
		}
	}()
	return r
}

// rawContains reports whether any record read so far holds s in the bytes after its fixed
// fields: the line of a START or LINE record and its padding, where bytes of the read past
// the path would be. (The fixed fields are times, ids and sizes, whose bytes may spell two
// letters by chance: "?t" did once, in a timestamp.)
func (r *recorder) rawContains(s string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, b := range r.raw {
		if len(b) > reqSize && strings.Contains(string(b[reqSize:]), s) {
			return true
		}
	}
	return false
}

// requests returns the request records read until an END or the deadline.
func (r *recorder) requests(t *testing.T, within time.Duration) []events.Event {
	t.Helper()
	var got []events.Event
	timeout := time.After(within)
	for {
		select {
		case ev, ok := <-r.events:
			if !ok {
				t.Fatal("probes closed")
			}
			if ev.Kind < events.KindReqEnd {
				continue
			}
			got = append(got, ev)
			if ev.Kind == events.KindReqEnd {
				return got
			}
		case <-timeout:
			return got
		}
	}
}

// TestProbation: a connection whose first bytes are not a request line is a request only if
// the worker answers with a status line (Gunicorn's 400 to garbage); the worker's own client
// traffic (a database protocol) on such a socket produces no record at all.
func TestProbation(t *testing.T) { forEachMode(t, testProbation) }

func testProbation(t *testing.T, mode string) {
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	rec := record(p)
	buf := make([]byte, 4096)

	// A client socket of the worker: it writes a query and reads a reply, neither HTTP.
	ln := tcpListen(t)
	db, dbSrv := tcpConnect(t, ln)
	io.send(dbSrv, []byte("+OK redis says hello\r\n"))
	io.recv(db, buf)
	io.send(db, []byte("*1\r\n$4\r\nPING\r\n"))
	io.recv(dbSrv, buf)
	io.send(dbSrv, []byte("+PONG\r\n"))
	io.recv(db, buf)
	unix.Close(db)
	unix.Close(dbSrv)
	if got := rec.requests(t, 300*time.Millisecond); len(got) != 0 {
		t.Errorf("the worker's own client traffic produced request records: %+v", got)
	}

	// Garbage on the port, answered with a 400.
	cl, srv := tcpConnect(t, ln)
	defer unix.Close(cl)
	garbage := "\x00\x01binary\xff garbage\r\n\r\n"
	unix.Write(cl, []byte(garbage))
	io.recv(srv, buf)
	answer := "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"
	io.send(srv, []byte(answer))
	unix.Close(srv)
	got := rec.requests(t, 2*time.Second)
	if len(got) != 1 {
		t.Fatalf("got %d request records, want 1, its end: %+v", len(got), got)
	}
	end := got[0]
	if end.Kind != events.KindReqEnd || end.Status != 400 || end.Reason != events.EndClose || len(end.Line) != 0 {
		t.Errorf("end: %+v line %q, want request_end 400 close with no line", end, end.Line)
	}
	if end.BytesIn != uint64(len(garbage)) || end.BytesOut != uint64(len(answer)) {
		t.Errorf("bytes in/out %d/%d, want %d/%d", end.BytesIn, end.BytesOut, len(garbage), len(answer))
	}
}

// TestFilterCounts: the process filter counts each tracked process once, however often it is
// tracked, and gives the count back when it is untracked, so a slot of the host's other
// processes returns to zero (no map lookup for them).
func TestFilterCounts(t *testing.T) {
	requireRoot(t)
	p, err := Load(DefaultConfig())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer p.Close()
	slot := func(tgid uint32) uint32 {
		var f gpeFilter
		if err := p.objs.Filter.Lookup(uint32(0), &f); err != nil {
			t.Fatal(err)
		}
		return f.N[tgid%uint32(len(f.N))]
	}
	const a, b = 4000001, 4000001 + 2048 // the same slot
	base := slot(a)
	for _, step := range []struct {
		do   func() error
		want uint32
	}{
		{func() error { return p.Track(a, 1, events.ProcWorker) }, 1},
		{func() error { return p.Track(a, 1, events.ProcMaster) }, 1}, // replaced, not counted again
		{func() error { return p.Track(b, 1, events.ProcWorker) }, 2},
		{func() error { return p.Untrack(a) }, 1},
		{func() error { return p.Untrack(a) }, 1}, // not there: nothing given back
		{func() error { return p.Untrack(b) }, 0},
	} {
		if err := step.do(); err != nil {
			t.Fatal(err)
		}
		if got := slot(a) - base; got != step.want {
			t.Fatalf("slot count %d, want %d", got, step.want)
		}
	}
}

// TestSlotTaken: a TCP connection whose slot of the connection table is held by another goes
// to the hash map, and is followed and ended from there as from a slot.
func TestSlotTaken(t *testing.T) { forEachMode(t, testSlotTaken) }

func testSlotTaken(t *testing.T, mode string) {
	p := loadAsWorker(t, mode)
	// Every slot held by a socket that is not this one.
	n := p.objs.Slots.MaxEntries()
	keys := make([]uint32, n)
	vals := make([]gpeSlot, n)
	for i := range keys {
		keys[i] = uint32(i)
		vals[i].Sk = 1 << 62
	}
	if _, err := p.objs.Slots.BatchUpdate(keys, vals, nil); err != nil {
		t.Fatal(err)
	}
	rec := record(p)
	ln := tcpListen(t)
	cl, srv := tcpConnect(t, ln)
	defer unix.Close(cl)
	unix.Sendto(cl, []byte("GET /no/slot HTTP/1.1\r\nHost: x\r\n\r\n"), 0, nil)
	buf := make([]byte, 4096)
	if _, _, err := unix.Recvfrom(srv, buf, 0); err != nil {
		t.Fatal(err)
	}
	var sk uint64
	var c gpeConn
	if !p.objs.Conns.Iterate().Next(&sk, &c) || c.Owner.Fd != uint32(srv) {
		t.Errorf("the connection is not in the hash map: %+v", c)
	}
	unix.Sendto(srv, []byte("HTTP/1.1 201 Created\r\n\r\n"), 0, nil)
	unix.Close(srv)
	got := rec.requests(t, 3*time.Second)
	if len(got) != 1 || string(got[0].Line) != "GET /no/slot" || got[0].Status != 201 ||
		got[0].Kind != events.KindReqEnd || got[0].Reason != events.EndClose {
		t.Fatalf("got %+v, want one end: GET /no/slot, 201, close", got)
	}
	if p.objs.Conns.Iterate().Next(&sk, &c) {
		t.Errorf("the ended connection is still in the hash map: %+v", c)
	}
}

// TestHookModeAttachments: socket mode attaches no syscall tracepoint (enabling one puts every
// syscall of every task on the host on the kernel's slow path) and loads no syscall-mode
// program; syscall mode attaches its five sys_exit tracepoints and loads no socket-mode
// program. What is attached is read back from the kernel, through bpftool's list of this
// process's tracepoint attachments, and the programs' names from their IDs. The TLS programs
// (tls.go: the uprobe_multi pair where the kernel has it) are loaded in both modes, and
// attached to nothing until AttachTLS names a worker.
func TestHookModeAttachments(t *testing.T) {
	want := map[string]struct{ tracepoints, raw, progs []string }{
		HooksSocket: {
			tracepoints: []string{"mark_victim"},
			raw:         []string{"inet_sock_set_state", "sched_process_exec", "sched_process_exit", "sched_process_fork", "signal_generate", "sock_recv_length", "sock_send_length", "tcp_destroy_sock"},
			progs:       []string{"on_exec", "on_exit", "on_fork", "on_oom", "on_signal", "on_sock_recv", "on_sock_send", "on_tcp_destroy", "on_tcp_state"},
		},
		HooksSyscall: {
			tracepoints: []string{"mark_victim", "sys_exit_recvfrom", "sys_exit_recvmsg", "sys_exit_sendfile64", "sys_exit_sendmsg", "sys_exit_sendto"},
			raw:         []string{"inet_sock_set_state", "sched_process_exec", "sched_process_exit", "sched_process_fork", "signal_generate", "tcp_destroy_sock"},
			progs:       []string{"on_exec", "on_exit", "on_fork", "on_oom", "on_signal", "on_sys_recv", "on_sys_send", "on_tcp_destroy", "on_tcp_state"},
		},
	}
	forEachMode(t, func(t *testing.T, mode string) {
		p := loadMode(t, mode)
		defer p.Close()
		tps, raw := perfList(t)
		if got := strings.Join(tps, " "); got != strings.Join(want[mode].tracepoints, " ") {
			t.Errorf("tracepoints attached: %s, want %s", got, strings.Join(want[mode].tracepoints, " "))
		}
		if got := strings.Join(raw, " "); got != strings.Join(want[mode].raw, " ") {
			t.Errorf("BTF tracepoints attached: %s, want %s", got, strings.Join(want[mode].raw, " "))
		}
		var progs []string
		for _, id := range p.ProgramIDs() {
			prog, err := ebpf.NewProgramFromID(id)
			if err != nil {
				t.Fatal(err)
			}
			info, err := prog.Info()
			prog.Close()
			if err != nil {
				t.Fatal(err)
			}
			progs = append(progs, info.Name)
		}
		sort.Strings(progs)
		wantProgs := append(slices.Clone(want[mode].progs), tlsPrograms(haveUprobeMulti())...)
		sort.Strings(wantProgs)
		if got := strings.Join(progs, " "); got != strings.Join(wantProgs, " ") {
			t.Errorf("programs loaded: %s, want %s", got, strings.Join(wantProgs, " "))
		}
	})
}

// perfList is what `bpftool perf list` says this process has attached: tracepoints, and raw
// (BTF) tracepoints, each sorted.
func perfList(t *testing.T) (tracepoints, raw []string) {
	t.Helper()
	_, err := exec.LookPath("bpftool")
	need(t, "this test lists attachments with bpftool (make deps)", err)
	out, err := exec.Command("bpftool", "-j", "perf", "list").Output()
	if err != nil {
		t.Fatalf("bpftool perf list: %v", err)
	}
	var entries []struct {
		PID        int    `json:"pid"`
		FDType     string `json:"fd_type"`
		Tracepoint string `json:"tracepoint"`
	}
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bpftool perf list: %v\n%s", err, out)
	}
	for _, e := range entries {
		if e.PID != os.Getpid() {
			continue
		}
		switch e.FDType {
		case "tracepoint":
			tracepoints = append(tracepoints, e.Tracepoint)
		case "raw_tracepoint":
			raw = append(raw, e.Tracepoint)
		default:
			t.Errorf("unexpected attachment %+v", e)
		}
	}
	sort.Strings(tracepoints)
	sort.Strings(raw)
	return tracepoints, raw
}

// need skips, or under CI=true fails, when what a test needs (root, a tool) is missing.
func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s: %v", what, err)
}

// statsSysctl turns the kernel's per-program run counters on (1) and off (0); ProgramStats
// reads it through proc.FS.BPFStatsEnabled.
const statsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// TestProgramStats: while the kernel counts (kernel.bpf_stats_enabled 1), ProgramStats reports
// each loaded program and the runs of the socket hooks a request made; with it 0, nothing.
func TestProgramStats(t *testing.T) {
	p := loadAsWorker(t, HooksSocket)
	if b, err := os.ReadFile(statsSysctl); err == nil && strings.TrimSpace(string(b)) == "0" {
		stats, on, err := p.ProgramStats()
		if err != nil || on || len(stats) != len(p.progs) {
			t.Errorf("with kernel.bpf_stats_enabled 0: %v, %v, %v; want every program, not counting", stats, on, err)
		}
		for _, st := range stats {
			if st.Runs != 0 || st.Runtime != 0 {
				t.Errorf("with kernel.bpf_stats_enabled 0: %+v, want no runs", st)
			}
		}
	}
	// The sysctl, not BPF_ENABLE_STATS (which counts without changing what the sysctl says):
	// it is what ProgramStats goes by. Put back as it was.
	old, err := os.ReadFile(statsSysctl)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(statsSysctl, []byte("1"), 0o644); err != nil {
		t.Fatalf("turn kernel.bpf_stats_enabled on: %v", err)
	}
	defer os.WriteFile(statsSysctl, old, 0o644)
	ln := tcpListen(t)
	cl, srv := tcpConnect(t, ln)
	defer unix.Close(cl)
	unix.Sendto(cl, []byte("GET /counted HTTP/1.1\r\n\r\n"), 0, nil)
	unix.Recvfrom(srv, make([]byte, 512), 0)
	unix.Close(srv)
	stats, on, err := p.ProgramStats()
	if err != nil || !on {
		t.Fatalf("ProgramStats: %v, on %v", err, on)
	}
	byName := map[string]ProgramStat{}
	for _, st := range stats {
		byName[st.Name] = st
	}
	if len(byName) != len(p.progs) {
		t.Errorf("stats of %d programs, %d loaded: %+v", len(byName), len(p.progs), stats)
	}
	if st := byName[gpeProgOnSockRecv]; st.Runs == 0 || st.Runtime <= 0 {
		t.Errorf("on_sock_recv after a request: %+v, want runs and run time", st)
	}
}

// TestQueueWaitOff: without QueueWait (--queue-wait=false) the hook on every TCP state change
// of the host is neither loaded nor attached, and tcp_destroy_sock ends TCP requests instead.
func TestQueueWaitOff(t *testing.T) {
	p := loadSocketWith(t, func(c *Config) { c.QueueWait = false })
	_, raw := perfList(t)
	if slices.Contains(raw, "inet_sock_set_state") {
		t.Errorf("inet_sock_set_state attached with QueueWait off: %v", raw)
	}
	if !slices.Contains(raw, "tcp_destroy_sock") {
		t.Errorf("tcp_destroy_sock not attached with QueueWait off (nothing would end TCP requests): %v", raw)
	}
	if !slices.Contains(raw, "sock_recv_length") {
		t.Errorf("the socket hooks are missing: %v (the test reads the wrong attachments)", raw)
	}
	// TCP requests still end at the connection's end, seen by tcp_destroy_sock.
	rec, srv := answerOne(t, p, "GET /no/queue")
	unix.Close(srv)
	got := rec.requests(t, 3*time.Second)
	if len(got) != 1 || got[0].Reason != events.EndClose || string(got[0].Line) != "GET /no/queue" || got[0].EstablishedNS != 0 {
		t.Errorf("got %+v, want one end by close of GET /no/queue, with no establishment stamp", got)
	}
}

// answerOne makes this process p's worker, reads line on a new TCP connection and answers it
// 200; it returns the recorder and the server's end, left open (the client's closes with t).
func answerOne(t *testing.T, p *Probes, line string) (*recorder, int) {
	t.Helper()
	if err := p.Track(uint32(os.Getpid()), 1, events.ProcWorker); err != nil {
		t.Fatal(err)
	}
	rec := record(p)
	cl, srv := tcpConnect(t, tcpListen(t))
	t.Cleanup(func() { unix.Close(cl) })
	unix.Write(cl, []byte(line+" HTTP/1.1\r\n\r\n"))
	if _, err := unix.Read(srv, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	unix.Write(srv, []byte("HTTP/1.1 200 OK\r\n\r\n"))
	return rec, srv
}

// TestTCPCloseMissed: with QueueWait, a connection's end is seen first by on_tcp_state, at the
// move to CLOSE. The kernel skips a run of it that would nest in another on the same CPU (a
// softirq's CLOSE while a process's state change is in it: a recursion miss); on_tcp_destroy,
// attached beside it, then ends the request. The miss is made here by detaching on_tcp_state
// once the request is read.
func TestTCPCloseMissed(t *testing.T) {
	p := loadSocketWith(t, func(c *Config) { c.QueueWait = true })
	rec, srv := answerOne(t, p, "GET /close/missed")
	state, err := p.progs[gpeProgOnTcpState].Info()
	if err != nil {
		t.Fatal(err)
	}
	stateID, _ := state.ID()
	detached := 0
	for _, l := range p.links {
		if info, err := l.Info(); err == nil && info.Program == stateID {
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			detached++
		}
	}
	if detached != 1 {
		t.Fatalf("%d links of on_tcp_state, want 1 (the test cannot make the miss)", detached)
	}
	unix.Close(srv)
	got := rec.requests(t, 3*time.Second)
	if len(got) != 1 || got[0].Reason != events.EndClose || string(got[0].Line) != "GET /close/missed" || got[0].Status != 200 {
		t.Errorf("got %+v, want one end by close of GET /close/missed, status 200", got)
	}
}

// TestExitEndsRequests: a worker that dies while it serves a request (kill -9) has that
// request ended by the kernel, with reason exit and no status, before its EXIT record: its
// connection is still open when the exit tracepoint fires. Its busy time rides on the EXIT.
func TestExitEndsRequests(t *testing.T) { forEachMode(t, testExitEndsRequests) }

func testExitEndsRequests(t *testing.T, mode string) {
	p := loadMode(t, mode)
	defer p.Close()
	ln := tcpListen(t)
	cl, srv := tcpConnect(t, ln)
	defer unix.Close(cl)
	// The worker: a process that receives the request on fd 3 (recv: both modes see it) and hangs.
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Fatal("python3 is needed for the worker process: ", err)
	}
	f := os.NewFile(uintptr(srv), "srv")
	cmd := exec.Command(py, "-c", "import os, socket, time\nos.write(1, b'a')\nsocket.socket(fileno=3).recv(4096)\nos.write(1, b'r')\ntime.sleep(60)\n")
	cmd.ExtraFiles = []*os.File{f}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	// It says when it runs (its exec is over: a worker that execs becomes a master, as in a
	// USR2 upgrade), then blocks in recv until the request is sent, after Track below.
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer cmd.Process.Kill()
	if _, err := out.Read(make([]byte, 1)); err != nil {
		t.Fatal("the worker did not start: ", err)
	}
	pid := uint32(cmd.Process.Pid)
	if err := p.Track(pid, 1, events.ProcWorker); err != nil {
		t.Fatal(err)
	}
	rec := record(p)
	unix.Write(cl, []byte("GET /dying/now?secret=1 HTTP/1.1\r\nHost: x\r\n\r\n"))
	if _, err := out.Read(make([]byte, 1)); err != nil {
		t.Fatal("the worker did not read the request: ", err)
	}
	if o, ok := p.Occupancy(pid); !ok || o.InFlight != 1 {
		t.Errorf("occupancy %+v (tracked %v), want 1 in flight", o, ok)
	}
	time.Sleep(30 * time.Millisecond)
	cmd.Process.Kill()
	cmd.Wait()

	var got []events.Event
	deadline := time.After(3 * time.Second)
	for len(got) < 2 {
		select {
		case ev := <-rec.events:
			if ev.TGID == pid && (ev.Kind == events.KindReqEnd || ev.Kind == events.KindExit) {
				got = append(got, ev)
			}
		case <-deadline:
			t.Fatalf("got %+v, want the request's end, then the exit", got)
		}
	}
	end, exit := got[0], got[1]
	if end.Kind != events.KindReqEnd || end.Reason != events.EndExit || end.Status != 0 || string(end.Line) != "GET /dying/now" {
		t.Errorf("first: %s reason %d status %d line %q, want request_end exit, no status, %q", end.Kind, end.Reason, end.Status, end.Line, "GET /dying/now")
	}
	if exit.Kind != events.KindExit || exit.BusyNS < uint64(30*time.Millisecond) || exit.BusyNS > uint64(5*time.Second) {
		t.Errorf("second: %s busy %v, want exit with about 30 ms busy", exit.Kind, time.Duration(exit.BusyNS))
	}
}

// TestCutLine: the kernel's cut of the request line after the path, on the fast path (method
// and path whole in the first read: words scanned, no callback per byte) and on the slow one
// it falls back to (long paths, odd lines), agrees with what the path ends at.
func TestCutLine(t *testing.T) { forEachMode(t, testCutLine) }

func testCutLine(t *testing.T, mode string) {
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	rec := record(p)
	ln := tcpListen(t)
	long := "/" + strings.Repeat("abcdefgh", 30)   // 241 bytes: past the fast path's 28 words
	longer := "/" + strings.Repeat("abcdefgh", 40) // past the 256 bytes kept
	for _, tc := range []struct{ req, want string }{
		{"GET / HTTP/1.1\r\n\r\n", "GET /"},
		{"GET /ok HTTP/1.1\r\n\r\n", "GET /ok"},
		{"GET /a?b=c HTTP/1.1\r\n\r\n", "GET /a"},
		{"GET /frag#x HTTP/1.1\r\n\r\n", "GET /frag"},
		{"GET /exactly/16/b HTTP/1.0\r\n\r\n", "GET /exactly/16/b"},
		{"POST /api/v1/users/12345/orders?x=1 HTTP/1.1\r\n\r\n", "POST /api/v1/users/12345/orders"},
		{"OPTIONS * HTTP/1.1\r\n\r\n", "OPTIONS *"},
		{"GET http://h/p?q HTTP/1.1\r\n\r\n", "GET http://h/p"},
		{"PROPPATCHXXXXXX /x HTTP/1.1\r\n\r\n", "PROPPATCHXXXXXX /x"}, // a 15-letter method
		{"GET /noversion\r\n\r\n", "GET /noversion"},
		{"GET " + long + " HTTP/1.1\r\n\r\n", "GET " + long},
		{"GET " + longer + " HTTP/1.1\r\n\r\n", ("GET " + longer)[:events.LineMax]},
		{"GET /x", "GET /x"}, // the read ends with the path: the slow path keeps it all
	} {
		cl, srv := tcpConnect(t, ln)
		unix.Write(cl, []byte(tc.req))
		buf := make([]byte, 4096)
		if _, err := io.recv(srv, buf); err != nil {
			t.Fatal(err)
		}
		io.send(srv, []byte("HTTP/1.1 204 No Content\r\n\r\n"))
		unix.Close(srv)
		unix.Close(cl)
		got := rec.requests(t, 3*time.Second)
		if len(got) != 1 || got[0].Kind != events.KindReqEnd || string(got[0].Line) != tc.want {
			var line string
			if len(got) > 0 {
				line = string(got[len(got)-1].Line)
			}
			t.Errorf("%q: %d records, line %q, want one end with %q", tc.req, len(got), line, tc.want)
		}
	}
}

// TestQueueWaitStamp: a connection to a listening port user space named is stamped when the
// kernel establishes it, in its slot (taken then, before any worker reads it) or, when that
// slot is held, in the established map; its first request's END carries the stamp, and the
// time until the worker's first read is its wait in the accept queue.
func TestQueueWaitStamp(t *testing.T) {
	for _, held := range []bool{false, true} {
		name := map[bool]string{false: "slot", true: "slot held"}[held]
		t.Run(name, func(t *testing.T) {
			p := loadAsWorker(t, HooksSocket)
			if held {
				n := p.objs.Slots.MaxEntries()
				keys, vals := make([]uint32, n), make([]gpeSlot, n)
				for i := range keys {
					keys[i], vals[i].Sk = uint32(i), 1<<62
				}
				if _, err := p.objs.Slots.BatchUpdate(keys, vals, nil); err != nil {
					t.Fatal(err)
				}
			}
			ln := tcpListen(t)
			sa, _ := unix.Getsockname(ln)
			if err := p.SetListenPorts([]uint16{uint16(sa.(*unix.SockaddrInet4).Port)}); err != nil {
				t.Fatal(err)
			}
			rec := record(p)
			cl, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(cl)
			if err := unix.Connect(cl, sa); err != nil {
				t.Fatal(err)
			}
			unix.Write(cl, []byte("GET /queued HTTP/1.1\r\n\r\n"))
			time.Sleep(40 * time.Millisecond) // in the accept queue
			srv, _, err := unix.Accept4(ln, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := unix.Read(srv, make([]byte, 4096)); err != nil {
				t.Fatal(err)
			}
			unix.Write(srv, []byte("HTTP/1.1 200 OK\r\n\r\n"))
			unix.Close(srv)
			got := rec.requests(t, 3*time.Second)
			if len(got) != 1 || string(got[0].Line) != "GET /queued" || got[0].Status != 200 {
				t.Fatalf("got %+v, want one end of GET /queued, 200", got)
			}
			end := got[0]
			if end.EstablishedNS == 0 || end.EstablishedNS > end.StartNS {
				t.Fatalf("established %d, start %d: want a stamp before the start", end.EstablishedNS, end.StartNS)
			}
			if w := time.Duration(end.StartNS - end.EstablishedNS); w < 40*time.Millisecond || w > time.Second {
				t.Errorf("wait in the accept queue %v, want about 40 ms", w)
			}
		})
	}
}

// loadSocketWith loads the probes in socket mode with the defaults as tweak changes them;
// the test's cleanup closes them.
func loadSocketWith(t *testing.T, tweak func(*Config)) *Probes {
	t.Helper()
	requireRoot(t)
	cfg := DefaultConfig()
	cfg.Hooks = HooksSocket
	tweak(&cfg)
	p, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}
