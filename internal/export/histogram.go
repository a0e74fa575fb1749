package export

import (
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// histogramMetric exposes a snapshot's histogram as it is. prometheus.MustNewConstHistogram
// takes the buckets as a map, sorts them, and allocates three objects per bucket when written:
// with 200 route histograms and 32 workers that was a third of a scrape's allocations. Here the
// buckets of one histogram are one slice.
type histogramMetric struct {
	desc   *prometheus.Desc
	labels []*dto.LabelPair
	h      aggregate.Histogram // Counts per bucket, not cumulative; a copy no one else writes
	ctime  time.Time           // when counting began (OpenMetrics _created); zero: unknown
}

func newHistogramMetric(desc *prometheus.Desc, h aggregate.Histogram, ctime time.Time, labelValues []string) prometheus.Metric {
	return &histogramMetric{desc: desc, labels: prometheus.MakeLabelPairs(desc, labelValues), h: h, ctime: ctime}
}

func (m *histogramMetric) Desc() *prometheus.Desc { return m.desc }

func (m *histogramMetric) Write(out *dto.Metric) error {
	n := len(m.h.Bounds)
	cum := make([]uint64, n)
	buckets := make([]dto.Bucket, n)
	ptrs := make([]*dto.Bucket, n)
	var acc uint64
	for i := range n {
		acc += m.h.Counts[i]
		cum[i] = acc
		buckets[i].CumulativeCount = &cum[i]
		buckets[i].UpperBound = &m.h.Bounds[i]
		ptrs[i] = &buckets[i]
	}
	out.Label = m.labels
	out.Histogram = &dto.Histogram{SampleCount: &m.h.Count, SampleSum: &m.h.Sum, Bucket: ptrs}
	if !m.ctime.IsZero() {
		out.Histogram.CreatedTimestamp = timestamppb.New(m.ctime)
	}
	if m.h.Native != nil {
		writeNative(out.Histogram, m.h.Native)
	}
	return nil
}

// writeNative adds the native (exponential) form to a histogram that keeps its classic
// buckets: a scraper that reads the protobuf format and takes native histograms (Prometheus
// with native histograms on) gets both, the others only see the classic buckets. The buckets
// are sent as spans of consecutive indexes, their counts as deltas from the bucket before.
func writeNative(out *dto.Histogram, n *aggregate.NativeBuckets) {
	schema := int32(aggregate.NativeSchema)
	zt := aggregate.NativeZeroThreshold
	zero := n.Zero
	out.Schema, out.ZeroThreshold, out.ZeroCount = &schema, &zt, &zero
	idx := make([]int32, 0, len(n.Positive))
	for i, c := range n.Positive {
		if c > 0 {
			idx = append(idx, i)
		}
	}
	slices.Sort(idx)
	if len(idx) == 0 {
		// No observation yet: an empty span still marks the histogram as native.
		out.PositiveSpan = []*dto.BucketSpan{{Offset: new(int32), Length: new(uint32)}}
		return
	}
	out.PositiveDelta = make([]int64, len(idx))
	var prevCount int64
	var prevIdx int32
	for k, i := range idx {
		c := int64(n.Positive[i])
		out.PositiveDelta[k] = c - prevCount
		prevCount = c
		if k == 0 || i != prevIdx+1 {
			offset := i // the first span starts at its index, the others after a gap
			if k > 0 {
				offset = i - prevIdx - 1
			}
			out.PositiveSpan = append(out.PositiveSpan, &dto.BucketSpan{Offset: &offset, Length: new(uint32)})
		}
		*out.PositiveSpan[len(out.PositiveSpan)-1].Length++
		prevIdx = i
	}
}
