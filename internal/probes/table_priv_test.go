package probes

import (
	"bytes"
	"os"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/h2"
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
// not a request without a response. Its streams are: each client HEADERS that opens one is in
// flight until the worker's response HEADERS (or a RST_STREAM, or the connection's end), frames
// cut anywhere by the reads are followed, and the records the kernel sends decode (internal/h2)
// into one request end a stream. An HTTP/1 request on the next
// connection is still counted.
func TestHTTP2Preface(t *testing.T) { forEachMode(t, testHTTP2Preface) }

func testHTTP2Preface(t *testing.T, mode string) {
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	rec := record(p)
	ln := tcpListen(t)
	buf := make([]byte, 4096)
	inFlight := func(want uint32, after string) {
		t.Helper()
		if occ, _ := p.Occupancy(uint32(os.Getpid())); occ.InFlight != want {
			t.Errorf("in flight %d after %s, want %d", occ.InFlight, after, want)
		}
	}
	var cb, sb, hb bytes.Buffer
	cf, sf := http2.NewFramer(&cb, nil), http2.NewFramer(&sb, nil)
	cenc, senc := hpack.NewEncoder(&hb), hpack.NewEncoder(&hb)
	block := func(enc *hpack.Encoder, kv ...string) []byte {
		hb.Reset()
		for i := 0; i < len(kv); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	get := func(sid uint32, path string) {
		cf.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, EndStream: true, EndHeaders: true,
			BlockFragment: block(cenc, ":method", "GET", ":scheme", "http", ":path", path, ":authority", "x")})
	}
	c, srv := tcpConnect(t, ln)
	write := func() {
		t.Helper()
		if _, err := unix.Write(c, cb.Bytes()); err != nil {
			t.Fatal(err)
		}
		cb.Reset()
		if _, err := io.recv(srv, buf); err != nil {
			t.Fatal(err)
		}
	}
	cb.WriteString(http2.ClientPreface)
	cf.WriteSettings()
	write()
	inFlight(0, "the preface")
	get(1, "/h2/x?y=1")
	write()
	inFlight(1, "a stream's HEADERS")
	get(3, "/h2/open")
	write()
	inFlight(2, "a second stream's HEADERS")
	sf.WriteSettings()
	sf.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: block(senc, ":status", "200")})
	sf.WriteData(1, true, []byte("hello"))
	io.send(srv, sb.Bytes())
	inFlight(1, "the first stream's response")
	sb.Reset()
	// A stream whose frame header and block arrive cut at odd places (the kernel keeps the
	// header's first bytes for the next read), then one the client resets before its answer.
	get(5, "/h2/split")
	whole := append([]byte(nil), cb.Bytes()...)
	for _, piece := range [][]byte{whole[:5], whole[5:12], whole[12:]} {
		cb.Reset()
		cb.Write(piece)
		write()
	}
	inFlight(2, "a stream read in three pieces")
	sf.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, EndHeaders: true, EndStream: true, BlockFragment: block(senc, ":status", "404")})
	io.send(srv, sb.Bytes())
	sb.Reset()
	inFlight(1, "its answer")
	get(7, "/h2/cancelled")
	write()
	inFlight(2, "another stream's HEADERS")
	cf.WriteRSTStream(7, http2.ErrCodeCancel)
	write()
	inFlight(1, "the client's RST_STREAM")
	unix.Close(srv)
	unix.Close(c)
	c, srv = tcpConnect(t, ln)
	unix.Write(c, []byte("GET /after HTTP/1.1\r\n\r\n"))
	if _, err := io.recv(srv, buf); err != nil {
		t.Fatal(err)
	}
	io.send(srv, []byte("HTTP/1.1 200 OK\r\n\r\n"))
	unix.Close(srv)
	unix.Close(c)
	got := rec.requests(t, 3*time.Second)
	inFlight(0, "the connections' ends")
	var ends []events.Event
	d := h2.New(func(ev *events.Event) {
		e := *ev
		e.Line = append([]byte(nil), ev.Line...)
		ends = append(ends, e)
	})
	var h1 []events.Event
	for i := range got {
		switch got[i].Kind {
		case events.KindH2:
			d.Handle(&got[i])
		case events.KindReqEnd:
			h1 = append(h1, got[i])
		}
	}
	if len(h1) != 1 || string(h1[0].Line) != "GET /after" || h1[0].Status != 200 {
		t.Errorf("HTTP/1 ends %+v, want GET /after, 200", h1)
	}
	if len(ends) != 3 || string(ends[0].Line) != "GET /h2/x" || ends[0].Status != 200 ||
		string(ends[1].Line) != "GET /h2/split" || ends[1].Status != 404 ||
		string(ends[2].Line) != "GET /h2/open" || ends[2].Status != 0 {
		t.Fatalf("HTTP/2 ends %+v, want GET /h2/x 200, GET /h2/split 404, then GET /h2/open unanswered at the close (the cancelled stream not counted)", ends)
	}
	if ends[0].BytesOut == 0 || ends[0].LastWriteNS < ends[0].StartNS {
		t.Errorf("first stream: %d bytes out, start %d, last write %d", ends[0].BytesOut, ends[0].StartNS, ends[0].LastWriteNS)
	}
}
