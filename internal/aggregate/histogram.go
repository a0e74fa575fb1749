package aggregate

import "math"

// Bucket bounds from README "Metrics".
var (
	DurationBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	SizeBuckets     = []float64{1024, 4096, 16384, 65536, 262144, 1048576, 4194304}
)

// Histogram counts observations per bucket (not cumulative) plus the overflow, and their sum.
type Histogram struct {
	Bounds []float64 // shared, never modified
	Counts []uint64  // len(Bounds)+1: the last is above every bound
	Sum    float64
	Count  uint64
	// Native, with Config.NativeHistograms, counts the same observations in exponential
	// buckets too (Prometheus native histograms); nil otherwise.
	Native *NativeBuckets
}

// NativeSchema is the resolution of the native buckets: boundaries at 2^(i/2^NativeSchema),
// eight a power of two, each about 9% wider than the one before, which is Prometheus' default
// resolution limit's neighbourhood and about 100 buckets from 1 µs to 60 s.
const NativeSchema = 3

// NativeZeroThreshold is the width of the zero bucket: only exact zeros (an empty request or
// response) fall in it. It is client_golang's default.
const NativeZeroThreshold = 2.938735877055719e-39

// NativeBuckets are the exponential buckets of one histogram: Positive[i] counts the
// observations v with 2^((i-1)/8) < v <= 2^(i/8), Zero those at or below NativeZeroThreshold.
type NativeBuckets struct {
	Zero     uint64
	Positive map[int32]uint64
}

// NativeIndex is the native bucket of a positive observation at NativeSchema.
func NativeIndex(v float64) int32 {
	frac, exp := math.Frexp(v) // v = frac·2^exp, frac in [0.5, 1)
	if frac == 0.5 {
		return int32(exp-1) << NativeSchema // a power of two is its bucket's upper bound
	}
	return int32(math.Ceil((float64(exp) + math.Log2(frac)) * (1 << NativeSchema)))
}

func (a *Aggregator) newHistogram(bounds []float64) Histogram {
	h := Histogram{Bounds: bounds, Counts: make([]uint64, len(bounds)+1)}
	if a.cfg.NativeHistograms {
		h.Native = &NativeBuckets{Positive: make(map[int32]uint64)}
	}
	return h
}

func (h *Histogram) observe(v float64) {
	i := 0
	for i < len(h.Bounds) && v > h.Bounds[i] {
		i++
	}
	h.Counts[i]++
	h.Sum += v
	h.Count++
	if h.Native != nil {
		if v <= NativeZeroThreshold {
			h.Native.Zero++
		} else {
			h.Native.Positive[NativeIndex(v)]++
		}
	}
}

func (h Histogram) clone() Histogram {
	h.Counts = append([]uint64(nil), h.Counts...)
	if h.Native != nil {
		n := &NativeBuckets{Zero: h.Native.Zero, Positive: make(map[int32]uint64, len(h.Native.Positive))}
		for i, c := range h.Native.Positive {
			n.Positive[i] = c
		}
		h.Native = n
	}
	return h
}
