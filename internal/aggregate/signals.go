package aggregate

import (
	"fmt"
	"strings"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// Signals: the counts of each master's signals, what a reload (HUP) or a stop (INT, QUIT,
// TERM) means for its workers, a worker's quitting and aborting states, and Gunicorn's names.

// Signal numbers this package reasons about (Linux numbering, the same on amd64 and arm64).
const (
	sigHUP  = 1
	sigINT  = 2
	sigQUIT = 3
	sigABRT = 6
	sigKILL = 9
	sigTERM = 15
)

func (a *Aggregator) signal(ev *events.Event) {
	if m, ok := a.masters[ev.TGID]; ok {
		m.signals[SignalName(ev.Code)]++
		switch ev.Code {
		case sigHUP:
			live := 0
			for _, w := range a.workers {
				if w.master == m && w.state == StateRunning {
					live++
				}
			}
			m.reloadCredit = live
		case sigINT, sigQUIT, sigTERM:
			m.quitting = true
		}
		return
	}
	w, ok := a.workers[ev.TGID]
	if !ok || w.state == StateExited {
		return
	}
	fromMaster := ev.Other == w.master.pid
	now := a.cfg.MonoToWall(ev.TS)
	switch ev.Code {
	case sigQUIT, sigINT, sigTERM:
		if w.state == StateRunning {
			w.state, w.stateSince = StateQuitting, now
		}
		if fromMaster {
			w.quitByMaster = true
		}
	case sigABRT:
		if w.state != StateAborting {
			w.state, w.stateSince = StateAborting, now
		}
	}
}

// signalNames are Gunicorn's names (SIG_NAMES: the signal module's names without SIG,
// lower case) for Linux's signal numbers.
var signalNames = map[int32]string{
	1: "hup", 2: "int", 3: "quit", 4: "ill", 5: "trap", 6: "abrt", 7: "bus", 8: "fpe",
	9: "kill", 10: "usr1", 11: "segv", 12: "usr2", 13: "pipe", 14: "alrm", 15: "term",
	16: "stkflt", 17: "chld", 18: "cont", 19: "stop", 20: "tstp", 21: "ttin", 22: "ttou",
	23: "urg", 24: "xcpu", 25: "xfsz", 26: "vtalrm", 27: "prof", 28: "winch", 29: "io",
	30: "pwr", 31: "sys",
}

// SignalName names a signal as Gunicorn does (its SIG_NAMES has rtmin for 34 and rtmax for
// 64); the real-time signals between are rtmin+N.
func SignalName(sig int32) string {
	if n, ok := signalNames[sig]; ok {
		return n
	}
	switch {
	case sig == 34:
		return "rtmin"
	case sig == 64:
		return "rtmax"
	case sig > 34 && sig < 64:
		return fmt.Sprintf("rtmin+%d", sig-34)
	}
	return strings.ToLower(fmt.Sprintf("sig%d", sig))
}
