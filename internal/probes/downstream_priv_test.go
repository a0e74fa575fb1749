package probes

import (
	"bufio"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// An echo server in another process (the worker's peer: a database, say), on loopback TCP and
// on a Unix socket at path, whose connections greet first ("HI\n"), as some databases do.
const peerServer = `
import socket, sys, threading
def handle(c, greet):
    if greet:
        c.sendall(b"HI\n")
    while True:
        d = c.recv(4096)
        if not d:
            return
        c.sendall(d)
def serve(ln, greet):
    while True:
        c, _ = ln.accept()
        threading.Thread(target=handle, args=(c, greet), daemon=True).start()
t = socket.socket(); t.bind(("127.0.0.1", 0)); t.listen(8)
u = socket.socket(socket.AF_UNIX); u.bind(sys.argv[1]); u.listen(8)
threading.Thread(target=serve, args=(u, True), daemon=True).start()
print(t.getsockname()[1], flush=True)
serve(t, False)
`

// startPeer starts peerServer and returns its TCP port and Unix path.
func startPeer(t *testing.T) (int, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "peer.sock")
	cmd := exec.Command("python3", "-c", peerServer, path)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("python3: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("peer server: %v", err)
	}
	port, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil {
		t.Fatalf("peer server said %q", line)
	}
	return port, path
}

// unixPath is the path /proc/net/unix gives the socket of inode ino ("" if none).
func unixPath(t *testing.T, ino uint32) string {
	t.Helper()
	b, err := os.ReadFile("/proc/net/unix")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(l)
		if len(f) >= 8 && f[6] == strconv.FormatUint(uint64(ino), 10) {
			return f[7]
		}
	}
	return ""
}

// TestDownstream: the calls a request makes on the worker's own client connections, per peer:
// three round trips on a TCP connection opened before the request (its first send comes in
// the request), two on a Unix one opened in the request whose server greets first (its first
// read puts it in probation, its first send makes it the worker's own). Each call is counted
// once, its time is within the request's, and they come in one record before the request's
// end, with its seq. A request without a call sends no such record; the TCP connection's next
// call is booked to the request that makes it.
func TestDownstream(t *testing.T) { forEachMode(t, testDownstream) }

func testDownstream(t *testing.T, mode string) {
	runtime.LockOSThread() // one thread, as a sync worker's
	defer runtime.UnlockOSThread()
	port, path := startPeer(t)
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	rec := record(p)
	ln := tcpListen(t)
	buf := make([]byte, 4096)

	db, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(db)
	if err := unix.Connect(db, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	call := func(fd int, n int) {
		for i := 0; i < n; i++ {
			io.send(fd, []byte("GET k\n"))
			if _, err := io.recv(fd, buf); err != nil {
				t.Fatal(err)
			}
		}
	}
	request := func(calls func()) []events.Event {
		cl, srv := tcpConnect(t, ln)
		unix.Write(cl, []byte("GET /ds HTTP/1.1\r\n\r\n"))
		if _, err := io.recv(srv, buf); err != nil {
			t.Fatal(err)
		}
		calls()
		io.send(srv, []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"))
		io.send(srv, []byte("ok"))
		unix.Close(srv)
		unix.Close(cl)
		return rec.requests(t, 3*time.Second)
	}

	got := request(func() {
		call(db, 3)
		us, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(us)
		if err := unix.Connect(us, &unix.SockaddrUnix{Name: path}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.recv(us, buf); err != nil { // the greeting
			t.Fatal(err)
		}
		call(us, 2)
	})
	if len(got) != 2 || got[0].Kind != events.KindDownstream || got[1].Kind != events.KindReqEnd || got[0].Seq != got[1].Seq {
		t.Fatalf("%d records %+v, want the downstream record then the end, one seq", len(got), got)
	}
	ds, end := got[0].Downstream, got[1]
	if len(ds) != 2 {
		t.Fatalf("%d peers %+v, want 2", len(ds), ds)
	}
	tcp, un := ds[0], ds[1]
	if tcp.Peer.Family != events.FamilyInet || tcp.Peer.Port != uint16(port) ||
		binary.BigEndian.Uint32(tcp.Peer.Addr[:4]) != 0x7f000001 || tcp.Calls != 3 {
		t.Errorf("TCP peer %+v, want 127.0.0.1:%d with 3 calls", tcp, port)
	}
	if un.Peer.Family != events.FamilyUnix || un.Calls != 2 || unixPath(t, un.Peer.Ino) != path {
		t.Errorf("Unix peer %+v (path %q), want %s with 2 calls", un, unixPath(t, un.Peer.Ino), path)
	}
	dur := end.LastWriteNS - end.StartNS
	for _, d := range ds {
		if d.NS == 0 || d.NS > dur {
			t.Errorf("peer %+v: %d ns of calls, want some and at most the request's %d ns", d.Peer, d.NS, dur)
		}
	}

	if got := request(func() {}); len(got) != 1 || got[0].Kind != events.KindReqEnd {
		t.Errorf("a request without calls: %d records %+v, want its end alone", len(got), got)
	}
	got = request(func() { call(db, 1) })
	if len(got) != 2 || got[0].Kind != events.KindDownstream || len(got[0].Downstream) != 1 ||
		got[0].Downstream[0].Calls != 1 || got[0].Downstream[0].Peer.Port != uint16(port) {
		t.Errorf("one more call: %d records %+v, want one call to port %d, then the end", len(got), got, port)
	}
}

// TestDownstreamOff: with Downstream off, a request's calls send no record.
func TestDownstreamOff(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	requireRoot(t)
	port, _ := startPeer(t)
	cfg := DefaultConfig()
	cfg.Hooks = HooksSocket
	cfg.Downstream = false
	p := loadWorkerWith(t, cfg)
	rec := record(p)
	ln := tcpListen(t)
	buf := make([]byte, 4096)
	cl, srv := tcpConnect(t, ln)
	unix.Write(cl, []byte("GET /ds HTTP/1.1\r\n\r\n"))
	unix.Read(srv, buf)
	db, _ := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	defer unix.Close(db)
	if err := unix.Connect(db, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	unix.Write(db, []byte("GET k\n"))
	unix.Read(db, buf)
	unix.Write(srv, []byte("HTTP/1.1 200 OK\r\n\r\n"))
	unix.Close(srv)
	unix.Close(cl)
	if got := rec.requests(t, 3*time.Second); len(got) != 1 || got[0].Kind != events.KindReqEnd {
		t.Errorf("%d records %+v, want the end alone", len(got), got)
	}
}
