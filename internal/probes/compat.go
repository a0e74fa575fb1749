package probes

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
)

// Objects: which of the two builds of bpf/gpe.bpf.c Load loads (gen.go).
const (
	// ObjectModern is the object built as is: for kernels with every helper it calls (5.17+).
	ObjectModern = "modern"
	// ObjectCompat is the object built with -DGPE_COMPAT: bounded loops, the exiting worker's
	// fds instead of a walk of the tables, the task read with CO-RE, no atomic fetch-and-add or compare-and-swap
	// (every TCP connection in conns, request ids counted per CPU). For kernels from 5.10.
	ObjectCompat = "compat"
)

// modernHelpers are the helpers the modern object calls that 5.10 lacks; the kernels that have
// them all (5.17 upstream) have the atomic fetch-and-add and compare-and-swap it uses too (5.12).
var modernHelpers = []asm.BuiltinFunc{
	asm.FnGetCurrentTaskBtf, // 5.11
	asm.FnForEachMapElem,    // 5.13
	asm.FnTaskPtRegs,        // 5.15
	asm.FnLoop,              // 5.17
}

// chooseObject is ObjectModern if the kernel lets a tracing program (the tracepoint type: every
// kernel gpe-ebpf runs on loads those) call every one of modernHelpers, else ObjectCompat. has
// is features.HaveProgramHelper; an error other than "not supported" is returned.
func chooseObject(has func(ebpf.ProgramType, asm.BuiltinFunc) error) (string, error) {
	for _, fn := range modernHelpers {
		err := has(ebpf.TracePoint, fn)
		if errors.Is(err, ebpf.ErrNotSupported) {
			return ObjectCompat, nil
		}
		if err != nil {
			return "", fmt.Errorf("probe the kernel for %v: %w", fn, err)
		}
	}
	return ObjectModern, nil
}

// loadObject is the CollectionSpec of object (chooseObject).
func loadObject(object string) (*ebpf.CollectionSpec, error) {
	if object == ObjectCompat {
		return loadGpeCompat()
	}
	return loadGpe()
}

// haveAttachCookie says whether the TLS uprobes can tell their functions apart
// (bpf_get_attach_cookie, Linux 5.15): without it, Load leaves TLS off.
func haveAttachCookie() (bool, error) {
	err := features.HaveProgramHelper(ebpf.TracePoint, asm.FnGetAttachCookie)
	if errors.Is(err, ebpf.ErrNotSupported) {
		return false, nil
	}
	return err == nil, err
}
