package events

import "fmt"

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
	KindReqEnd  Kind = 8  // a request ended: the whole request
	KindReqLine Kind = 9  // more of a request line that arrived in pieces, before its end
	KindTLS     Kind = 10 // a tracked worker read a TLS handshake, the first time in its life
	// KindDownstream: the downstream calls a request made, per peer, sent when it is answered
	// (before its end, which has the same Seq).
	KindDownstream Kind = 11
	// KindH2: a frame of an HTTP/2 connection (Event.H2), which internal/h2 decodes into
	// KindReqEnd events, one a stream.
	KindH2       Kind = 12
	kindSentinel Kind = 13
)

// KindNames names each kind for gpe_ebpf_events_total{kind}.
var KindNames = [kindSentinel]string{
	KindFork: "fork", KindExit: "exit", KindExec: "exec", KindSignal: "signal", KindOOM: "oom",
	KindReqEnd: "request_end", KindReqLine: "request_line", KindTLS: "tls",
	KindDownstream: "downstream", KindH2: "h2",
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
	FlagCPU        Flags = 4 // CPUNS is the request's on-CPU time
)

// LineMax is the most request bytes the kernel copies (GPE_LINE_MAX).
const LineMax = 256

// PeersMax is the most peers a downstream record carries (GPE_PEERS_MAX): the calls of a
// request to further peers are counted as dropped (reason "peers").
const PeersMax = 4

// Address families of a Peer.
const (
	FamilyUnix  = 1
	FamilyInet  = 2
	FamilyInet6 = 10
)

// Peer is the remote end of a worker's downstream connection.
type Peer struct {
	Family uint16   // FamilyInet, FamilyInet6 or FamilyUnix
	Port   uint16   // TCP: the remote port
	Addr   [16]byte // TCP: the remote address (IPv4: the first 4 bytes)
	Ino    uint32   // Unix: the inode of the peer's socket (its path: /proc/PID/net/unix)
}

// Downstream is what one request did with one peer: its calls (a send, then the receives
// before the next send on that connection) and their time (first send to last receive).
type Downstream struct {
	Peer  Peer
	Calls uint32
	NS    uint64
}

// H2FragMax is the most bytes of a header block fragment an HTTP/2 record carries
// (GPE_H2_FRAG_MAX).
const H2FragMax = 512

// H2 frame types the kernel forwards (the others it skips), and its own record types.
const (
	H2Data         = 0
	H2Headers      = 1
	H2RSTStream    = 3
	H2Continuation = 9
	H2Lost         = 0xfd // the kernel lost its place in the connection's frames
	H2Close        = 0xfe // the connection ended (H2.Reason): its open streams end
)

// H2 frame flags the decoding uses.
const (
	H2FlagEndStream  = 0x1
	H2FlagEndHeaders = 0x4
	H2FlagPadded     = 0x8
	H2FlagPriority   = 0x20
)

// H2 is one record of an HTTP/2 connection (KindH2, with TGID, TS and FD): a frame's header, and
// for HEADERS and CONTINUATION a piece of its header block.
type H2 struct {
	Conn     uint32 // the connection's id: FD and Conn name a connection
	Stream   uint32
	FrameLen uint32 // the frame's payload length
	Off      uint32 // where Frag starts in the payload
	Piece    uint32 // bytes of the payload in the read or write (Frag: the first of them)
	Type     uint8  // the frame type (H2Data, H2Headers, ...), or H2Lost, H2Close
	Flags    uint8
	Written  bool // written by the worker (else read from the client)
	Trunc    bool // the piece had more bytes than Frag (or they were not readable)
	Reason   EndReason
	// Frag is valid until the next Read into the same Event, like Line.
	Frag []byte
	frag [H2FragMax]byte
}

// SetFrag makes Frag a copy of b in the record's own buffer (at most H2FragMax bytes).
func (h *H2) SetFrag(b []byte) {
	h.Frag = append(h.frag[:0], b[:min(len(b), H2FragMax)]...)
}

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
	// CPUNS (with FlagCPU): the on-CPU time of the thread that served the request, from its
	// first read to its last response write; that thread served no other request meanwhile.
	CPUNS  uint64
	Status uint16
	Reason EndReason
	Flags  Flags
	Line   []byte // END: "METHOD /path" as far as the first read had it, cut after the path in the kernel; LINE: a later piece
	line   [LineMax]byte

	// Downstream (KindDownstream, with TGID and Seq): the request's calls, a peer each.
	// Valid until the next Read into the same Event, like Line.
	Downstream []Downstream
	ds         [PeersMax]Downstream

	// H2 (KindH2): the HTTP/2 record.
	H2 H2
}

// SetDownstream makes Downstream a copy of d in the Event's own buffer (at most PeersMax).
func (e *Event) SetDownstream(d []Downstream) {
	if len(d) > PeersMax {
		d = d[:PeersMax]
	}
	e.Downstream = append(e.ds[:0], d...)
}

// SetLine makes Line a copy of b in the Event's own buffer, which it reuses from one record to
// the next: no allocation for a b of LineMax bytes or fewer.
func (e *Event) SetLine(b []byte) {
	e.Line = append(e.line[:0], b...)
}

// Occupancy is a worker's requests in flight and the time it had one, as the kernel counts
// them (struct proc_info): no record says when a request starts.
type Occupancy struct {
	InFlight uint32 // requests read whose status line is not written yet
	// BusyNS is the time with InFlight > 0 up to when it last went back to 0; while InFlight
	// > 0, the time since BusySince (CLOCK_MONOTONIC ns) is busy too.
	BusyNS    uint64
	BusySince uint64
}
