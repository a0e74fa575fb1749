package probes

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Kind says what an Event is about; the values are those of enum gpe_event_kind in bpf/gpe.h.
type Kind uint32

// Event kinds.
const (
	KindFork   Kind = 1 // a tracked master forked a worker
	KindExit   Kind = 2 // a tracked process exited
	KindExec   Kind = 3 // a tracked process called execve (a USR2 upgrade's new master)
	KindSignal Kind = 4 // a signal was queued for a tracked process
	KindOOM    Kind = 5 // the OOM killer chose a tracked process
	// 6 and 7 were a request's start and its status line: the kernel sends one record a
	// request now, when it ends.
	KindReqEnd   Kind = 8  // a request ended: the whole request
	KindReqLine  Kind = 9  // more of a request line that arrived in pieces, before its end
	KindTLS      Kind = 10 // a tracked worker read a TLS handshake, the first time in its life
	kindSentinel Kind = 11
)

// KindNames names each kind for gpe_ebpf_events_total{kind}.
var KindNames = [kindSentinel]string{
	KindFork: "fork", KindExit: "exit", KindExec: "exec", KindSignal: "signal", KindOOM: "oom",
	KindReqEnd: "request_end", KindReqLine: "request_line", KindTLS: "tls",
}

func (k Kind) String() string {
	if k < kindSentinel && KindNames[k] != "" {
		return KindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint32(k))
}

// ProcKind is what the kernel side knew a process as (enum gpe_proc_kind).
type ProcKind uint32

// Process kinds.
const (
	ProcMaster ProcKind = 1
	ProcWorker ProcKind = 2
)

// EndReason says why a request ended (enum gpe_end_reason).
type EndReason uint8

// End reasons.
const (
	EndNext     EndReason = 1 // the next request started on the connection
	EndClose    EndReason = 2 // the connection is gone (TCP socket destroyed, Unix fd closed)
	EndShutdown EndReason = 3 // not emitted since the socket hooks; the value stays reserved
	EndReused   EndReason = 4 // the entry was of another fd or process, or of a freed socket
	EndPipeline EndReason = 5 // a second status line: a pipelined request
	EndWait     EndReason = 6 // the worker read again and found no data: the response is done
	EndExit     EndReason = 7 // the worker exited with the request in flight (before its exit)
)

// Flags qualify a request record (GPE_FLAG_* in bpf/gpe.h).
type Flags uint8

// Request flags.
const (
	FlagTLS        Flags = 1 // the connection carries TLS: nothing was parsed
	FlagClientGone Flags = 2 // the client had closed its side when the status line was written
)

// LineMax is the most request bytes the kernel copies (GPE_LINE_MAX).
const LineMax = 256

// Event is one ring-buffer record, decoded. Times are CLOCK_MONOTONIC nanoseconds.
// Line is only valid until the next Read into the same Event: copy what you keep.
type Event struct {
	Kind Kind
	TGID uint32
	TS   uint64

	// Process events.
	Other    uint32 // fork: the parent; signal: the sender
	Master   uint32
	Code     int32 // exit: the wait status; signal: the signal number
	ProcKind ProcKind
	BusyNS   uint64 // exit of a worker: its time with at least one request in flight

	// Request events.
	FD          uint32
	Seq         uint32
	StartNS     uint64
	LastWriteNS uint64
	// EstablishedNS (the END of a TCP connection's first request, to a tracked listener):
	// when the kernel established the connection; StartNS - EstablishedNS is its wait in the
	// accept queue. 0 when not known.
	EstablishedNS uint64
	BytesIn       uint64
	BytesOut      uint64
	Status        uint16
	Reason        EndReason
	Flags         Flags
	Line          []byte // END: "METHOD /path" as far as the first read had it, cut after the path in the kernel; LINE: a later piece
	line          [LineMax]byte
}

// Sizes of the records (struct gpe_proc_event, gpe_req_event, gpe_req_start).
const (
	hdrSize      = 16
	procSize     = 48
	reqSize      = 72
	reqStartSize = reqSize + LineMax
)

// ErrShortRecord is returned for a record too small for its kind.
var ErrShortRecord = errors.New("short record")

// Decode fills ev from one raw record without allocating.
func Decode(raw []byte, ev *Event) error {
	if len(raw) < hdrSize {
		return fmt.Errorf("decode: %d bytes: %w", len(raw), ErrShortRecord)
	}
	le := binary.LittleEndian
	ev.Kind = Kind(le.Uint32(raw[0:]))
	ev.TGID = le.Uint32(raw[4:])
	ev.TS = le.Uint64(raw[8:])
	ev.Line = ev.line[:0]
	switch ev.Kind {
	case KindFork, KindExit, KindExec, KindSignal, KindOOM, KindTLS:
		if len(raw) < procSize {
			return fmt.Errorf("decode %s: %d bytes: %w", ev.Kind, len(raw), ErrShortRecord)
		}
		ev.Other = le.Uint32(raw[16:])
		ev.Master = le.Uint32(raw[20:])
		ev.Code = int32(le.Uint32(raw[24:]))
		ev.ProcKind = ProcKind(le.Uint32(raw[28:]))
		ev.StartNS = le.Uint64(raw[32:])
		ev.BusyNS = le.Uint64(raw[40:])
	case KindReqEnd, KindReqLine:
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
		ev.Reason = EndReason(raw[66])
		ev.Flags = Flags(raw[67])
		n := int(le.Uint16(raw[68:]))
		if n > 0 {
			if n > LineMax || len(raw) < reqSize+n {
				return fmt.Errorf("decode %s: line of %d bytes in %d: %w", ev.Kind, n, len(raw), ErrShortRecord)
			}
			ev.Line = append(ev.line[:0], raw[reqSize:reqSize+n]...)
		}
	default:
		return fmt.Errorf("decode: unknown kind %d", ev.Kind)
	}
	return nil
}
