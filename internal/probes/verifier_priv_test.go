package probes

import (
	"errors"
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// verifierBudget is the most instructions the verifier of the kernel running the tests may
// process for one program. The limit is a million on every kernel, but older verifiers prune
// less: a request path that this kernel (6.18) verified in 945,000 instructions went past the
// million on Debian's 6.12 (the kernel matrix), where one at 560,000 passed. The budget keeps
// that headroom for the kernels of the matrix.
const verifierBudget = 700_000

// TestVerifierHeadroom loads every program of every hook mode and the TLS uprobes with the
// verifier's statistics, and checks each stays within verifierBudget. Fentry mode is only
// checked to be refused, with the kernel's reason, where the kernel refuses fexit programs (this machine's Firecracker
// kernel refuses their load): the kernel matrix runs it. Kprobe programs load on any kernel
// (only their attach needs kprobes), so kprobe mode is verified here too.
func TestVerifierHeadroom(t *testing.T) {
	requireRoot(t)
	for _, mode := range HookModes[1:] {
		t.Run(mode, func(t *testing.T) {
			if mode == HooksFentry {
				if err := kernelAttaches(mode); err != nil {
					// Not a skip: the refusal itself is checked, and must be the kernel's
					// "not permitted" or "not supported" (what kernels without trampolines
					// say), not another failure.
					if !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.Errno(524) /* ENOTSUPP */) {
						t.Fatalf("%s hooks: %v, want the kernel's refusal (EPERM or not supported) or a load", mode, err)
					}
					t.Logf("this kernel refuses %s hooks (%v); the kernel matrix (test/kernels) verifies them", mode, err)
					return
				}
			}
			// Both objects: the compat one loads wherever the modern one does (it calls
			// only what 5.10 has); on 5.10 itself the kernel matrix loads it.
			for _, object := range []string{ObjectModern, ObjectCompat} {
				t.Run(object, func(t *testing.T) { verifierHeadroom(t, mode, object) })
			}
		})
	}
}

func verifierHeadroom(t *testing.T, mode, object string) {
	re := regexp.MustCompile(`processed (\d+) insns`)
	spec, err := loadObject(object)
	if err != nil {
		t.Fatal(err)
	}
	if err := configure(spec, DefaultConfig(), object); err != nil {
		t.Fatal(err)
	}
	hooks, err := hooksOf(mode, kernelHasType)
	if err != nil {
		t.Fatal(err)
	}
	keep := map[string]bool{}
	for _, h := range hooks {
		keep[h.prog] = true
	}
	for _, name := range tlsPrograms(haveUprobeMulti()) {
		keep[name] = true
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
	if err != nil {
		t.Fatalf("%s: load: %v", mode, err)
	}
	defer coll.Close()
	for name, p := range coll.Programs {
		m := re.FindStringSubmatch(p.VerifierLog)
		if m == nil {
			t.Errorf("%s %s: no statistics in the verifier's log", mode, name)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		t.Logf("%s %s: %d instructions processed", mode, name, n)
		if n > verifierBudget {
			t.Errorf("%s %s: the verifier processed %d instructions, over the budget of %d", mode, name, n, verifierBudget)
		}
	}
}
