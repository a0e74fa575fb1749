package aggregate

import (
	"slices"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// TestEventKinds: a snapshot names every kind of record, those never read included, so the
// exporter can serve their zeros without importing probes.
func TestEventKinds(t *testing.T) {
	a := New(DefaultConfig())
	a.Handle(&events.Event{Kind: events.KindFork, TGID: 101, Other: 100})
	s := a.Snapshot(0)
	want := []string{"fork", "exit", "exec", "signal", "oom", "request_end", "request_line", "tls", "downstream", "h2"}
	if !slices.Equal(s.EventKinds, want) {
		t.Errorf("EventKinds %q, want %q", s.EventKinds, want)
	}
	if s.Events["fork"] != 1 || s.Events["exit"] != 0 {
		t.Errorf("Events %v: want fork 1 and no exit", s.Events)
	}
}
