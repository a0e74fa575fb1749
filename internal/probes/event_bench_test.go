package probes

import (
	"encoding/binary"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// BenchmarkDecode decodes the record every request produces (and a process record); it must
// not allocate.
func BenchmarkDecode(b *testing.B) {
	le := binary.LittleEndian
	line := "GET /users/42"
	end := make([]byte, reqSize+(len(line)+7)&^7)
	le.PutUint32(end[0:], uint32(events.KindReqEnd))
	le.PutUint32(end[4:], 1234)
	le.PutUint16(end[offStatus:], 200)
	end[offReason] = byte(events.EndClose)
	le.PutUint16(end[offLineLen:], uint16(len(line)))
	copy(end[reqSize:], line)
	exit := make([]byte, procSize)
	le.PutUint32(exit[0:], uint32(events.KindExit))
	records := [][]byte{end, exit}

	var ev events.Event
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := Decode(records[i%2], &ev); err != nil {
			b.Fatal(err)
		}
	}
}
