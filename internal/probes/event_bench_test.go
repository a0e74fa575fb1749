package probes

import (
	"encoding/binary"
	"testing"
)

// BenchmarkDecode decodes the three records every request produces; it must not allocate.
func BenchmarkDecode(b *testing.B) {
	le := binary.LittleEndian
	line := "GET /users/42"
	start := make([]byte, reqStartSize)
	le.PutUint32(start[0:], uint32(KindReqStart))
	le.PutUint32(start[4:], 1234)
	le.PutUint16(start[60:], uint16(len(line)))
	copy(start[reqSize:], line)
	resp := make([]byte, reqSize)
	le.PutUint32(resp[0:], uint32(KindReqResp))
	le.PutUint16(resp[56:], 200)
	end := make([]byte, reqSize)
	le.PutUint32(end[0:], uint32(KindReqEnd))
	end[58] = byte(EndClose)
	records := [][]byte{start, resp, end}

	var ev Event
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := Decode(records[i%3], &ev); err != nil {
			b.Fatal(err)
		}
	}
}
