package h2

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"strings"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// kernel replays what bpf/h2.h does with the bytes of one direction: it walks the frame
// headers of each call (a read or a write of the given size) and makes the records the kernel
// sends, fragments cut at events.H2FragMax.
type kernel struct {
	left, frameLen, stream uint32
	typ, flags             uint8
	fwd                    bool
	hdr                    []byte
}

func (k *kernel) call(b []byte, written bool, ts uint64, out []events.Event) []events.Event {
	rec := func() events.Event {
		ev := events.Event{Kind: events.KindH2, TGID: 7, FD: 9, TS: ts}
		ev.H2 = events.H2{Conn: 1, Stream: k.stream, FrameLen: k.frameLen, Type: k.typ, Flags: k.flags, Written: written}
		return ev
	}
	for len(b) > 0 {
		if k.left > 0 {
			take := min(int(k.left), len(b))
			if k.fwd {
				ev := rec()
				ev.H2.Off = k.frameLen - k.left
				ev.H2.Piece = uint32(take)
				l := min(take, events.H2FragMax)
				ev.H2.Frag = append([]byte(nil), b[:l]...)
				ev.H2.Trunc = l < take
				out = append(out, ev)
			}
			k.left -= uint32(take)
			b = b[take:]
			continue
		}
		need := 9 - len(k.hdr)
		l := min(need, len(b))
		k.hdr = append(k.hdr, b[:l]...)
		b = b[l:]
		if len(k.hdr) < 9 {
			break
		}
		h := k.hdr
		k.hdr = nil
		k.frameLen = uint32(h[0])<<16 | uint32(h[1])<<8 | uint32(h[2])
		k.left, k.typ, k.flags = k.frameLen, h[3], h[4]
		k.stream = binary.BigEndian.Uint32(h[5:]) & 0x7fffffff
		k.fwd = k.typ == 1 || k.typ == 9 || k.typ == 5
		if k.typ == 0 || k.typ == 3 || (k.fwd && k.frameLen == 0) {
			out = append(out, rec())
		}
	}
	return out
}

// peer writes frames of one side with its own HPACK encoder.
type peer struct {
	buf bytes.Buffer
	fr  *http2.Framer
	enc *hpack.Encoder
	hb  bytes.Buffer
}

func newPeer() *peer {
	p := &peer{}
	p.fr = http2.NewFramer(&p.buf, nil)
	p.enc = hpack.NewEncoder(&p.hb)
	return p
}

