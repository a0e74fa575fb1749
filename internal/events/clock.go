package events

import (
	"time"

	"golang.org/x/sys/unix"
)

// MonotonicNow is CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns and so of
// every time in an Event.
func MonotonicNow() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// MonotonicToWall returns a converter from CLOCK_MONOTONIC nanoseconds to wall-clock time,
// anchored now.
func MonotonicToWall() func(uint64) time.Time {
	wall := time.Now()
	mono := MonotonicNow()
	return func(ns uint64) time.Time {
		return wall.Add(time.Duration(int64(ns) - int64(mono)))
	}
}
