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
