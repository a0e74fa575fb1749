package probes

import (
	"errors"
	"time"

	"github.com/cilium/ebpf"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// A TCP connection's end is seen in the kernel (the tcp_destroy_sock tracepoint), but no
// hook sees a Unix socket close: only the next request on the same fd would end the request
// that was answered last. So the reader looks at the kernel's Unix connections every
// SweepInterval and ends, from the kernel's own figures, each one whose fd no longer names the
// socket it was adopted with.

// SweepInterval is how often the reader looks for Unix connections that were closed.
const SweepInterval = 500 * time.Millisecond

// Connection states (enum conn_state in bpf/gpe.bpf.c).
const (
	connReading    = 1
	connResponding = 2
)

// connTable is what the sweep needs of the kernel's connection table (the conns map, keyed by
// the connection's struct sock *): connMap, or entries a test made up.
type connTable interface {
	// each calls f with every entry. An error (the map changed under the iteration) only
	// delays the rest to the next sweep.
	each(f func(sk uint64, c *gpeConn)) error
	// take removes sk's entry and returns it in c; an error when it is gone.
	take(sk uint64, c *gpeConn) error
	// putBack adds c again under sk, unless sk has an entry by now.
	putBack(sk uint64, c *gpeConn) error
}

// connMap is the kernel's conns map as a connTable.
type connMap struct{ m *ebpf.Map }

func (t connMap) each(f func(sk uint64, c *gpeConn)) error {
	var (
		sk uint64
		c  gpeConn
	)
	it := t.m.Iterate()
	for it.Next(&sk, &c) {
		f(sk, &c)
	}
	return it.Err()
}

func (t connMap) take(sk uint64, c *gpeConn) error { return t.m.LookupAndDelete(sk, c) }

func (t connMap) putBack(sk uint64, c *gpeConn) error {
	return t.m.Update(sk, c, ebpf.UpdateNoExist)
}

// unixSweep finds the Unix connections that were closed, in a connTable, through the fds of
// /proc (proc.FS).
type unixSweep struct {
	conns connTable
	proc  proc.FS
	clock func() uint64 // the time of the ENDs it makes (events.MonotonicNow)
	last  time.Time     // of the last sweep
}

// closedConn is a Unix connection whose fd no longer names its socket, as the iteration saw it.
type closedConn struct {
	sk    uint64
	seq   uint32
	ino   uint32
	ended bool // a request was in flight on it: it gets an END
}

// run appends to out an END for every request on a Unix connection closed since the last
// sweep, and forgets every closed Unix connection. It does nothing within SweepInterval of the
// last sweep.
func (s *unixSweep) run(now time.Time, out []events.Event) []events.Event {
	if now.Sub(s.last) < SweepInterval {
		return out
	}
	s.last = now
	var c gpeConn
	for _, cc := range s.closed() {
		if err := s.conns.take(cc.sk, &c); err != nil {
			continue // gone meanwhile: the kernel ended or replaced it
		}
		if c.Seq != cc.seq || c.Ino != cc.ino {
			// A new connection took the socket's memory between the two looks: put it back.
			_ = s.conns.putBack(cc.sk, &c)
			continue
		}
		if cc.ended && inFlight(&c) {
			out = append(out, s.end(&c))
		}
	}
	return out
}

// closed lists the Unix connections whose fd no longer names their socket.
func (s *unixSweep) closed() []closedConn {
	var closed []closedConn
	// An error only delays the rest to the next sweep.
	_ = s.conns.each(func(sk uint64, c *gpeConn) {
		if c.UnixSock == 0 {
			return
		}
		ended := inFlight(c)
		switch fdState(s.proc, c.Owner.Tgid, c.Owner.Fd, c.Ino) {
		case fdOpen:
			return
		case fdProcessGone:
			// Its exit ended its requests; the entry only has to go.
			ended = false
		}
		closed = append(closed, closedConn{sk: sk, seq: c.Seq, ino: c.Ino, ended: ended})
	})
	return closed
}

// inFlight says whether the connection has a request the kernel has not ended.
func inFlight(c *gpeConn) bool {
	return c.State == connReading || c.State == connResponding
}

// end is the END of c's request, closed with its connection, from the kernel's figures.
func (s *unixSweep) end(c *gpeConn) events.Event {
	ev := events.Event{
		Kind: events.KindReqEnd, TGID: c.Owner.Tgid, TS: s.clock(),
		FD: c.Owner.Fd, Seq: c.Seq, StartNS: c.StartNs, LastWriteNS: c.LastWriteNs,
		EstablishedNS: c.EstNs, BytesIn: c.BytesIn, BytesOut: c.BytesOut, Status: c.Status,
		Reason: events.EndClose, Flags: events.Flags(c.Flags),
	}
	var line [events.LineMax]byte
	n := min(int(c.HeadLen), events.LineMax)
	for i := range n {
		line[i] = byte(c.Line[i])
	}
	ev.SetLine(line[:n])
	return ev
}

type fdStatus int

const (
	fdOpen        fdStatus = iota // the fd still names the socket
	fdClosed                      // closed, or it names something else now
	fdProcessGone                 // the process exited
)

// fdState looks at what fd of process tgid names, against socket inode ino.
func fdState(fs proc.FS, tgid, fd, ino uint32) fdStatus {
	got, err := fs.FDSocket(tgid, fd)
	switch {
	case errors.Is(err, proc.ErrNoProcess):
		return fdProcessGone
	case err == nil && ino != 0 && got == uint64(ino):
		return fdOpen
	}
	return fdClosed
}
