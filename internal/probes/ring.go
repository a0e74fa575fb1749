package probes

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"
)

// recordReader is what Read needs of the ring buffer: *ringbuf.Reader, or records a test
// hands out (as Beyla's ringBufReader), so that the pacing, the Unix sweep and the ends it adds
// are tested without root. ReadInto returns os.ErrDeadlineExceeded when the deadline passes
// with no record, and ringbuf.ErrClosed after Close.
type recordReader interface {
	ReadInto(*ringbuf.Record) error
	SetDeadline(time.Time)
	Close() error
}

// errEmpty says the ring buffer held no record (see ring.next).
var errEmpty = errors.New("ring buffer empty")

// ring drains the ring buffer at the pace of Config (WakeupBytes, PollInterval): the records,
// one at a time, and nothing else.
//
// With batched wake-ups (WakeupBytes > 0) it never waits in a blocking syscall: it drains what
// the ring holds with a non-blocking poll, then sleeps on a Go timer for PollInterval (a tenth
// of it after a drain of a quarter of the ring or more), and the kernel side never asks for a
// wake-up (each was an interrupt the CPU sent itself). A thread parked in epoll_wait holding a
// P kept Go's sysmon waking every 20 µs after each long wait (about a third of gpe-ebpf's CPU
// at saturation, perf); a timer sleep releases the P. Without batching, it waits for the
// kernel's wake-up, polling every PollInterval so that no record can wait for a wake-up that
// never comes.
type ring struct {
	r          recordReader
	rec        ringbuf.Record // the record last read
	poll       time.Duration  // Config.PollInterval
	batched    bool           // Config.WakeupBytes > 0
	timer      *time.Timer    // batched mode: when to look at the ring again
	closed     chan struct{}  // closed by close, so a sleep on the timer returns
	once       sync.Once
	burst      uint64 // bytes read since the last sleep
	burstBytes uint64 // a drain of this many bytes (a quarter of the ring) is a burst
}

// newRing paces r, the reader of a ring buffer of size bytes.
func newRing(r recordReader, cfg Config, size uint32) *ring {
	g := &ring{r: r, poll: cfg.PollInterval, batched: cfg.WakeupBytes > 0, closed: make(chan struct{}), burstBytes: uint64(size) / 4}
	if g.batched {
		// A deadline in the past makes every wait a non-blocking poll (see next).
		r.SetDeadline(time.Unix(1, 0))
		g.timer = time.NewTimer(g.poll)
		g.timer.Stop()
	}
	return g
}

// next reads the next record into rec. It returns errEmpty when the ring holds none (batched)
// or none came within PollInterval, and ErrClosed after close.
func (g *ring) next() error {
	if !g.batched {
		g.r.SetDeadline(time.Now().Add(g.poll))
	}
	err := g.r.ReadInto(&g.rec)
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errEmpty
	case errors.Is(err, ringbuf.ErrClosed):
		return ErrClosed
	case err != nil:
		return fmt.Errorf("read ring buffer: %w", err)
	}
	g.burst += uint64(len(g.rec.RawSample))
	return nil
}

// pause follows an empty look (errEmpty): batched, it sleeps until the next look; else next
// has waited already. It returns ErrClosed when close is called meanwhile.
func (g *ring) pause() error {
	if !g.batched {
		return nil
	}
	wait := g.poll
	if g.burst >= g.burstBytes {
		wait /= 10
	}
	g.burst = 0
	g.timer.Reset(wait)
	select {
	case <-g.closed:
		return ErrClosed
	case <-g.timer.C:
		return nil
	}
}

// close ends a sleep in pause and closes the reader, so a blocked next returns.
func (g *ring) close() error {
	g.once.Do(func() {
		close(g.closed)
		if g.timer != nil {
			g.timer.Stop()
		}
	})
	return g.r.Close()
}
