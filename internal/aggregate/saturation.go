package aggregate

import (
	"time"
)

// Saturation and heartbeats: how many of a master's workers are busy (serving all the
// requests they can at once), how long ago each worker touched its heartbeat, and the
// master's worker timeout, what the heartbeat is checked against.

// MasterSettings are what the agent learnt of a master's Gunicorn settings.
type MasterSettings struct {
	// Capacity is how many requests one worker serves at once (1 for sync, its threads for
	// gthread); a worker is busy when it has that many in flight. Below 1 counts as 1.
	Capacity int
	// Timeout is the master's worker timeout, exported when TimeoutKnown.
	Timeout      time.Duration
	TimeoutKnown bool
}

// SetMasterSettings records a master's settings; a master not observed is ignored.
func (a *Aggregator) SetMasterSettings(pid uint32, s MasterSettings) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if m, ok := a.masters[pid]; ok {
		m.settings = s
	}
}

// SetHeartbeat gives the aggregator where it reads a live worker's last heartbeat (the change
// time of its heartbeat file), at every snapshot; false when it cannot be read. Without it no
// heartbeat is exported.
func (a *Aggregator) SetHeartbeat(f func(pid uint32) (time.Time, bool)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.heartbeat = f
}

// heartbeatAge fills ws's heartbeat, for a live worker whose heartbeat can be read.
func (a *Aggregator) heartbeatAge(ws *WorkerSnapshot, now time.Time) {
	if a.heartbeat == nil || ws.State == StateExited {
		return
	}
	last, ok := a.heartbeat(ws.PID)
	if !ok {
		return
	}
	ws.HeartbeatKnown = true
	if age := now.Sub(last); age > 0 {
		ws.HeartbeatAge = age.Seconds()
	}
}

// saturation fills ms's busy workers and timeout from its workers and m's settings.
func saturation(ms *MasterSnapshot, m *master) {
	capacity := max(m.settings.Capacity, 1)
	for _, w := range ms.Workers {
		if w.State != StateExited && w.InFlight >= capacity {
			ms.BusyWorkers++
		}
	}
	ms.Timeout, ms.TimeoutKnown = m.settings.Timeout.Seconds(), m.settings.TimeoutKnown
}
