package main

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
)

// emptyArm is the arm that attaches, instead of a gpe-ebpf, a program that returns at once to
// each tracepoint socket mode runs on per request (floorHooks). It tracks nothing and reads
// nothing: what it costs is the price of the hooks themselves (the tracepoint's dispatch,
// the program call), the floor under any program on them.
const emptyArm = "empty-hooks"

// floorHooks are the BTF tracepoints a request runs socket mode's programs on (with
// --queue-wait, its default): every socket read and write, and every TCP state change.
var floorHooks = []string{"sock_recv_length", "sock_send_length", "inet_sock_set_state"}

// emptyHooks attaches the empty programs; the returned func detaches and unloads them.
func emptyHooks() (func(), error) {
	var closers []func() error
	undo := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	for _, name := range floorHooks {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name:         "gpe_bench_empty",
			Type:         ebpf.Tracing,
			AttachType:   ebpf.AttachTraceRawTp,
			AttachTo:     name,
			License:      "GPL",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		})
		if err != nil {
			undo()
			return nil, fmt.Errorf("load an empty program for %s: %w", name, err)
		}
		closers = append(closers, prog.Close)
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			undo()
			return nil, fmt.Errorf("attach an empty program to %s: %w", name, err)
		}
		closers = append(closers, l.Close)
	}
	return undo, nil
}
