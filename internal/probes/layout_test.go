package probes

import (
	"testing"
	"unsafe"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// The records' layout, as bpf2go generated it from bpf/gpe.h (Decode takes its offsets from the
// same types): a change to the wire format shows here first.
func TestRecordLayout(t *testing.T) {
	tests := []struct {
		name      string
		got, want uintptr
	}{
		{"hdr", unsafe.Sizeof(gpeGpeHdr{}), 16},
		{"proc", unsafe.Sizeof(gpeGpeProcEvent{}), 48},
		{"req", unsafe.Sizeof(gpeGpeReqEvent{}), 80},
		{"req_start", unsafe.Sizeof(gpeGpeReqStart{}), 80 + events.LineMax},
		{"req.est_ns", unsafe.Offsetof(gpeGpeReqEvent{}.EstNs), 40},
		{"req.status", unsafe.Offsetof(gpeGpeReqEvent{}.Status), 72},
		{"req.line_len", unsafe.Offsetof(gpeGpeReqEvent{}.LineLen), 76},
		{"req.bytes_out", unsafe.Offsetof(gpeGpeReqEvent{}.BytesOut), 56},
		{"req.cpu_ns", unsafe.Offsetof(gpeGpeReqEvent{}.CpuNs), 64},
		{"conn", unsafe.Sizeof(gpeConn{}), 352}, // ConnBytes: this plus a hash element's header
		{"proc.busy_ns", unsafe.Offsetof(gpeGpeProcEvent{}.BusyNs), 40},
		{"proc.start_ns", unsafe.Offsetof(gpeGpeProcEvent{}.StartNs), 32},
		{"proc.code", unsafe.Offsetof(gpeGpeProcEvent{}.Code), 24},
		{"peer", unsafe.Sizeof(gpeGpePeer{}), 40},
		{"ds", unsafe.Sizeof(gpeGpeDsEvent{}), 24 + 4*8 + 4*40},
		{"h2", unsafe.Sizeof(gpeGpeH2Event{}), 48 + events.H2FragMax},
		{"h2.frag", unsafe.Offsetof(gpeGpeH2Event{}.Frag), 48},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %d, want %d", tt.got, tt.want)
			}
		})
	}
}

// The events package's constants must have the values of the C enums, which bpf2go generated
// (-type) here: events needs neither cilium/ebpf nor these bindings.
func TestEnumValues(t *testing.T) {
	tests := []struct {
		name      string
		got, want uint64
	}{
		{"fork", uint64(events.KindFork), uint64(gpeGpeEventKindGPE_EV_FORK)},
		{"exit", uint64(events.KindExit), uint64(gpeGpeEventKindGPE_EV_EXIT)},
		{"exec", uint64(events.KindExec), uint64(gpeGpeEventKindGPE_EV_EXEC)},
		{"signal", uint64(events.KindSignal), uint64(gpeGpeEventKindGPE_EV_SIGNAL)},
		{"oom", uint64(events.KindOOM), uint64(gpeGpeEventKindGPE_EV_OOM)},
		{"req_end", uint64(events.KindReqEnd), uint64(gpeGpeEventKindGPE_EV_REQ_END)},
		{"req_line", uint64(events.KindReqLine), uint64(gpeGpeEventKindGPE_EV_REQ_LINE)},
		{"tls", uint64(events.KindTLS), uint64(gpeGpeEventKindGPE_EV_TLS)},
		{"master", uint64(events.ProcMaster), uint64(gpeGpeProcKindGPE_PROC_MASTER)},
		{"worker", uint64(events.ProcWorker), uint64(gpeGpeProcKindGPE_PROC_WORKER)},
		{"end_next", uint64(events.EndNext), uint64(gpeGpeEndReasonGPE_END_NEXT)},
		{"end_close", uint64(events.EndClose), uint64(gpeGpeEndReasonGPE_END_CLOSE)},
		{"end_shutdown", uint64(events.EndShutdown), uint64(gpeGpeEndReasonGPE_END_SHUTDOWN)},
		{"end_reused", uint64(events.EndReused), uint64(gpeGpeEndReasonGPE_END_REUSED)},
		{"end_pipeline", uint64(events.EndPipeline), uint64(gpeGpeEndReasonGPE_END_PIPELINE)},
		{"end_wait", uint64(events.EndWait), uint64(gpeGpeEndReasonGPE_END_WAIT)},
		{"end_exit", uint64(events.EndExit), uint64(gpeGpeEndReasonGPE_END_EXIT)},
		{"flag_tls", uint64(events.FlagTLS), uint64(gpeGpeReqFlagGPE_FLAG_TLS)},
		{"flag_client_gone", uint64(events.FlagClientGone), uint64(gpeGpeReqFlagGPE_FLAG_CLIENT_GONE)},
		{"flag_cpu", uint64(events.FlagCPU), uint64(gpeGpeReqFlagGPE_FLAG_CPU)},
		{"line_max", events.LineMax, uint64(len(gpeGpeReqStart{}.Line))},
		{"downstream", uint64(events.KindDownstream), uint64(gpeGpeEventKindGPE_EV_DOWNSTREAM)},
		{"peers_max", events.PeersMax, uint64(len(gpeGpeDsEvent{}.Peers))},
		{"h2", uint64(events.KindH2), uint64(gpeGpeEventKindGPE_EV_H2)},
		{"h2_frag_max", events.H2FragMax, uint64(len(gpeGpeH2Event{}.Frag))},
		{"h2_close", events.H2Close, uint64(gpeGpeH2KindGPE_H2CLOSE)},
		{"h2_lost", events.H2Lost, uint64(gpeGpeH2KindGPE_H2LOST)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %d, want %d", tt.got, tt.want)
			}
		})
	}
}

// Every drop counter of the kernel side has a name, and GPE_CONN_SLOTS is the slots map's size.
func TestDropReasonsAndSlots(t *testing.T) {
	if len(DropReasons) != int(gpeGpeDropReasonGPE_DROP_REASONS) {
		t.Fatalf("%d drop reasons named, the kernel has %d", len(DropReasons), gpeGpeDropReasonGPE_DROP_REASONS)
	}
	spec, err := loadGpe()
	if err != nil {
		t.Fatal(err)
	}
	if got := spec.Maps["slots"].MaxEntries; got != connSlotsMax {
		t.Fatalf("slots map has %d entries in the object, connSlotsMax is %d", got, connSlotsMax)
	}
}

func TestTableSizes(t *testing.T) {
	tests := []struct{ max, slots, conns uint32 }{
		{0, 8192, 16384},
		{DefaultMaxConnections, 8192, 16384},
		{100000, 8192, 91808},
		{64, 16, 48},
		{3, 1, 2},
		{1, 1, 1},
	}
	for _, tt := range tests {
		slots, conns := TableSizes(tt.max)
		if slots != tt.slots || conns != tt.conns {
			t.Errorf("TableSizes(%d) = %d, %d; want %d, %d", tt.max, slots, conns, tt.slots, tt.conns)
		}
	}
}
