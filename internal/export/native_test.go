package export

import (
	"time"

	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// nativeBuckets decodes a histogram's native spans and deltas into index → count.
func nativeBuckets(t *testing.T, h *dto.Histogram) map[int32]uint64 {
	t.Helper()
	out := map[int32]uint64{}
	var idx int32
	var count int64
	k := 0
	for s, span := range h.GetPositiveSpan() {
		if s == 0 {
			idx = span.GetOffset()
		} else {
			idx += span.GetOffset()
		}
		for range span.GetLength() {
			count += h.GetPositiveDelta()[k]
			k++
			if count < 0 {
				t.Fatalf("negative bucket count at %d", idx)
			}
			if count > 0 {
				out[idx] = uint64(count)
			}
			idx++
		}
	}
	if k != len(h.GetPositiveDelta()) {
		t.Fatalf("spans cover %d buckets, %d deltas", k, len(h.GetPositiveDelta()))
	}
	return out
}

// TestNativeHistogramMatchesClientGolang: the native form written from the aggregate's
// buckets is the one client_golang's own native histogram (same schema, same zero threshold)
// gives for the same observations, and the classic buckets stay.
func TestNativeHistogramMatchesClientGolang(t *testing.T) {
	ref := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ref", Help: "ref",
		Buckets: aggregate.DurationBuckets, NativeHistogramBucketFactor: math.Exp2(math.Exp2(-aggregate.NativeSchema))})
	h := aggregate.Histogram{Bounds: aggregate.DurationBuckets, Counts: make([]uint64, len(aggregate.DurationBuckets)+1),
		Native: &aggregate.NativeBuckets{Positive: map[int32]uint64{}}}
	for i, v := range []float64{0, 0.0004, 0.001, 0.0011, 0.002, 0.002, 0.05, 0.3, 1, 1, 1.5, 2, 7, 59, 61, 0.00001} {
		ref.Observe(v)
		j := 0
		for j < len(h.Bounds) && v > h.Bounds[j] {
			j++
		}
		h.Counts[j]++
		h.Sum += v
		h.Count++
		if v <= aggregate.NativeZeroThreshold {
			h.Native.Zero++
		} else {
			h.Native.Positive[aggregate.NativeIndex(v)]++
		}
		var want, got dto.Metric
		if err := ref.Write(&want); err != nil {
			t.Fatal(err)
		}
		if err := newHistogramMetric(prometheus.NewDesc("x", "x", nil, nil), h, time.Time{}, nil).Write(&got); err != nil {
			t.Fatal(err)
		}
		w, g := want.GetHistogram(), got.GetHistogram()
		if g.GetSchema() != w.GetSchema() || g.GetZeroThreshold() != w.GetZeroThreshold() || g.GetZeroCount() != w.GetZeroCount() {
			t.Fatalf("after %d observations: schema %d zero %g/%d, client_golang %d zero %g/%d", i+1,
				g.GetSchema(), g.GetZeroThreshold(), g.GetZeroCount(), w.GetSchema(), w.GetZeroThreshold(), w.GetZeroCount())
		}
		wb, gb := nativeBuckets(t, w), nativeBuckets(t, g)
		if len(wb) != len(gb) {
			t.Fatalf("after %d observations: buckets %v, client_golang %v", i+1, gb, wb)
		}
		for k, c := range wb {
			if gb[k] != c {
				t.Fatalf("after %d observations: buckets %v, client_golang %v", i+1, gb, wb)
			}
		}
		if len(g.GetBucket()) != len(w.GetBucket()) {
			t.Fatalf("classic buckets: %d, client_golang %d", len(g.GetBucket()), len(w.GetBucket()))
		}
		for b := range w.GetBucket() {
			if g.GetBucket()[b].GetCumulativeCount() != w.GetBucket()[b].GetCumulativeCount() {
				t.Fatalf("classic bucket le=%g: %d, client_golang %d", w.GetBucket()[b].GetUpperBound(),
					g.GetBucket()[b].GetCumulativeCount(), w.GetBucket()[b].GetCumulativeCount())
			}
		}
	}
}

// TestNativeHistogramEmpty: without an observation the histogram is still marked native.
func TestNativeHistogramEmpty(t *testing.T) {
	h := aggregate.Histogram{Bounds: aggregate.SizeBuckets, Counts: make([]uint64, len(aggregate.SizeBuckets)+1),
		Native: &aggregate.NativeBuckets{Positive: map[int32]uint64{}}}
	var m dto.Metric
	if err := newHistogramMetric(prometheus.NewDesc("x", "x", nil, nil), h, time.Time{}, nil).Write(&m); err != nil {
		t.Fatal(err)
	}
	if hh := m.GetHistogram(); hh.Schema == nil || len(hh.GetPositiveSpan()) != 1 || len(hh.GetBucket()) != len(aggregate.SizeBuckets) {
		t.Fatalf("empty native histogram: %v", hh)
	}
}