func (p *peer) block(kv ...string) []byte {
	p.hb.Reset()
	for i := 0; i < len(kv); i += 2 {
		p.enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return append([]byte(nil), p.hb.Bytes()...)
}

func (p *peer) headers(t *testing.T, sid uint32, end bool, kv ...string) {
	if err := p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: sid, BlockFragment: p.block(kv...), EndStream: end, EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
}

func (p *peer) data(t *testing.T, sid uint32, end bool, n int) {
	if err := p.fr.WriteData(sid, end, bytes.Repeat([]byte("x"), n)); err != nil {
		t.Fatal(err)
	}
}

// take returns the bytes written so far and forgets them.
func (p *peer) take() []byte {
	b := append([]byte(nil), p.buf.Bytes()...)
	p.buf.Reset()
	return b
}

// conv is one connection: the client's and the worker's frames, through a kernel each, in
// calls of at most chunk bytes, into a Decoder.
type conv struct {
	t      *testing.T
	cl, sv *peer
	kr, kw kernel
	chunk  int
	ts     uint64
	d      *Decoder
	got    []events.Event
}

func newConv(t *testing.T, chunk int) *conv {
	c := &conv{t: t, cl: newPeer(), sv: newPeer(), chunk: chunk}
	c.d = New(func(ev *events.Event) {
		e := *ev
		e.SetLine(ev.Line)
		c.got = append(c.got, e)
	})
	return c
}

// flush feeds what each side wrote since the last flush: the client's as reads, the worker's
// as writes.
func (c *conv) flush() {
	for _, side := range []struct {
		b       []byte
		k       *kernel
		written bool
	}{{c.cl.take(), &c.kr, false}, {c.sv.take(), &c.kw, true}} {
		b := side.b
		for len(b) > 0 {
			n := min(len(b), c.chunk)
			c.ts += 1000
			for _, ev := range side.k.call(b[:n], side.written, c.ts, nil) {
				c.d.Handle(&ev)
			}
			b = b[n:]
		}
	}
}

func (c *conv) close(reason events.EndReason) {
	ev := events.Event{Kind: events.KindH2, TGID: 7, FD: 9, TS: c.ts + 1}
	ev.H2 = events.H2{Conn: 1, Type: events.H2Close, Reason: reason}
	c.d.Handle(&ev)
}

func (c *conv) preface() {
	c.kr.left = 24 // the kernel skips the preface
	c.cl.buf.WriteString(http2.ClientPreface)
	c.cl.fr.WriteSettings()
	c.sv.fr.WriteSettings()
	c.flush()
}

type want struct {
	line    string
	status  uint16
	in, out uint64
}

func (c *conv) check(w ...want) {
	c.t.Helper()
	if len(c.got) != len(w) {
		c.t.Fatalf("%d ends, want %d: %+v", len(c.got), len(w), c.got)
	}
	for i, e := range c.got {
		if e.Kind != events.KindReqEnd || string(e.Line) != w[i].line || e.Status != w[i].status {
			c.t.Errorf("end %d: %q %d, want %q %d", i, e.Line, e.Status, w[i].line, w[i].status)
		}
		if w[i].in != 0 && (e.BytesIn != w[i].in || e.BytesOut != w[i].out) {
			c.t.Errorf("end %d: bytes %d in, %d out, want %d, %d", i, e.BytesIn, e.BytesOut, w[i].in, w[i].out)
		}
		if e.StartNS == 0 || (e.Status != 0 && e.LastWriteNS <= e.StartNS) {
			c.t.Errorf("end %d: start %d, last write %d", i, e.StartNS, e.LastWriteNS)
		}
	}
}

func req(method, path string) []string {
	return []string{":method", method, ":scheme", "http", ":path", path, ":authority", "localhost", "user-agent", "curl/8"}
}

func TestStreams(t *testing.T) {
	for _, chunk := range []int{1 << 16, 7, 1} {
		t.Run("chunk"+itoa(chunk), func(t *testing.T) {
			c := newConv(t, chunk)
			c.preface()
			// Two requests on the same connection: the second refers to the first's entries
			// in the dynamic table.
			for i, path := range []string{"/a?q=1", "/a?q=2", "/b"} {
				sid := uint32(2*i + 1)
				c.cl.headers(t, sid, true, req("GET", path)...)
				c.flush()
				c.sv.headers(t, sid, false, ":status", "200", "content-type", "text/plain")
				c.sv.data(t, sid, false, 10)
				c.sv.data(t, sid, true, 5)
				c.flush()
			}
			// A POST with a body, answered 404 after the body.
			c.cl.headers(t, 7, false, req("POST", "/form")...)
			c.cl.data(t, 7, true, 100)
			c.flush()
			c.sv.headers(t, 7, true, ":status", "404")
			c.flush()
			c.close(events.EndClose)
			c.check(want{line: "GET /a", status: 200}, want{line: "GET /a", status: 200}, want{line: "GET /b", status: 200},
				want{line: "POST /form", status: 404})
			if c.got[0].BytesOut <= 15 || c.got[3].BytesIn <= 100 {
				t.Errorf("bytes out %d (want > 15), POST bytes in %d (want > 100)", c.got[0].BytesOut, c.got[3].BytesIn)
			}
		})
	}
}

func itoa(n int) string {
	var b []byte
	for n > 0 || len(b) == 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	return string(b)
}

func TestInterleaved(t *testing.T) {
	c := newConv(t, 1<<16)
	c.preface()
	c.cl.headers(t, 1, true, req("GET", "/slow")...)
	c.cl.headers(t, 3, true, req("GET", "/fast")...)
	c.flush()
	c.sv.headers(t, 3, false, ":status", "200")
	c.sv.headers(t, 1, false, ":status", "500")
	c.sv.data(t, 3, true, 3)
	c.sv.data(t, 1, true, 3)
	c.flush()
	c.check(want{line: "GET /fast", status: 200}, want{line: "GET /slow", status: 500})
}

// A header block longer than a record carries breaks the client's table: that request and
// every later one of the connection are OTHER / unknown (an empty line), never wrong; the
// responses' table is whole, their statuses count.
func TestTruncatedBlock(t *testing.T) {
	c := newConv(t, 1<<16)
	c.preface()
	c.cl.headers(t, 1, true, req("GET", "/ok")...)
	c.flush()
	c.sv.headers(t, 1, true, ":status", "200")
	big := append(req("GET", "/big"), "cookie", strings.Repeat("c", 2*events.H2FragMax))
	c.cl.headers(t, 3, true, big...)
	c.flush()
	c.sv.headers(t, 3, true, ":status", "200")
	c.cl.headers(t, 5, true, req("GET", "/ok")...)
	c.flush()
	c.sv.headers(t, 5, true, ":status", "204")
	c.flush()
	c.check(want{line: "GET /ok", status: 200}, want{line: "", status: 200}, want{line: "", status: 204})
}

// A response header block cut: its status is read from what an empty table decodes; a status
// that cannot be decoded makes the stream not counted, never a failure.
func TestTruncatedResponse(t *testing.T) {
	c := newConv(t, 1<<16)
	c.preface()
	c.cl.headers(t, 1, true, req("GET", "/x")...)
	c.flush()
	c.sv.headers(t, 1, true, ":status", "302", "location", strings.Repeat("l", 2*events.H2FragMax))
	c.flush()
	c.cl.headers(t, 3, true, req("GET", "/x")...)
	c.flush()
	// 302 again: the worker's encoder refers to its dynamic table entry, which is lost here.
	c.sv.headers(t, 3, true, ":status", "302")
	c.flush()
	c.cl.headers(t, 5, true, req("GET", "/y")...)
	c.flush()
	c.sv.headers(t, 5, true, ":status", "200")
	c.flush()
	c.check(want{line: "GET /x", status: 302}, want{line: "GET /y", status: 200})
}

// A stream the client resets before its answer is not counted, and not a failure; one the
// connection's close finds unanswered is (status 0), as HTTP/1's.
func TestResetAndClose(t *testing.T) {
	c := newConv(t, 1<<16)
	c.preface()
	c.cl.headers(t, 1, true, req("GET", "/cancelled")...)
	c.flush()
	c.cl.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	c.flush()
	c.cl.headers(t, 3, true, req("GET", "/hang")...)
	c.flush()
	c.close(events.EndClose)
	c.check(want{line: "GET /hang", status: 0})
	if c.d.Conns() != 0 {
		t.Errorf("%d connections after the close, want 0", c.d.Conns())
	}
}

// After the kernel lost its place, the streams not answered are not counted at the close.
func TestLost(t *testing.T) {
	c := newConv(t, 1<<16)
	c.preface()
	c.cl.headers(t, 1, true, req("GET", "/x")...)
	c.flush()
	ev := events.Event{Kind: events.KindH2, TGID: 7, FD: 9}
	ev.H2 = events.H2{Conn: 1, Type: events.H2Lost}
	c.d.Handle(&ev)
	c.close(events.EndClose)
	c.check()
}

// A block in CONTINUATION frames, and a padded HEADERS frame with priority.
func TestContinuationPadding(t *testing.T) {
	c := newConv(t, 5)
	c.preface()
	b := c.cl.block(req("GET", "/cont")...)
	c.cl.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: b[:4], EndStream: true})
	c.cl.fr.WriteContinuation(1, false, b[4:8])
	c.cl.fr.WriteContinuation(1, true, b[8:])
	c.flush()
	rb := c.sv.block(":status", "201")
	c.sv.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: rb, EndHeaders: true, EndStream: true,
		PadLength: 3, Priority: http2.PriorityParam{StreamDep: 0, Weight: 16}})
	c.flush()
	c.check(want{line: "GET /cont", status: 201})
}

// Garbage in place of frames (a walk out of step, a hostile peer) does not panic, and the
// connection is forgotten at its close.
func TestGarbage(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 50 {
		c := newConv(t, 1+i%13)
		c.preface()
		b := make([]byte, 4096)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		c.cl.buf.Write(b)
		c.sv.buf.Write(b[100:])
		c.flush()
		c.close(events.EndClose)
		if c.d.Conns() != 0 {
			t.Fatalf("%d connections after the close", c.d.Conns())
		}
	}
}
