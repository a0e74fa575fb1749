package probes

import (
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// TestStatusLine: every answered status line counts, whatever HTTP version Gunicorn echoes
// ("HTTP/<d>.<d...> NNN"); what is not one leaves the request without a status.
func TestStatusLine(t *testing.T) { forEachMode(t, testStatusLine) }

func testStatusLine(t *testing.T, mode string) {
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	rec := record(p)
	ln := tcpListen(t)
	for _, tc := range []struct {
		line string
		want uint16
	}{
		{"HTTP/1.1 200 OK\r\n\r\n", 200},
		{"HTTP/1.0 404 Not Found\r\n\r\n", 404},
		{"HTTP/2.0 200 OK\r\n\r\n", 200},
		{"HTTP/1.10 503 Busy\r\n\r\n", 503},
		{"HTTP/0.9 200 OK\r\n\r\n", 200},
		{"HTTP/1.12345 201 Created\r\n\r\n", 201}, // the longest minor version that fits
		{"HTTP/1.123456 200 OK\r\n\r\n", 0},
		{"HTTP/1.1 200", 200}, // 12 bytes, the shortest
		{"HTTP/11.1 200 OK\r\n\r\n", 0},
		{"HTTP/1.x 200 OK\r\n\r\n", 0},
		{"HTTP/1.1 099 Low\r\n\r\n", 0},
		{"HTTP/1.1 600 High\r\n\r\n", 0},
	} {
		cl, srv := tcpConnect(t, ln)
		unix.Write(cl, []byte("GET /s HTTP/1.1\r\n\r\n"))
		buf := make([]byte, 4096)
		if _, err := io.recv(srv, buf); err != nil {
			t.Fatal(err)
		}
		io.send(srv, []byte(tc.line))
		unix.Close(srv)
		unix.Close(cl)
		got := rec.requests(t, 3*time.Second)
		if len(got) != 1 || got[0].Kind != events.KindReqEnd || got[0].Status != tc.want {
			t.Errorf("%q: %d records %+v, want one end with status %d", tc.line, len(got), got, tc.want)
		}
	}
}

// TestFullTable: with room for three connections (one slot, two conns entries), the requests
// of the connections past them are dropped and counted, never the ones tracked: each tracked
// request, still in flight when the others come, ends with its status.
func TestFullTable(t *testing.T) { forEachMode(t, testFullTable) }

func testFullTable(t *testing.T, mode string) {
	cfg := DefaultConfig()
	cfg.Hooks = mode
	cfg.MaxConnections = 3
	// This process is the worker and the client: with downstream on, its client connections,
	// written while it serves the first request, would be its own client connections and take
	// room too (TestDownstream* test those).
	cfg.Downstream = false
	p := loadWorkerWith(t, cfg)
	io := ioFor(mode)
	rec := record(p)
	ln := tcpListen(t)
	const conns = 5
	var srvs, cls []int
	buf := make([]byte, 4096)
	for i := 0; i < conns; i++ {
		cl, srv := tcpConnect(t, ln)
		cls, srvs = append(cls, cl), append(srvs, srv)
		unix.Write(cl, []byte("GET /full HTTP/1.1\r\n\r\n"))
		if _, err := io.recv(srv, buf); err != nil {
			t.Fatal(err)
		}
	}
	occ, ok := p.Occupancy(uint32(os.Getpid()))
	if !ok || occ.InFlight != 3 {
		t.Fatalf("in flight %+v (tracked %v), want 3: the table holds three", occ, ok)
	}
	dropped, err := p.Dropped()
	if err != nil {
		t.Fatal(err)
	}
	if dropped["table_full"] != conns-3 {
		t.Fatalf("dropped %v, want table_full %d", dropped, conns-3)
	}
	for i := range srvs {
		io.send(srvs[i], []byte("HTTP/1.1 200 OK\r\n\r\n"))
		unix.Close(srvs[i])
		unix.Close(cls[i])
	}
	var got []events.Event
	for len(got) < 3 {
		more := rec.requests(t, 3*time.Second)
		if len(more) == 0 {
			break
		}
		got = append(got, more...)
	}
	if len(got) != 3 {
		t.Fatalf("%d records, want 3 (the tracked requests): %+v", len(got), got)
	}
	for _, ev := range got {
		if ev.Kind != events.KindReqEnd || ev.Status != 200 || string(ev.Line) != "GET /full" {
			t.Errorf("record %+v, want an end with 200 and GET /full", ev)
		}
	}
	if occ, _ := p.Occupancy(uint32(os.Getpid())); occ.InFlight != 0 {
		t.Errorf("in flight %d after every answer, want 0", occ.InFlight)
	}
}

// TestHTTP2Preface: a connection that starts with the HTTP/2 preface (h2c prior knowledge) is
// not a request without a response: nothing is in flight and no record is sent for it, while
// an HTTP/1 request on the next connection still is.
func TestHTTP2Preface(t *testing.T) { forEachMode(t, testHTTP2Preface) }

func testHTTP2Preface(t *testing.T, mode string) {
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	rec := record(p)
	ln := tcpListen(t)
	buf := make([]byte, 4096)
	settings := []byte{0, 0, 0, 4, 0, 0, 0, 0, 0} // an empty SETTINGS frame
	cl, srv := tcpConnect(t, ln)
	unix.Write(cl, append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), settings...))
	if _, err := io.recv(srv, buf); err != nil {
		t.Fatal(err)
	}
	if occ, _ := p.Occupancy(uint32(os.Getpid())); occ.InFlight != 0 {
		t.Errorf("in flight %d after an HTTP/2 preface, want 0", occ.InFlight)
	}
	io.send(srv, settings)
	unix.Write(cl, []byte{0, 0, 9, 1, 5, 0, 0, 0, 1, 0x82, 0x86, 0x84, 0x41, 0x84, 0, 0, 0, 0}) // HEADERS, stream 1
	if _, err := io.recv(srv, buf); err != nil {
		t.Fatal(err)
	}
	unix.Close(srv)
	unix.Close(cl)
	cl, srv = tcpConnect(t, ln)
	unix.Write(cl, []byte("GET /after HTTP/1.1\r\n\r\n"))
	if _, err := io.recv(srv, buf); err != nil {
		t.Fatal(err)
	}
	io.send(srv, []byte("HTTP/1.1 200 OK\r\n\r\n"))
	unix.Close(srv)
	unix.Close(cl)
	got := rec.requests(t, 3*time.Second)
	if len(got) != 1 || got[0].Kind != events.KindReqEnd || string(got[0].Line) != "GET /after" || got[0].Status != 200 {
		t.Fatalf("records %+v, want only the HTTP/1 request's end (GET /after, 200)", got)
	}
}
