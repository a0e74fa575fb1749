package main

import "fmt"

// target is a figure's goal: its text in the table and the test of the median.
type target struct {
	text string
	ok   func(float64) bool
}

func below(v float64) target { return target{fmt.Sprintf("≤ %g", v), atMost(v)} }
func above(v float64) target { return target{fmt.Sprintf("≥ %g", v), atLeast(v)} }

// targets are the goals of one hook mode. An empty target is a figure shown without a goal.
type targets struct {
	ratio, observer, bpf, dd, pingPong target
}

// targetsFor gives a hook mode its goals on this machine (issue 14): socket mode is meant
// to be nearly free for Gunicorn and for every other process; syscall mode, the fallback for
// kernels without the socket tracepoints, only has to bring the BPF time under 10 µs a
// request. A binary without --hooks runs its default, the socket hooks; socket-noqueue has
// socket mode's goals (the targets were set before the accept-queue hook existed).
func targetsFor(mode string) targets {
	if mode == "syscall" {
		return targets{bpf: below(10)}
	}
	return targets{ratio: above(0.98), observer: below(1), bpf: below(2), dd: below(1.01), pingPong: below(1.05)}
}
