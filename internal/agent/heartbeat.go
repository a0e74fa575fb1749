package agent

import (
	"sync"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// What the agent learns of a master's settings (README "Why is it slow?"), and where each
// worker's heartbeat is read.

// noteSettings gives the aggregator what master pid's command line and environment say of
// how many requests a worker serves at once and of its worker timeout. A timeout they do not
// say (a config file may) is --worker-timeout, when given; else it is left unknown.
func (a *Agent) noteSettings(pid uint32) {
	s, err := a.proc.Gunicorn(pid)
	if err != nil {
		a.log.Debug("master settings", "master_pid", pid, "error", err)
		return
	}
	ms := aggregate.MasterSettings{Capacity: s.Capacity()}
	ms.Timeout, ms.TimeoutKnown = s.WorkerTimeout()
	from := "command line"
	switch {
	case s.Timeout >= 0:
	case a.cfg.WorkerTimeout > 0:
		ms.Timeout, ms.TimeoutKnown, from = a.cfg.WorkerTimeout, true, "--worker-timeout"
	case ms.TimeoutKnown:
		from = "Gunicorn's default"
	default:
		from = "unknown: a config file may set it (give --worker-timeout)"
	}
	a.agg.SetMasterSettings(pid, ms)
	a.log.Info("master settings", "master_pid", pid, "worker_capacity", s.Capacity(),
		"worker_class", s.WorkerClass, "config_file", s.ConfigFile, "timeout", ms.Timeout, "timeout_from", from)
}

// heartbeats reads workers' heartbeats: the change time of the worker's heartbeat file,
// through the fd it holds it by, found once among its fds and then stat'ed at each snapshot.
// It is safe for concurrent use (scrapes and the Redis forwarder take snapshots).
type heartbeats struct {
	fs  proc.FS
	mu  sync.Mutex
	fds map[uint32]heartbeatFD
}

type heartbeatFD struct {
	fd       int    // -1: none found, not looked for again until the next sampling
	dev, ino uint64 // the file it named when found
}

func newHeartbeats(fs proc.FS) *heartbeats {
	return &heartbeats{fs: fs, fds: make(map[uint32]heartbeatFD)}
}

// read returns worker pid's last heartbeat. An fd that no longer names the file it named (a
// reused PID, a sibling's file closed after the fork) is looked for again.
func (h *heartbeats) read(pid uint32) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if c, ok := h.fds[pid]; ok {
		if c.fd < 0 {
			return time.Time{}, false
		}
		ctime, dev, ino, err := h.fs.FDChangeTime(pid, c.fd)
		if err == nil && dev == c.dev && ino == c.ino {
			return ctime, true
		}
		delete(h.fds, pid)
	}
	fd, err := h.fs.HeartbeatFD(pid)
	if err != nil {
		// A process that is no Gunicorn worker (--force): its fds are not listed at every scrape.
		h.fds[pid] = heartbeatFD{fd: -1}
		return time.Time{}, false
	}
	ctime, dev, ino, err := h.fs.FDChangeTime(pid, fd)
	if err != nil {
		return time.Time{}, false
	}
	h.fds[pid] = heartbeatFD{fd: fd, dev: dev, ino: ino}
	return ctime, true
}

// forget drops the fds of workers not in live, and the workers where none was found, to be
// looked for again.
func (h *heartbeats) forget(live map[uint32]bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for pid, c := range h.fds {
		if !live[pid] || c.fd < 0 {
			delete(h.fds, pid)
		}
	}
}
