package agent

import (
	"slices"
	"sync"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
)

// tlsFake is a fakeKernel that also attaches TLS uprobes (TLSKernel), recording which
// processes it was asked to attach to and detach from.
type tlsFake struct {
	*fakeKernel
	mu                 sync.Mutex
	attached, detached []uint32
}

func (k *tlsFake) AttachTLS(pid uint32) (probes.TLSAttach, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.attached = append(k.attached, pid)
	return probes.TLSAttach{Lib: "/usr/lib/x86_64-linux-gnu/libssl.so.3", Probes: 9}, nil
}

func (k *tlsFake) DetachTLS(pid uint32) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.detached = append(k.detached, pid)
	return nil
}

func (k *tlsFake) calls() (attached, detached []uint32) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(slices.Values(k.attached)), slices.Sorted(slices.Values(k.detached))
}

// TestTLSFollowsWorkers: the TLS uprobes go on the workers running at attach and on each one
// forked later (a reload's, a replacement's), never on the master, and come off a worker that
// exits or execs (a USR2 upgrade's new master).
func TestTLSFollowsWorkers(t *testing.T) {
	f := newProcFixture(t)
	f.gunicorn(m1, app, w1, w2)
	cfg := testConfig(f)
	cfg.PID = m1
	k := &tlsFake{fakeKernel: newFakeKernel()}
	r := startOn(t, cfg, k.fakeKernel, k)
	want := func(step string, attached, detached []uint32) {
		t.Helper()
		a, d := k.calls()
		if !slices.Equal(a, attached) || !slices.Equal(d, detached) {
			t.Errorf("%s: attached %v, detached %v; want %v, %v", step, a, d, attached, detached)
		}
	}
	want("attach", []uint32{w1, w2}, nil)
	r.k.feed(t, events.Event{Kind: events.KindFork, TGID: w3, Other: m1, ProcKind: events.ProcWorker, TS: 1})
	want("fork", []uint32{w1, w2, w3}, nil)
	r.k.feed(t, events.Event{Kind: events.KindExit, TGID: w1, Master: m1, ProcKind: events.ProcWorker})
	want("exit", []uint32{w1, w2, w3}, []uint32{w1})
	r.k.feed(t, events.Event{Kind: events.KindExec, TGID: w3, Other: m1, ProcKind: events.ProcWorker})
	want("exec", []uint32{w1, w2, w3}, []uint32{w1, w3})
}
