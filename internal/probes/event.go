package probes

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// Sizes of the records (struct gpe_proc_event, gpe_req_event, gpe_req_start).
const (
	hdrSize      = 16
	procSize     = 48
	reqSize      = 72
	reqStartSize = reqSize + events.LineMax
)

// ErrShortRecord is returned for a record too small for its kind.
var ErrShortRecord = errors.New("short record")

// Decode fills ev from one raw record without allocating.
func Decode(raw []byte, ev *events.Event) error {
	if len(raw) < hdrSize {
		return fmt.Errorf("decode: %d bytes: %w", len(raw), ErrShortRecord)
	}
	le := binary.LittleEndian
	ev.Kind = events.Kind(le.Uint32(raw[0:]))
	ev.TGID = le.Uint32(raw[4:])
	ev.TS = le.Uint64(raw[8:])
	ev.SetLine(nil)
	switch ev.Kind {
	case events.KindFork, events.KindExit, events.KindExec, events.KindSignal, events.KindOOM:
		if len(raw) < procSize {
			return fmt.Errorf("decode %s: %d bytes: %w", ev.Kind, len(raw), ErrShortRecord)
		}
		ev.Other = le.Uint32(raw[16:])
		ev.Master = le.Uint32(raw[20:])
		ev.Code = int32(le.Uint32(raw[24:]))
		ev.ProcKind = events.ProcKind(le.Uint32(raw[28:]))
		ev.StartNS = le.Uint64(raw[32:])
		ev.BusyNS = le.Uint64(raw[40:])
	case events.KindReqEnd, events.KindReqLine:
		if len(raw) < reqSize {
			return fmt.Errorf("decode %s: %d bytes: %w", ev.Kind, len(raw), ErrShortRecord)
		}
		ev.FD = le.Uint32(raw[16:])
		ev.Seq = le.Uint32(raw[20:])
		ev.StartNS = le.Uint64(raw[24:])
		ev.LastWriteNS = le.Uint64(raw[32:])
		ev.EstablishedNS = le.Uint64(raw[40:])
		ev.BytesIn = le.Uint64(raw[48:])
		ev.BytesOut = le.Uint64(raw[56:])
		ev.Status = le.Uint16(raw[64:])
		ev.Reason = events.EndReason(raw[66])
		ev.Flags = events.Flags(raw[67])
		n := int(le.Uint16(raw[68:]))
		if n > 0 {
			if n > events.LineMax || len(raw) < reqSize+n {
				return fmt.Errorf("decode %s: line of %d bytes in %d: %w", ev.Kind, n, len(raw), ErrShortRecord)
			}
			ev.SetLine(raw[reqSize : reqSize+n])
		}
	default:
		return fmt.Errorf("decode: unknown kind %d", ev.Kind)
	}
	return nil
}
