package probes

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// requireRoot skips, or under CI=true fails: loading BPF needs root (CAP_BPF, CAP_PERFMON).
func requireRoot(t *testing.T) {
	t.Helper()
	if err := CheckPrivileges(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("this test loads BPF programs and needs root: %v", err)
		}
		t.Skipf("this test loads BPF programs and needs root: %v", err)
	}
}

// TestRequestStateMachine drives one real HTTP exchange over loopback with the syscalls a
// Gunicorn worker uses (accept4, recvfrom, sendto, close), from this very process tracked as
// a worker, and checks the records the kernel side emits.
func TestRequestStateMachine(t *testing.T) {
	requireRoot(t)
	p, err := Load(DefaultConfig())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	ids := p.ProgramIDs()
	defer func() {
		p.Close()
		for _, id := range ids {
			if prog, err := ebpf.NewProgramFromID(id); err == nil {
				prog.Close()
				t.Errorf("program %d still loaded after Close", id)
			}
		}
	}()
	me := uint32(os.Getpid())
	if err := p.Track(me, 1, ProcWorker); err != nil {
		t.Fatal(err)
	}

	ln, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(ln)
	if err := unix.Bind(ln, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	unix.Listen(ln, 4)
	sa, _ := unix.Getsockname(ln)
	cl, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	defer unix.Close(cl)
	if err := unix.Connect(cl, sa); err != nil {
		t.Fatal(err)
	}
	srv, _, err := unix.Accept4(ln, 0)
	if err != nil {
		t.Fatal(err)
	}
	req := "GET /users/42?token=secret HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cr3t\r\n\r\n"
	unix.Sendto(cl, []byte(req), 0, nil)
	buf := make([]byte, 4096)
	if _, _, err := unix.Recvfrom(srv, buf, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	unix.Sendto(srv, []byte("HTTP/1.1 100 Continue\r\n\r\n"), 0, nil)
	unix.Sendto(srv, []byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n"), 0, nil)
	unix.Sendto(srv, []byte("no"), 0, nil)
	unix.Close(srv)

	var got []Event
	deadline := time.Now().Add(3 * time.Second)
	for len(got) < 3 && time.Now().Before(deadline) {
		ev := new(Event)
		done := make(chan error, 1)
		go func() { done <- p.Read(ev) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			if ev.Kind >= KindReqStart {
				ev.Line = append([]byte(nil), ev.Line...)
				got = append(got, *ev)
			}
		case <-time.After(time.Until(deadline)):
		}
	}
	if len(got) != 3 {
		t.Fatalf("got %d request records, want 3: %+v", len(got), got)
	}
	start, resp, end := got[0], got[1], got[2]
	if start.Kind != KindReqStart || string(start.Line) != "GET /users/42" {
		t.Errorf("start: kind %s line %q, want request_start %q", start.Kind, start.Line, "GET /users/42")
	}
	if resp.Kind != KindReqResp || resp.Status != 503 {
		t.Errorf("resp: kind %s status %d, want request_response 503 (the 100 is interim)", resp.Kind, resp.Status)
	}
	if end.Kind != KindReqEnd || end.Status != 503 || end.Reason != EndClose {
		t.Errorf("end: kind %s status %d reason %d, want request_end 503 close", end.Kind, end.Status, end.Reason)
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

	// A request line that arrives a few bytes at a time is reassembled from START + LINE
	// records, and the query string still never leaves the kernel.
	cl2, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	defer unix.Close(cl2)
	if err := unix.Connect(cl2, sa); err != nil {
		t.Fatal(err)
	}
	srv2, _, err := unix.Accept4(ln, 0)
	if err != nil {
		t.Fatal(err)
	}
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
	var kinds []Kind
	for done := false; !done; {
		ev := new(Event)
		if err := p.Read(ev); err != nil {
			t.Fatal(err)
		}
		if ev.Kind == KindReqStart || ev.Kind == KindReqLine {
			line = append(line, ev.Line...)
		}
		if ev.Kind >= KindReqStart {
			kinds = append(kinds, ev.Kind)
		}
		done = ev.Kind == KindReqEnd
	}
	if string(line) != "POST /frag/x" {
		t.Errorf("reassembled line %q, want %q (records %v)", line, "POST /frag/x", kinds)
	}

	if err := p.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	if err := p.Read(new(Event)); !errors.Is(err, ErrClosed) {
		t.Errorf("read after close: %v, want ErrClosed", err)
	}
}
