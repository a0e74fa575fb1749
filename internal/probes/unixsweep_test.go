package probes

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// sweepAt is a sweep of conns through fs whose ENDs are stamped 777.
func sweepAt(conns *fakeConns, p fakeProc) *unixSweep {
	return &unixSweep{conns: conns, proc: p.fs, clock: func() uint64 { return 777 }}
}

// TestUnixSweep: a Unix connection whose fd no longer names its socket is forgotten, and the
// request in flight on it ends (reason close) with the kernel's figures; nothing else is.
func TestUnixSweep(t *testing.T) {
	const pid, fd, ino = 100, 7, 9001
	long := "GET /" + strings.Repeat("a", 300)
	tests := []struct {
		name     string
		conn     gpeConn
		fds      map[uint32]string // the process's fds; nil: the process is gone
		replaced bool              // another connection took the entry between the two looks
		wantEnd  string            // the END's line; "" for no END
		wantKept bool              // the entry stays in the table
	}{
		{name: "fd still names the socket", conn: unixConn(pid, fd, ino, connResponding, 404, "GET /x"),
			fds: map[uint32]string{fd: "socket:[9001]"}, wantKept: true},
		{name: "fd closed after the status line", conn: unixConn(pid, fd, ino, connResponding, 404, "GET /over/unix"),
			fds: map[uint32]string{}, wantEnd: "GET /over/unix"},
		{name: "fd closed while reading", conn: unixConn(pid, fd, ino, connReading, 0, "POST /upload"),
			fds: map[uint32]string{}, wantEnd: "POST /upload"},
		{name: "fd names another socket now", conn: unixConn(pid, fd, ino, connResponding, 200, "GET /y"),
			fds: map[uint32]string{fd: "socket:[9002]"}, wantEnd: "GET /y"},
		{name: "fd names a pipe now", conn: unixConn(pid, fd, ino, connResponding, 200, "GET /z"),
			fds: map[uint32]string{fd: "pipe:[9001]"}, wantEnd: "GET /z"},
		{name: "line longer than the kernel keeps", conn: unixConn(pid, fd, ino, connResponding, 200, long[:events.LineMax]),
			fds: map[uint32]string{}, wantEnd: long[:events.LineMax]},
		{name: "closed with no request in flight", conn: unixConn(pid, fd, ino, 0, 200, "GET /done"),
			fds: map[uint32]string{}},
		{name: "process gone: its exit ended its requests", conn: unixConn(pid, fd, ino, connResponding, 200, "GET /x")},
		{name: "a new connection took the entry", conn: unixConn(pid, fd, ino, connResponding, 200, "GET /x"),
			fds: map[uint32]string{}, replaced: true, wantKept: true},
		{name: "a TCP connection is the kernel's to end", conn: func() gpeConn {
			c := unixConn(pid, fd, ino, connResponding, 200, "GET /tcp")
			c.UnixSock = 0
			return c
		}(), fds: map[uint32]string{}, wantKept: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newFakeProc(t)
			if tt.fds != nil {
				p.process(pid)
			}
			for n, target := range tt.fds {
				p.fd(pid, n, target)
			}
			const sk = 0xffff0001
			conns := &fakeConns{m: map[uint64]gpeConn{sk: tt.conn}}
			if tt.replaced {
				c := tt.conn
				c.Seq++
				conns.replace = map[uint64]gpeConn{sk: c}
			}
			got := sweepAt(conns, p).run(time.Now(), nil)

			if _, kept := conns.m[sk]; kept != tt.wantKept {
				t.Errorf("entry kept: %v, want %v", kept, tt.wantKept)
			}
			if tt.wantEnd == "" {
				if len(got) != 0 {
					t.Fatalf("got %d ENDs, want none: %+v", len(got), got)
				}
				return
			}
			if len(got) != 1 {
				t.Fatalf("got %d ENDs, want 1: %+v", len(got), got)
			}
			want := events.Event{Kind: events.KindReqEnd, TGID: pid, TS: 777, FD: fd, Seq: 3, StartNS: 10,
				LastWriteNS: 20, EstablishedNS: 5, BytesIn: 100, BytesOut: 200, Status: tt.conn.Status,
				Reason: events.EndClose, Flags: events.FlagClientGone}
			want.SetLine([]byte(tt.wantEnd))
			if end := got[0]; !reflect.DeepEqual(end, want) {
				t.Errorf("END %+v line %q,\nwant %+v line %q", end, end.Line, want, want.Line)
			}
		})
	}
}

// TestUnixSweepInterval: the sweep looks at the table at most every SweepInterval.
func TestUnixSweepInterval(t *testing.T) {
	p := newFakeProc(t)
	p.process(100)
	conns := &fakeConns{m: map[uint64]gpeConn{1: unixConn(100, 7, 9001, connResponding, 200, "GET /a")}}
	s := sweepAt(conns, p)
	t0 := time.Now()
	if got := s.run(t0, nil); len(got) != 1 {
		t.Fatalf("first sweep: %d ENDs, want 1", len(got))
	}
	conns.m[2] = unixConn(100, 8, 9002, connResponding, 200, "GET /b")
	if got := s.run(t0.Add(SweepInterval/2), nil); len(got) != 0 || len(conns.m) != 1 {
		t.Fatalf("sweep within the interval: %d ENDs and %d entries, want none and the entry left", len(got), len(conns.m))
	}
	if got := s.run(t0.Add(SweepInterval), nil); len(got) != 1 || string(got[0].Line) != "GET /b" || len(conns.m) != 0 {
		t.Fatalf("sweep after the interval: %+v and %d entries, want the END of GET /b and none left", got, len(conns.m))
	}
}
