package aggregate

import (
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
)

// BenchmarkHandle feeds the three records of a sync worker's request (start, response, end
// by close) for two workers and a few paths, and reports the cost per event: the whole of
// the reader's per-event work above Decode.
func BenchmarkHandle(b *testing.B) {
	for _, bc := range []struct {
		name  string
		paths []string
	}{
		{"hello", []string{"GET /ok"}},
		{"ids", []string{"GET /users/42", "GET /users/1234/orders/99", "POST /upload", "GET /ok"}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.MonoToWall = wall
			a := New(cfg)
			a.AddMaster(masterPID, epoch, "app:app")
			workers := []uint32{masterPID + 1, masterPID + 2}
			feed(a, evFork(1, workers[0], masterPID), evFork(2, workers[1], masterPID))
			b.ReportAllocs()
			var ev probes.Event
			n := 0
			for i := 0; b.Loop(); i++ {
				w := workers[i%2]
				seq := uint32(i)
				ts := uint64(1000 + i*1000)
				ev = evStart(ts, w, 9, seq, bc.paths[i%len(bc.paths)], 80)
				a.Handle(&ev)
				ev = evResp(ts+300, w, 9, seq, ts, 200, 80, 150)
				a.Handle(&ev)
				ev = evEnd(ts+400, w, 9, seq, ts, ts+300, 80, 150, 200, probes.EndClose)
				a.Handle(&ev)
				n += 3
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/event")
		})
	}
}
