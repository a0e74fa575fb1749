package aggregate

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
}

func newHistogram(bounds []float64) Histogram {
	return Histogram{Bounds: bounds, Counts: make([]uint64, len(bounds)+1)}
}

func (h *Histogram) observe(v float64) {
	i := 0
	for i < len(h.Bounds) && v > h.Bounds[i] {
		i++
	}
	h.Counts[i]++
	h.Sum += v
	h.Count++
}

func (h Histogram) clone() Histogram {
	h.Counts = append([]uint64(nil), h.Counts...)
	return h
}
