package probes

import (
	"errors"
	"fmt"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// TestChooseObject: the modern object only where the kernel has every helper it calls that
// 5.10 lacks; the compat one as soon as one is missing; a probe that fails otherwise is an
// error, not a guess.
func TestChooseObject(t *testing.T) {
	missing := func(gone asm.BuiltinFunc) func(ebpf.ProgramType, asm.BuiltinFunc) error {
		return func(pt ebpf.ProgramType, fn asm.BuiltinFunc) error {
			if pt != ebpf.TracePoint {
				t.Errorf("probed %v with program type %v, want %v", fn, pt, ebpf.TracePoint)
			}
			if fn == gone {
				return fmt.Errorf("%v: %w", fn, ebpf.ErrNotSupported)
			}
			return nil
		}
	}
	if got, err := chooseObject(missing(asm.FnUnspec)); err != nil || got != ObjectModern {
		t.Errorf("every helper: %q, %v; want %q", got, err, ObjectModern)
	}
	for _, fn := range modernHelpers {
		if got, err := chooseObject(missing(fn)); err != nil || got != ObjectCompat {
			t.Errorf("without %v: %q, %v; want %q", fn, got, err, ObjectCompat)
		}
	}
	failing := func(ebpf.ProgramType, asm.BuiltinFunc) error { return unix.EPERM }
	if got, err := chooseObject(failing); !errors.Is(err, unix.EPERM) {
		t.Errorf("a probe refused: %q, %v; want EPERM", got, err)
	}
}

// TestObjectsShareMaps: Load assigns either object's maps to one struct (gpeMaps, generated from
// the modern object), so each of its maps must be in the compat object too: a map left out
// of the compat build fails every load on the kernels that need it (it did, on 5.10, for
// h2_scratch, found by the kernel matrix).
func TestObjectsShareMaps(t *testing.T) {
	compat, err := loadObject(ObjectCompat)
	if err != nil {
		t.Fatal(err)
	}
	modern, err := loadObject(ObjectModern)
	if err != nil {
		t.Fatal(err)
	}
	if err := compat.Assign(&gpeMapSpecs{}); err != nil {
		t.Errorf("the compat object lacks a map of the modern one: %v", err)
	}
	if err := modern.Assign(&gpeMapSpecs{}); err != nil {
		t.Errorf("the modern object: %v", err)
	}
}
