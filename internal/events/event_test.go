package events

import "testing"

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{KindFork: "fork", KindReqEnd: "request_end", Kind(6): "kind(6)", Kind(99): "kind(99)"} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", uint32(k), got, want)
		}
	}
}

// TestSetLine: Line is a copy in the Event's own buffer, made without allocating.
func TestSetLine(t *testing.T) {
	var ev Event
	src := []byte("GET /users/42")
	ev.SetLine(src)
	src[0] = 'P'
	if string(ev.Line) != "GET /users/42" {
		t.Errorf("Line %q after its source changed, want GET /users/42", ev.Line)
	}
	if n := testing.AllocsPerRun(100, func() { ev.SetLine(src) }); n != 0 {
		t.Errorf("SetLine allocated %v times, want 0", n)
	}
	ev.SetLine(nil)
	if len(ev.Line) != 0 {
		t.Errorf("SetLine(nil): Line %q, want empty", ev.Line)
	}
}
