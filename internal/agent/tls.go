package agent

import (
	"errors"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
)

// TLSKernel is a Kernel that can also see the plaintext of a worker's TLS connections, through
// uprobes on the libssl the worker has mapped, attached to that worker alone (*probes.Probes).
// The agent attaches them to every worker: those already running at attach and each one the
// kernel reports forked (a reload's, a USR2 upgrade's, a replacement's).
type TLSKernel interface {
	AttachTLS(pid uint32) (probes.TLSAttach, error)
	DetachTLS(pid uint32) error
}

// watchTLS attaches the TLS uprobes to worker pid, if the Kernel can. forkNS is when the kernel
// saw the fork (CLOCK_MONOTONIC ns; 0 for a worker running at attach): connections the worker
// wrapped between then and now were tied to no socket by SSL_set_fd, and are picked up at
// their first socket call inside SSL_read/SSL_write (README "TLS").
func (a *Agent) watchTLS(pid uint32, forkNS uint64) {
	k, ok := a.k.(TLSKernel)
	if !ok {
		return
	}
	res, err := k.AttachTLS(pid)
	switch {
	case errors.Is(err, probes.ErrTLSOff):
		return
	case err != nil:
		a.log.Warn("tls: cannot attach to the worker's libssl; its TLS connections are not measured", "worker_pid", pid, "error", err)
		return
	case res.Lib == "":
		a.log.Debug("tls: the worker has no libssl mapped", "worker_pid", pid)
		return
	}
	args := []any{"worker_pid", pid, "lib", res.Lib, "probes", res.Probes, "took", res.Took}
	if forkNS != 0 {
		if now := events.MonotonicNow(); now > forkNS {
			args = append(args, "since_fork", time.Duration(now-forkNS))
		}
	}
	a.log.Debug("tls: uprobes attached", args...)
}

// unwatchTLS detaches the TLS uprobes of a process that exited or became a master (exec).
func (a *Agent) unwatchTLS(pid uint32) {
	if k, ok := a.k.(TLSKernel); ok {
		if err := k.DetachTLS(pid); err != nil {
			a.log.Debug("tls: detach", "pid", pid, "error", err)
		}
	}
}
