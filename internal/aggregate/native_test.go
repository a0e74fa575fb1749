package aggregate

import (
	"math"
	"testing"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

func TestNativeIndex(t *testing.T) {
	for _, tt := range []struct {
		v    float64
		want int32
	}{
		{1, 0}, {2, 8}, {0.5, -8}, {4096, 96},
		{1.05, 1},    // 1 < 1.05 <= 2^(1/8) = 1.0905
		{1.1, 2},     // 2^(1/8) < 1.1 <= 2^(2/8)
		{0.001, -79}, // 2^(-80/8) = 0.000977 < 0.001 <= 2^(-79/8) = 0.00106
		{math.Nextafter(2, 3), 9},
	} {
		if got := NativeIndex(tt.v); got != tt.want {
			t.Errorf("NativeIndex(%v) = %d, want %d", tt.v, got, tt.want)
		}
		lo, hi := math.Exp2(float64(tt.want-1)/8), math.Exp2(float64(tt.want)/8)
		if !(tt.v > lo*(1-1e-12) && tt.v <= hi*(1+1e-12)) {
			t.Errorf("%v is not in bucket %d's (%v, %v]", tt.v, tt.want, lo, hi)
		}
	}
}

// TestNativeHistograms: with NativeHistograms, a request's duration and sizes are counted in
// the native buckets too, and a snapshot's copy does not move with later requests; without it
// there are none.
func TestNativeHistograms(t *testing.T) {
	for _, native := range []bool{false, true} {
		cfg := DefaultConfig()
		cfg.NativeHistograms = native
		base := time.Unix(1_700_000_000, 0)
		cfg.Now = func() time.Time { return base }
		cfg.MonoToWall = func(ns uint64) time.Time { return base.Add(time.Duration(ns)) }
		a := New(cfg)
		a.AddMaster(100, base, "app:app")
		a.SeedWorkers(100, []uint32{101}, []time.Time{base})
		end := func(start uint64, d time.Duration, in, out uint64) {
			a.Handle(&events.Event{Kind: events.KindReqEnd, TGID: 101, FD: 5, Seq: 1, Status: 200, StartNS: start,
				LastWriteNS: start + uint64(d), BytesIn: in, BytesOut: out, Reason: events.EndClose, TS: start + uint64(d) + 1,
				Line: []byte("GET /ok")})
		}
		end(uint64(time.Second), time.Second, 0, 4096)
		s := a.Snapshot(0)
		w := s.Masters[0].Workers[0]
		if !native {
			if w.Duration.Native != nil || w.ReqSize.Native != nil || s.Masters[0].Routes[0].Duration.Native != nil {
				t.Fatal("native buckets without NativeHistograms")
			}
			continue
		}
		if got := w.Duration.Native.Positive; len(got) != 1 || got[0] != 1 {
			t.Errorf("duration 1 s: native %v, want bucket 0 = 1", got)
		}
		if got := s.Masters[0].Routes[0].Duration.Native.Positive; len(got) != 1 || got[0] != 1 {
			t.Errorf("route duration 1 s: native %v, want bucket 0 = 1", got)
		}
		if n := w.ReqSize.Native; n.Zero != 1 || len(n.Positive) != 0 {
			t.Errorf("request of 0 bytes: native %+v, want one zero", *n)
		}
		if got := w.RespSize.Native.Positive; len(got) != 1 || got[96] != 1 {
			t.Errorf("response of 4096 bytes: native %v, want bucket 96 = 1", got)
		}
		end(uint64(5*time.Second), time.Second, 0, 4096)
		if got := w.Duration.Native.Positive[0]; got != 1 {
			t.Errorf("a snapshot's native buckets moved with a later request: %d", got)
		}
		if got := a.Snapshot(0).Masters[0].Workers[0].Duration.Native.Positive[0]; got != 2 {
			t.Errorf("after two requests of 1 s: bucket 0 = %d, want 2", got)
		}
	}
}
