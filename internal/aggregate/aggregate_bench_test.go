package aggregate

import (
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// BenchmarkHandle feeds the record of a sync worker's request (its END, by close) for two
// workers and a few paths, and reports the cost per event: the whole of the reader's
// per-event work above Decode (one event is one request now). "downstream" also sends each
// request's DOWNSTREAM record first (Redis and PostgreSQL calls): ns/event is then per request.
func BenchmarkHandle(b *testing.B) {
	redis := events.Downstream{Peer: events.Peer{Family: events.FamilyInet, Port: 6379, Addr: [16]byte{127, 0, 0, 1}}, Calls: 10, NS: 500_000}
	pg := events.Downstream{Peer: events.Peer{Family: events.FamilyInet, Port: 5432, Addr: [16]byte{10, 0, 0, 5}}, Calls: 3, NS: 2_000_000}
	for _, bc := range []struct {
		name  string
		paths []string
		calls []events.Downstream
	}{
		{"hello", []string{"GET /ok"}, nil},
		{"ids", []string{"GET /users/42", "GET /users/1234/orders/99", "POST /upload", "GET /ok"}, nil},
		{"downstream", []string{"GET /users/42", "GET /ok"}, []events.Downstream{redis, pg}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cfg := DefaultConfig()
			cfg.MonoToWall = wall
			a := New(cfg)
			a.AddMaster(masterPID, epoch, "app:app")
			workers := []uint32{masterPID + 1, masterPID + 2}
			feed(a, evFork(1, workers[0], masterPID), evFork(2, workers[1], masterPID))
			lines := make([][]byte, len(bc.paths)) // as Decode leaves them: no allocation per record
			for i, p := range bc.paths {
				lines[i] = []byte(p)
			}
			b.ReportAllocs()
			var ev, ds events.Event
			n := 0
			for i := 0; b.Loop(); i++ {
				ts := uint64(1000 + i*1000)
				if bc.calls != nil {
					ds = events.Event{Kind: events.KindDownstream, TGID: workers[i%2], Seq: uint32(i), TS: ts + 300}
					ds.SetDownstream(bc.calls)
					a.Handle(&ds)
				}
				ev = evReq(ts+400, workers[i%2], 9, uint32(i), "", ts, ts+300, 80, 150, 200, events.EndClose)
				ev.Line = lines[i%len(lines)]
				a.Handle(&ev)
				n++
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/event")
		})
	}
}
