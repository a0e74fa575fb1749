package h2

import (
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// MaxConns bounds the connections followed at once: a connection whose end record was lost
// would otherwise stay forever. Past it, the oldest connection id is forgotten.
const MaxConns = 16384

// maxStreams bounds the streams a connection keeps waiting for their end.
const maxStreams = 1024

// pushPromise is the frame type whose header block the kernel forwards besides HEADERS and
// CONTINUATION: a server push's header block goes through the server's HPACK table too.
const pushPromise = 5

// hpackTableSize is the dynamic table size both ends start with (SETTINGS_HEADER_TABLE_SIZE's
// default). An end that announces a larger one lets the other's encoder send a size update up to
// it; the SETTINGS frames are not forwarded, so any update up to hpackTableMax is followed.
const (
	hpackTableSize = 4096
	hpackTableMax  = 64 << 10
)

// maxBlock bounds a header block gathered from CONTINUATION frames: past it the block is cut
// (and the table of its direction broken), so a peer cannot make this grow without end.
const maxBlock = 64 << 10

type connKey struct{ tgid, fd, id uint32 }

// stream is what is known of one HTTP/2 stream, until it ends.
type stream struct {
	line     string // "METHOD /path", cut like HTTP/1's; "" if the request's headers were not decodable
	status   uint16 // the final :status, 0 until written
	start    uint64 // the client's HEADERS read
	last     uint64 // the worker's last frame on the stream
	in, out  uint64 // header block and DATA payload bytes read and written
	answered bool   // the worker wrote its response headers
}

// side is one direction of a connection: its HPACK table and the header block being gathered.
type side struct {
	dec     *hpack.Decoder
	broken  bool   // a header block was lost or cut: the dynamic table is not known any more
	frame   []byte // the current HEADERS/CONTINUATION/PUSH_PROMISE payload, as far as it came
	block   []byte // the header block so far (frames with END_HEADERS not seen yet)
	stream  uint32 // the block's stream
	typ     uint8  // the block's first frame type
	endStr  bool   // that frame had END_STREAM
	cut     bool   // a piece of the block is missing or truncated
	gap     bool   // a piece of the current frame is missing: nothing more of it is kept
	started bool   // a block is being gathered
	fields  []hpack.HeaderField
}

type conn struct {
	sides   [2]side // 0: read from the client, 1: written by the worker
	streams map[uint32]*stream
	lost    bool // the kernel lost its place: nothing more is known of the connection
	order   uint64
}

// Decoder decodes HTTP/2 records per connection and direction. Not safe for concurrent use:
// the agent's read loop owns it.
type Decoder struct {
	conns map[connKey]*conn
	next  uint64
	ev    events.Event // the KindReqEnd handed to emit, reused
	emit  func(*events.Event)
}

// New returns a Decoder that hands each stream's end to emit, as a KindReqEnd event (valid
// during the call only).
func New(emit func(*events.Event)) *Decoder {
	return &Decoder{conns: map[connKey]*conn{}, emit: emit}
}

// Conns is the number of connections followed.
func (d *Decoder) Conns() int { return len(d.conns) }

// Forget drops the connections of process tgid (it exited: its ends were sent before its EXIT).
func (d *Decoder) Forget(tgid uint32) {
	for k := range d.conns {
		if k.tgid == tgid {
			delete(d.conns, k)
		}
	}
}

// Handle takes one KindH2 event.
func (d *Decoder) Handle(ev *events.Event) {
	h := &ev.H2
	k := connKey{ev.TGID, ev.FD, h.Conn}
	c := d.conns[k]
	if h.Type == events.H2Close {
		if c != nil {
			d.closeConn(ev, c, h.Reason)
			delete(d.conns, k)
		}
		return
	}
	if c == nil {
		c = d.newConn(k)
	}
	if h.Type == events.H2Lost {
		c.lost = true
		return
	}
	if c.lost {
		return
	}
	dir := 0
	if h.Written {
		dir = 1
	}
	switch h.Type {
	case events.H2Data:
		s := c.streams[h.Stream]
		if s == nil {
			return
		}
		if h.Written {
			s.out += uint64(h.FrameLen)
			s.last = ev.TS
			if h.Flags&events.H2FlagEndStream != 0 {
				d.end(ev, c, h.Stream, s, events.EndNext)
			}
		} else {
			s.in += uint64(h.FrameLen)
		}
	case events.H2RSTStream:
		s := c.streams[h.Stream]
		if s == nil {
			return
		}
		if !s.answered && !h.Written {
			// The client cancelled the stream before its answer: not a request the worker
			// failed, and not one it answered; not counted (it was in flight until now).
			delete(c.streams, h.Stream)
			return
		}
		d.end(ev, c, h.Stream, s, events.EndNext)
	case events.H2Headers, events.H2Continuation, pushPromise:
		d.piece(ev, c, &c.sides[dir], dir)
	}
}

func (d *Decoder) newConn(k connKey) *conn {
	if len(d.conns) >= MaxConns {
		var oldest connKey
		var o uint64 = ^uint64(0)
		for ck, c := range d.conns {
			if c.order < o {
				oldest, o = ck, c.order
			}
		}
		delete(d.conns, oldest)
	}
	d.next++
	c := &conn{streams: map[uint32]*stream{}, order: d.next}
	for i := range c.sides {
		s := &c.sides[i]
		s.dec = hpack.NewDecoder(hpackTableSize, func(f hpack.HeaderField) { s.fields = append(s.fields, f) })
		s.dec.SetAllowedMaxDynamicTableSize(hpackTableMax)
	}
	d.conns[k] = c
	return c
}

// piece takes a piece of a header block frame's payload; a complete frame joins its block, and
// a complete block (END_HEADERS) is decoded.
func (d *Decoder) piece(ev *events.Event, c *conn, s *side, dir int) {
	h := &ev.H2
	if h.Off == 0 {
		s.frame, s.gap = s.frame[:0], false
	} else if int(h.Off) != len(s.frame) {
		s.gap = true // a piece in between is missing
	}
	if h.Trunc || s.gap {
		s.cut = true
	}
	if !s.gap {
		// A truncated piece's first bytes are right: an empty table may still read a
		// field or two of them.
		s.frame = append(s.frame, h.Frag...)
	}
	if uint64(h.Off)+uint64(h.Piece) < uint64(h.FrameLen) {
		return // more of this frame in the next read or write
	}
	if !s.started || h.Type != events.H2Continuation {
		s.started, s.stream, s.typ = true, h.Stream, h.Type
		s.endStr = h.Flags&events.H2FlagEndStream != 0
		s.block = s.block[:0]
		if h.Type == events.H2Headers && dir == 0 {
			d.open(ev, c, h.Stream)
		}
	}
	if frag, ok := fragment(h.Type, h.Flags, s.frame); ok && !s.gap && len(s.block)+len(frag) <= maxBlock {
		s.block = append(s.block, frag...)
	} else {
		s.cut = true
	}
	if st := c.streams[s.stream]; st != nil {
		if dir == 0 {
			st.in += uint64(h.FrameLen)
		} else {
			st.out += uint64(h.FrameLen)
			st.last = ev.TS
		}
	}
	if h.Flags&events.H2FlagEndHeaders == 0 {
		return
	}
	d.block(ev, c, s, dir)
	s.started, s.cut = false, false
}

// fragment is the header block fragment of a frame's payload: without its padding and, for
// HEADERS, its priority fields; for PUSH_PROMISE, without the promised stream id.
func fragment(typ, flags uint8, p []byte) ([]byte, bool) {
	if typ == events.H2Continuation {
		return p, true
	}
	pad := 0
	if flags&events.H2FlagPadded != 0 {
		if len(p) < 1 {
			return nil, false
		}
		pad, p = int(p[0]), p[1:]
	}
	skip := 0
	if typ == events.H2Headers && flags&events.H2FlagPriority != 0 {
		skip = 5
	}
	if typ == pushPromise {
		skip = 4
	}
	if len(p) < skip+pad {
		return nil, false
	}
	return p[skip : len(p)-pad], true
}

// open starts stream id, opened by the client's HEADERS read at ev.TS.
func (d *Decoder) open(ev *events.Event, c *conn, id uint32) {
	if _, ok := c.streams[id]; ok || len(c.streams) >= maxStreams {
		return
	}
	c.streams[id] = &stream{start: ev.TS}
}

// block decodes a complete header block of direction dir through that direction's table.
func (d *Decoder) block(ev *events.Event, c *conn, s *side, dir int) {
	s.fields = s.fields[:0]
	ok := false
	if s.cut {
		// The table of this direction cannot be known any more: every later block of it is
		// read with an empty table, which decodes only what does not refer to it.
		s.broken = true
	}
	if !s.broken {
		_, err := s.dec.Write(s.block)
		if err == nil {
			err = s.dec.Close()
		}
		ok = err == nil
		if !ok {
			s.broken = true
		}
	}
	if !ok {
		// What an empty table decodes (the static table and literals, up to the first field
		// that refers to the lost dynamic table): never a wrong value, only fewer.
		s.fields = s.fields[:0]
		fresh := hpack.NewDecoder(hpackTableSize, func(f hpack.HeaderField) { s.fields = append(s.fields, f) })
		fresh.Write(s.block) //nolint:errcheck // the fields before an error are right
	}
	if s.typ == pushPromise {
		return // the table is kept; a push is no request of the client's
	}
	st := c.streams[s.stream]
	if st == nil {
		return
	}
	if dir == 0 {
		if ok && st.line == "" {
			st.line = requestLine(s.fields)
		}
		return
	}
	if !st.answered {
		// The response headers: a final :status answers the stream, an interim one (1xx)
		// does not; one that could not be decoded answers it with a status not known.
		var code uint16
		for _, f := range s.fields {
			if f.Name == ":status" {
				code = parseStatus(f.Value)
				break
			}
		}
		if code == 0 || code >= 200 {
			st.answered, st.status = true, code
		}
	}
	if s.endStr {
		d.end(ev, c, s.stream, st, events.EndNext)
	}
}

// requestLine is "METHOD /path" from a request's pseudo-headers, the path cut before its query
// or fragment as the kernel cuts HTTP/1's; "" without a method and path.
func requestLine(fields []hpack.HeaderField) string {
	var method, path string
	for _, f := range fields {
		switch f.Name {
		case ":method":
			method = f.Value
		case ":path":
			path = f.Value
		}
	}
	if method == "" || path == "" {
		return ""
	}
	if i := strings.IndexAny(path, "?#"); i >= 0 {
		path = path[:i]
	}
	line := method + " " + path
	if len(line) > events.LineMax {
		line = line[:events.LineMax]
	}
	return line
}

func parseStatus(v string) uint16 {
	if len(v) != 3 {
		return 0
	}
	var n uint16
	for i := 0; i < 3; i++ {
		if v[i] < '0' || v[i] > '9' {
			return 0
		}
		n = n*10 + uint16(v[i]-'0')
	}
	if n < 100 || n > 599 {
		return 0
	}
	return n
}

// end hands stream id's end to emit and forgets it. A stream whose response headers could not
// be decoded (no :status with the lost table) is not counted: its status is not known, and
// booking it as unanswered would be a false failure.
func (d *Decoder) end(ev *events.Event, c *conn, id uint32, s *stream, reason events.EndReason) {
	delete(c.streams, id)
	if s.answered && s.status == 0 {
		return
	}
	e := &d.ev
	*e = events.Event{Kind: events.KindReqEnd, TGID: ev.TGID, TS: ev.TS, FD: ev.FD, StartNS: s.start,
		LastWriteNS: s.last, BytesIn: s.in, BytesOut: s.out, Status: s.status, Reason: reason}
	e.SetLine([]byte(s.line))
	d.emit(e)
}

// closeConn ends the streams still open on a connection that ended, as HTTP/1's close ends its
// request: answered ones with their status, the others as not answered (the worker's exit
// says why, reason EndExit). After the kernel lost its place, only answered ones are counted:
// an answer may have gone unseen.
func (d *Decoder) closeConn(ev *events.Event, c *conn, reason events.EndReason) {
	for id, s := range c.streams {
		if !s.answered && c.lost {
			continue
		}
		d.end(ev, c, id, s, reason)
	}
}
