package probes

import (
	"errors"
	"os"
	"strconv"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
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

// sweepUnix queues an END for every request on a closed Unix connection and forgets every
// closed Unix connection. It runs in the reader, between two drains of the ring buffer.
func (p *Probes) sweepUnix(now time.Time) {
	if now.Sub(p.lastSweep) < SweepInterval {
		return
	}
	p.lastSweep = now
	var (
		sk        uint64 // the connection's struct sock *, its key
		c         gpeConn
		closed    []uint64
		seqs      []uint32
		ended     []bool
		closedIno []uint32
	)
	it := p.objs.Conns.Iterate()
	for it.Next(&sk, &c) {
		if c.UnixSock == 0 {
			continue
		}
		switch fdState(c.Owner.Tgid, c.Owner.Fd, c.Ino) {
		case fdOpen:
			continue
		case fdProcessGone:
			// Its exit ended its requests; the entry only has to go.
			c.State = 0
		}
		closed = append(closed, sk)
		seqs = append(seqs, c.Seq)
		closedIno = append(closedIno, c.Ino)
		ended = append(ended, c.State == connReading || c.State == connResponding)
	}
	// An error (the map changed under the iteration) only delays the rest to the next sweep.
	_ = it.Err()
	for i, sk := range closed {
		if err := p.objs.Conns.LookupAndDelete(sk, &c); err != nil {
			continue // gone meanwhile: the kernel ended or replaced it
		}
		if c.Seq != seqs[i] || c.Ino != closedIno[i] {
			// A new connection took the socket's memory between the two looks: put it back.
			_ = p.objs.Conns.Update(sk, &c, ebpf.UpdateNoExist)
			continue
		}
		if !ended[i] || (c.State != connReading && c.State != connResponding) {
			continue
		}
		ev := Event{
			Kind: KindReqEnd, TGID: c.Owner.Tgid, TS: monotonicNS(),
			FD: c.Owner.Fd, Seq: c.Seq, StartNS: c.StartNs, LastWriteNS: c.LastWriteNs,
			EstablishedNS: c.EstNs, BytesIn: c.BytesIn, BytesOut: c.BytesOut, Status: c.Status,
			Reason: EndClose, Flags: Flags(c.Flags),
		}
		n := min(int(c.HeadLen), LineMax)
		for i := 0; i < n; i++ {
			ev.line[i] = byte(c.Line[i])
		}
		ev.Line = ev.line[:n] // only its length is kept: Read points it at the copy it returns
		p.synth = append(p.synth, ev)
	}
}

type fdStatus int

const (
	fdOpen        fdStatus = iota // the fd still names the socket
	fdClosed                      // closed, or it names something else now
	fdProcessGone                 // the process exited
)

// fdState looks at what /proc/<tgid>/fd/<fd> links to, against socket inode ino.
func fdState(tgid, fd, ino uint32) fdStatus {
	dir := "/proc/" + strconv.FormatUint(uint64(tgid), 10)
	target, err := os.Readlink(dir + "/fd/" + strconv.FormatUint(uint64(fd), 10))
	if err != nil {
		if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
			return fdProcessGone
		}
		return fdClosed
	}
	if target == "socket:["+strconv.FormatUint(uint64(ino), 10)+"]" {
		return fdOpen
	}
	return fdClosed
}

// monotonicNS is CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
func monotonicNS() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return uint64(ts.Nano())
}
