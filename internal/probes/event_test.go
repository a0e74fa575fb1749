package probes

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

func procRecord(kind events.Kind, tgid, other, master uint32, code int32) []byte {
	b := make([]byte, procSize)
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(kind))
	le.PutUint32(b[4:], tgid)
	le.PutUint64(b[8:], 12345)
	le.PutUint32(b[16:], other)
	le.PutUint32(b[20:], master)
	le.PutUint32(b[24:], uint32(code))
	le.PutUint32(b[28:], uint32(events.ProcWorker))
	le.PutUint64(b[40:], 777) // busy
	return b
}

func reqRecord(kind events.Kind, status uint16, flags events.Flags, line string) []byte {
	b := make([]byte, reqSize+(len(line)+7)&^7)
	le := binary.LittleEndian
	le.PutUint32(b[0:], uint32(kind))
	le.PutUint32(b[4:], 42)
	le.PutUint32(b[16:], 7)  // fd
	le.PutUint32(b[20:], 3)  // seq
	le.PutUint64(b[24:], 10) // start
	le.PutUint64(b[32:], 20) // last write
	le.PutUint64(b[40:], 5)  // established
	le.PutUint64(b[48:], 100)
	le.PutUint64(b[56:], 200)
	le.PutUint64(b[64:], 3000) // cpu
	le.PutUint16(b[72:], status)
	b[74] = byte(events.EndClose)
	b[75] = byte(flags)
	le.PutUint16(b[76:], uint16(len(line)))
	copy(b[reqSize:], line)
	return b
}

func TestDecode(t *testing.T) {
	tests := []struct {
		name    string
		raw     []byte
		wantErr bool
		check   func(t *testing.T, ev *events.Event)
	}{
		{name: "exit", raw: procRecord(events.KindExit, 5, 0, 1, 9<<8), check: func(t *testing.T, ev *events.Event) {
			if ev.Kind != events.KindExit || ev.TGID != 5 || ev.Master != 1 || ev.Code != 9<<8 || ev.ProcKind != events.ProcWorker || ev.TS != 12345 || ev.BusyNS != 777 {
				t.Errorf("got %+v", ev)
			}
		}},
		{name: "signal", raw: procRecord(events.KindSignal, 5, 77, 1, 6), check: func(t *testing.T, ev *events.Event) {
			if ev.Other != 77 || ev.Code != 6 {
				t.Errorf("got %+v", ev)
			}
		}},
		{name: "end with line", raw: reqRecord(events.KindReqEnd, 200, 0, "GET /x"), check: func(t *testing.T, ev *events.Event) {
			if string(ev.Line) != "GET /x" || ev.FD != 7 || ev.Seq != 3 || ev.StartNS != 10 || ev.EstablishedNS != 5 || ev.Status != 200 {
				t.Errorf("got %+v line %q", ev, ev.Line)
			}
		}},
		{name: "line piece", raw: reqRecord(events.KindReqLine, 0, 0, "/more"), check: func(t *testing.T, ev *events.Event) {
			if ev.Kind != events.KindReqLine || string(ev.Line) != "/more" {
				t.Errorf("got %+v", ev)
			}
		}},
		{name: "end", raw: reqRecord(events.KindReqEnd, 503, events.FlagClientGone|events.FlagCPU, ""), check: func(t *testing.T, ev *events.Event) {
			if ev.Status != 503 || ev.Reason != events.EndClose || ev.Flags != events.FlagClientGone|events.FlagCPU || ev.BytesIn != 100 || ev.BytesOut != 200 || ev.LastWriteNS != 20 || ev.CPUNS != 3000 || len(ev.Line) != 0 {
				t.Errorf("got %+v", ev)
			}
		}},
		{name: "line length beyond the record", raw: reqRecord(events.KindReqEnd, 0, 0, "GET /x")[:reqSize+3], wantErr: true},
		{name: "short header", raw: []byte{1, 0, 0}, wantErr: true},
		{name: "short proc", raw: procRecord(events.KindFork, 1, 2, 3, 0)[:20], wantErr: true},
		{name: "short request", raw: reqRecord(events.KindReqEnd, 200, 0, "")[:72], wantErr: true},
		{name: "unknown kind", raw: procRecord(events.Kind(77), 1, 2, 3, 0), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ev events.Event
			err := Decode(tt.raw, &ev)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("want an error, got %+v", ev)
				}
				if tt.name != "unknown kind" && !errors.Is(err, ErrShortRecord) {
					t.Errorf("error %v does not wrap ErrShortRecord", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, &ev)
		})
	}
}

// FuzzDecode: no record, however malformed, makes Decode panic or return a line longer than
// the record.
func FuzzDecode(f *testing.F) {
	f.Add(procRecord(events.KindFork, 1, 2, 3, 0))
	f.Add(reqRecord(events.KindReqEnd, 0, 0, "GET /"))
	f.Add([]byte{8, 0, 0, 0})
	f.Fuzz(func(t *testing.T, raw []byte) {
		var ev events.Event
		if err := Decode(raw, &ev); err == nil && len(ev.Line) > len(raw) {
			t.Fatalf("line of %d bytes from a %d-byte record", len(ev.Line), len(raw))
		}
	})
}
