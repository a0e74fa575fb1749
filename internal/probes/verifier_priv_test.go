package probes

import (
	"regexp"
	"strconv"
	"testing"

	"github.com/cilium/ebpf"
)

// verifierBudget is the most instructions the verifier of the kernel running the tests may
// process for one program. The limit is a million on every kernel, but older verifiers prune
// less: a request path that this kernel (6.18) verified in 945,000 instructions went past the
// million on Debian's 6.12 (the kernel matrix), where one at 560,000 passed. The budget keeps
// that headroom for the kernels of the matrix.
const verifierBudget = 700_000

// TestVerifierHeadroom loads every program of both hook modes and the TLS uprobes with the
// verifier's statistics, and checks each stays within verifierBudget.
func TestVerifierHeadroom(t *testing.T) {
	requireRoot(t)
	re := regexp.MustCompile(`processed (\d+) insns`)
	for _, mode := range hookModes {
		spec, err := loadGpe()
		if err != nil {
			t.Fatal(err)
		}
		if err := configure(spec, DefaultConfig()); err != nil {
			t.Fatal(err)
		}
		keep := map[string]bool{}
		for _, h := range hooksOf(mode) {
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
		coll.Close()
	}
}
