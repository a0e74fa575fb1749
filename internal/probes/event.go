package probes

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// The records' sizes and field offsets, from the Go types bpf2go generated from bpf/gpe.h
// (-type): none is written by hand, so a change to a record in C moves them too.
const (
	hdrSize      = int(unsafe.Sizeof(gpeGpeHdr{}))
	procSize     = int(unsafe.Sizeof(gpeGpeProcEvent{}))
	reqSize      = int(unsafe.Sizeof(gpeGpeReqEvent{}))
	reqStartSize = int(unsafe.Sizeof(gpeGpeReqStart{}))
	dsSize       = int(unsafe.Sizeof(gpeGpeDsEvent{}))
	peerSize     = int(unsafe.Sizeof(gpeGpePeer{}))
	h2Size       = int(unsafe.Offsetof(gpeGpeH2Event{}.Frag)) // without its fragment

	offKind = unsafe.Offsetof(gpeGpeHdr{}.Kind)
	offTGID = unsafe.Offsetof(gpeGpeHdr{}.Tgid)
	offTS   = unsafe.Offsetof(gpeGpeHdr{}.TsNs)

	offOther    = unsafe.Offsetof(gpeGpeProcEvent{}.OtherTgid)
	offMaster   = unsafe.Offsetof(gpeGpeProcEvent{}.Master)
	offCode     = unsafe.Offsetof(gpeGpeProcEvent{}.Code)
	offProcKind = unsafe.Offsetof(gpeGpeProcEvent{}.ProcKind)
	offStartNS  = unsafe.Offsetof(gpeGpeProcEvent{}.StartNs)
	offBusyNS   = unsafe.Offsetof(gpeGpeProcEvent{}.BusyNs)

	offFD          = unsafe.Offsetof(gpeGpeReqEvent{}.Fd)
	offSeq         = unsafe.Offsetof(gpeGpeReqEvent{}.Seq)
	offReqStart    = unsafe.Offsetof(gpeGpeReqEvent{}.StartNs)
	offLastWrite   = unsafe.Offsetof(gpeGpeReqEvent{}.LastWriteNs)
	offEstablished = unsafe.Offsetof(gpeGpeReqEvent{}.EstNs)
	offBytesIn     = unsafe.Offsetof(gpeGpeReqEvent{}.BytesIn)
	offBytesOut    = unsafe.Offsetof(gpeGpeReqEvent{}.BytesOut)
	offCPUNS       = unsafe.Offsetof(gpeGpeReqEvent{}.CpuNs)
	offStatus      = unsafe.Offsetof(gpeGpeReqEvent{}.Status)
	offReason      = unsafe.Offsetof(gpeGpeReqEvent{}.Reason)
	offFlags       = unsafe.Offsetof(gpeGpeReqEvent{}.Flags)
	offLineLen     = unsafe.Offsetof(gpeGpeReqEvent{}.LineLen)

	offDsSeq     = unsafe.Offsetof(gpeGpeDsEvent{}.Seq)
	offDsN       = unsafe.Offsetof(gpeGpeDsEvent{}.N)
	offDsPeers   = unsafe.Offsetof(gpeGpeDsEvent{}.Peers)
	offPeerFam   = unsafe.Offsetof(gpeGpePeer{}.Family)
	offPeerPort  = unsafe.Offsetof(gpeGpePeer{}.Port)
	offPeerIno   = unsafe.Offsetof(gpeGpePeer{}.Ino)
	offPeerCalls = unsafe.Offsetof(gpeGpePeer{}.Calls)
	offPeerNS    = unsafe.Offsetof(gpeGpePeer{}.Ns)

	offH2FD       = unsafe.Offsetof(gpeGpeH2Event{}.Fd)
	offH2Conn     = unsafe.Offsetof(gpeGpeH2Event{}.Conn)
	offH2Stream   = unsafe.Offsetof(gpeGpeH2Event{}.Stream)
	offH2FrameLen = unsafe.Offsetof(gpeGpeH2Event{}.FrameLen)
	offH2Off      = unsafe.Offsetof(gpeGpeH2Event{}.Off)
	offH2Piece    = unsafe.Offsetof(gpeGpeH2Event{}.PieceLen)
	offH2FragLen  = unsafe.Offsetof(gpeGpeH2Event{}.FragLen)
	offH2Type     = unsafe.Offsetof(gpeGpeH2Event{}.Type)
	offH2Flags    = unsafe.Offsetof(gpeGpeH2Event{}.Flags)
	offH2Dir      = unsafe.Offsetof(gpeGpeH2Event{}.Dir)
	offH2Trunc    = unsafe.Offsetof(gpeGpeH2Event{}.Trunc)
	offH2Reason   = unsafe.Offsetof(gpeGpeH2Event{}.Reason)
)

// ErrShortRecord is returned for a record too small for its kind.
var ErrShortRecord = errors.New("short record")

