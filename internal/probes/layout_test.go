package probes

import (
	"testing"
	"unsafe"
)

// The hand-written decoder must agree with the Go types bpf2go generated from bpf/gpe.h.
func TestRecordLayout(t *testing.T) {
	tests := []struct {
		name      string
		got, want uintptr
	}{
		{"hdr", unsafe.Sizeof(gpeGpeHdr{}), hdrSize},
		{"proc", unsafe.Sizeof(gpeGpeProcEvent{}), procSize},
		{"req", unsafe.Sizeof(gpeGpeReqEvent{}), reqSize},
		{"req_start", unsafe.Sizeof(gpeGpeReqStart{}), reqStartSize},
		{"req.est_ns", unsafe.Offsetof(gpeGpeReqEvent{}.EstNs), 40},
		{"req.status", unsafe.Offsetof(gpeGpeReqEvent{}.Status), 64},
		{"req.line_len", unsafe.Offsetof(gpeGpeReqEvent{}.LineLen), 68},
		{"req.bytes_out", unsafe.Offsetof(gpeGpeReqEvent{}.BytesOut), 56},
		{"proc.busy_ns", unsafe.Offsetof(gpeGpeProcEvent{}.BusyNs), 40},
		{"proc.start_ns", unsafe.Offsetof(gpeGpeProcEvent{}.StartNs), 32},
		{"proc.code", unsafe.Offsetof(gpeGpeProcEvent{}.Code), 24},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %d, want %d", tt.got, tt.want)
			}
		})
	}
}

// The Go constants must have the values of the C enums, which bpf2go generated (-type).
func TestEnumValues(t *testing.T) {
	tests := []struct {
		name      string
		got, want uint64
	}{
		{"fork", uint64(KindFork), uint64(gpeGpeEventKindGPE_EV_FORK)},
		{"exit", uint64(KindExit), uint64(gpeGpeEventKindGPE_EV_EXIT)},
		{"exec", uint64(KindExec), uint64(gpeGpeEventKindGPE_EV_EXEC)},
		{"signal", uint64(KindSignal), uint64(gpeGpeEventKindGPE_EV_SIGNAL)},
		{"oom", uint64(KindOOM), uint64(gpeGpeEventKindGPE_EV_OOM)},
		{"req_end", uint64(KindReqEnd), uint64(gpeGpeEventKindGPE_EV_REQ_END)},
		{"req_line", uint64(KindReqLine), uint64(gpeGpeEventKindGPE_EV_REQ_LINE)},
		{"tls", uint64(KindTLS), uint64(gpeGpeEventKindGPE_EV_TLS)},
		{"master", uint64(ProcMaster), uint64(gpeGpeProcKindGPE_PROC_MASTER)},
		{"worker", uint64(ProcWorker), uint64(gpeGpeProcKindGPE_PROC_WORKER)},
		{"end_next", uint64(EndNext), uint64(gpeGpeEndReasonGPE_END_NEXT)},
		{"end_close", uint64(EndClose), uint64(gpeGpeEndReasonGPE_END_CLOSE)},
		{"end_shutdown", uint64(EndShutdown), uint64(gpeGpeEndReasonGPE_END_SHUTDOWN)},
		{"end_reused", uint64(EndReused), uint64(gpeGpeEndReasonGPE_END_REUSED)},
		{"end_pipeline", uint64(EndPipeline), uint64(gpeGpeEndReasonGPE_END_PIPELINE)},
		{"end_wait", uint64(EndWait), uint64(gpeGpeEndReasonGPE_END_WAIT)},
		{"end_exit", uint64(EndExit), uint64(gpeGpeEndReasonGPE_END_EXIT)},
		{"flag_tls", uint64(FlagTLS), uint64(gpeGpeReqFlagGPE_FLAG_TLS)},
		{"flag_client_gone", uint64(FlagClientGone), uint64(gpeGpeReqFlagGPE_FLAG_CLIENT_GONE)},
		{"line_max", LineMax, uint64(len(gpeGpeReqStart{}.Line))},
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
