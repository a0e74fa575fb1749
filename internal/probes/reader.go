package probes

import (
	"errors"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// sweepEvery is how many reads may pass between two looks at the clock for the Unix sweep
// while the ring buffer is never empty.
const sweepEvery = 4096

// reader is what Read returns events from: the ring's records, and before them the ENDs the
// Unix sweep made. The sweep runs when the ring is empty, and every sweepEvery reads when it
// never is, at most every SweepInterval.
type reader struct {
	ring      *ring
	sweep     unixSweep
	synth     []events.Event // ENDs of closed Unix connections, returned before the next record
	sinceLook int            // reads since the last sweep check
}

// read blocks until the next event and fills ev; it returns ErrClosed after the ring's close.
func (r *reader) read(ev *events.Event) error {
	for {
		if len(r.synth) > 0 {
			line := r.synth[0].Line
			*ev = r.synth[0]
			ev.SetLine(line)
			r.synth = append(r.synth[:0], r.synth[1:]...)
			return nil
		}
		if r.sinceLook++; r.sinceLook >= sweepEvery {
			r.sinceLook = 0
			r.synth = r.sweep.run(time.Now(), r.synth)
		}
		err := r.ring.next()
		if errors.Is(err, errEmpty) {
			r.synth = r.sweep.run(time.Now(), r.synth)
			if len(r.synth) > 0 {
				continue
			}
			if err := r.ring.pause(); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		return Decode(r.ring.rec.RawSample, ev)
	}
}