// Decode fills ev from one raw record without allocating.
func Decode(raw []byte, ev *events.Event) error {
	if len(raw) < hdrSize {
		return fmt.Errorf("decode: %d bytes: %w", len(raw), ErrShortRecord)
	}
	le := binary.LittleEndian
	ev.Kind = events.Kind(le.Uint32(raw[offKind:]))
	ev.TGID = le.Uint32(raw[offTGID:])
	ev.TS = le.Uint64(raw[offTS:])
	ev.SetLine(nil)
	ev.Downstream = ev.Downstream[:0]
	switch ev.Kind {
	case events.KindFork, events.KindExit, events.KindExec, events.KindSignal, events.KindOOM, events.KindTLS:
		if len(raw) < procSize {
			return fmt.Errorf("decode %s: %d bytes: %w", ev.Kind, len(raw), ErrShortRecord)
		}
		ev.Other = le.Uint32(raw[offOther:])
		ev.Master = le.Uint32(raw[offMaster:])
		ev.Code = int32(le.Uint32(raw[offCode:]))
		ev.ProcKind = events.ProcKind(le.Uint32(raw[offProcKind:]))
		ev.StartNS = le.Uint64(raw[offStartNS:])
		ev.BusyNS = le.Uint64(raw[offBusyNS:])
	case events.KindReqEnd, events.KindReqLine:
		if len(raw) < reqSize {
			return fmt.Errorf("decode %s: %d bytes: %w", ev.Kind, len(raw), ErrShortRecord)
		}
		ev.FD = le.Uint32(raw[offFD:])
		ev.Seq = le.Uint32(raw[offSeq:])
		ev.StartNS = le.Uint64(raw[offReqStart:])
		ev.LastWriteNS = le.Uint64(raw[offLastWrite:])
		ev.EstablishedNS = le.Uint64(raw[offEstablished:])
		ev.BytesIn = le.Uint64(raw[offBytesIn:])
		ev.BytesOut = le.Uint64(raw[offBytesOut:])
		ev.CPUNS = le.Uint64(raw[offCPUNS:])
		ev.Status = le.Uint16(raw[offStatus:])
		ev.Reason = events.EndReason(raw[offReason])
		ev.Flags = events.Flags(raw[offFlags])
		n := int(le.Uint16(raw[offLineLen:]))
		if n > 0 {
			if n > events.LineMax || len(raw) < reqSize+n {
				return fmt.Errorf("decode %s: line of %d bytes in %d: %w", ev.Kind, n, len(raw), ErrShortRecord)
			}
			ev.SetLine(raw[reqSize : reqSize+n])
		}
	case events.KindDownstream:
		return decodeDownstream(raw, ev)
	case events.KindH2:
		return decodeH2(raw, ev)
	default:
		return fmt.Errorf("decode: unknown kind %d", ev.Kind)
	}
	return nil
}

// decodeDownstream fills ev's Seq and Downstream from a GPE_EV_DOWNSTREAM record.
func decodeDownstream(raw []byte, ev *events.Event) error {
	if len(raw) < dsSize {
		return fmt.Errorf("decode %s: %d bytes: %w", ev.Kind, len(raw), ErrShortRecord)
	}
	le := binary.LittleEndian
	ev.Seq = le.Uint32(raw[offDsSeq:])
	n := int(le.Uint32(raw[offDsN:]))
	if n > events.PeersMax {
		return fmt.Errorf("decode %s: %d peers: %w", ev.Kind, n, ErrShortRecord)
	}
	var ds [events.PeersMax]events.Downstream
	for i := range n {
		p := raw[int(offDsPeers)+i*peerSize:]
		d := &ds[i]
		copy(d.Peer.Addr[:], p[:16])
		d.Peer.Family = le.Uint16(p[offPeerFam:])
		d.Peer.Port = le.Uint16(p[offPeerPort:])
		d.Peer.Ino = le.Uint32(p[offPeerIno:])
		d.Calls = le.Uint32(p[offPeerCalls:])
		d.NS = le.Uint64(p[offPeerNS:])
	}
	ev.SetDownstream(ds[:n])
	return nil
}

// decodeH2 fills ev's FD and H2 from a GPE_EV_H2 record.
func decodeH2(raw []byte, ev *events.Event) error {
	if len(raw) < h2Size {
		return fmt.Errorf("decode %s: %d bytes: %w", ev.Kind, len(raw), ErrShortRecord)
	}
	le := binary.LittleEndian
	ev.FD = le.Uint32(raw[offH2FD:])
	h := &ev.H2
	h.Conn = le.Uint32(raw[offH2Conn:])
	h.Stream = le.Uint32(raw[offH2Stream:])
	h.FrameLen = le.Uint32(raw[offH2FrameLen:])
	h.Off = le.Uint32(raw[offH2Off:])
	h.Piece = le.Uint32(raw[offH2Piece:])
	h.Type = raw[offH2Type]
	h.Flags = raw[offH2Flags]
	h.Written = raw[offH2Dir] != 0
	h.Trunc = raw[offH2Trunc] != 0
	h.Reason = events.EndReason(raw[offH2Reason])
	n := int(le.Uint16(raw[offH2FragLen:]))
	if n > events.H2FragMax || len(raw) < h2Size+n {
		return fmt.Errorf("decode %s: fragment of %d bytes in %d: %w", ev.Kind, n, len(raw), ErrShortRecord)
	}
	h.SetFrag(raw[h2Size : h2Size+n])
	return nil
}
