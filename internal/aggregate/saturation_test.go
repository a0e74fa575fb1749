package aggregate

import (
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// TestBusyWorkers: a worker is busy when it serves as many requests as it can at once (its
// master's capacity); exited workers never count.
func TestBusyWorkers(t *testing.T) {
	tests := []struct {
		name     string
		capacity int
		inFlight map[uint32]uint32 // by worker; 104 exits
		want     int
	}{
		{"sync, all idle", 1, map[uint32]uint32{101: 0, 102: 0, 103: 0}, 0},
		{"sync, two serving", 1, map[uint32]uint32{101: 1, 102: 0, 103: 1}, 2},
		{"capacity unknown counts as 1", 0, map[uint32]uint32{101: 1, 102: 1, 103: 1}, 3},
		{"gthread, one not full", 4, map[uint32]uint32{101: 4, 102: 3, 103: 5}, 2},
		{"exited worker left out", 1, map[uint32]uint32{101: 1, 102: 1, 103: 1, 104: 1}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, _ := newTestAggregator(t, nil)
			occ := occupancy{}
			a.SetOccupancy(occ.read)
			a.SetMasterSettings(masterPID, MasterSettings{Capacity: tt.capacity, Timeout: 30 * time.Second, TimeoutKnown: true})
			for pid := uint32(101); pid <= 104; pid++ {
				feed(a, evFork(sec, pid, masterPID))
			}
			feed(a, evExit(2*sec, 104, 0))
			for pid, n := range tt.inFlight {
				occ[pid] = events.Occupancy{InFlight: n, BusySince: sec}
			}
			m := masterOf(t, a.Snapshot(3*sec), masterPID)
			if m.BusyWorkers != tt.want || m.LiveWorkers != 3 {
				t.Errorf("busy = %d of %d live, want %d of 3", m.BusyWorkers, m.LiveWorkers, tt.want)
			}
			if !m.TimeoutKnown || m.Timeout != 30 {
				t.Errorf("timeout = %v (known %v), want 30", m.Timeout, m.TimeoutKnown)
			}
		})
	}
}

// TestHeartbeatAge: a live worker's heartbeat age is now minus its file's change time, read at
// each snapshot; a worker whose file cannot be read, or that exited, has none.
func TestHeartbeatAge(t *testing.T) {
	a, clk := newTestAggregator(t, nil)
	feed(a, evFork(sec, 101, masterPID), evFork(sec, 102, masterPID), evFork(sec, 103, masterPID))
	touched := map[uint32]time.Time{101: epoch.Add(10 * time.Second), 103: epoch.Add(5 * time.Second)}
	a.SetHeartbeat(func(pid uint32) (time.Time, bool) {
		at, ok := touched[pid]
		return at, ok
	})
	clk.now = epoch.Add(12500 * time.Millisecond)
	feed(a, evExit(12*sec, 103, 0))
	s := a.Snapshot(13 * sec)
	if w := workerOf(t, s, 101); !w.HeartbeatKnown || w.HeartbeatAge != 2.5 {
		t.Errorf("worker 101: heartbeat %v (known %v), want 2.5", w.HeartbeatAge, w.HeartbeatKnown)
	}
	if w := workerOf(t, s, 102); w.HeartbeatKnown {
		t.Errorf("worker 102 has a heartbeat (%v) although its file was not read", w.HeartbeatAge)
	}
	if w := workerOf(t, s, 103); w.HeartbeatKnown {
		t.Errorf("exited worker 103 has a heartbeat (%v)", w.HeartbeatAge)
	}
	// A change time ahead of the clock (another clock, a coarse one) is an age of 0, not less.
	touched[101] = clk.now.Add(time.Second)
	if w := workerOf(t, a.Snapshot(14*sec), 101); !w.HeartbeatKnown || w.HeartbeatAge != 0 {
		t.Errorf("heartbeat in the future: age %v, want 0", w.HeartbeatAge)
	}
	if m := masterOf(t, s, masterPID); m.TimeoutKnown {
		t.Errorf("timeout known (%v) with no settings given", m.Timeout)
	}
}

// TestUpgradeKeepsSettings: the new master of a USR2 upgrade runs with the old one's arguments,
// so it has its settings until the agent reads its own.
func TestUpgradeKeepsSettings(t *testing.T) {
	a, _ := newTestAggregator(t, nil)
	want := MasterSettings{Capacity: 4, Timeout: time.Minute, TimeoutKnown: true}
	a.SetMasterSettings(masterPID, want)
	feed(a, evFork(sec, 150, masterPID), events.Event{Kind: events.KindExec, TGID: 150, TS: 2 * sec})
	m := masterOf(t, a.Snapshot(3*sec), 150)
	if m.Timeout != 60 || !m.TimeoutKnown {
		t.Errorf("new master's timeout = %v (known %v), want 60", m.Timeout, m.TimeoutKnown)
	}
}
