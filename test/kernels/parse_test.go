package kernels

import (
	"math"
	"testing"
)

// The serial log's GPE-DD lines become each mode's dd ratios: a repeated line counts once, a
// line without a usable baseline not at all, and the summary is the median and the spread.
func TestParseSerialDD(t *testing.T) {
	log := "GPE-KERNEL release=7.2.13+deb14-cloud-amd64 machine=x86_64\r\n" +
		"GPE-DD mode=syscall pair=1 without=1.0000 with=1.2500 count=300000\r\n" +
		"GPE-DD mode=syscall pair=1 without=1.0000 with=1.2500 count=300000\r\n" + // the console repeated it
		"[   12.3] some kernel message GPE-DD mode=syscall pair=2 without=1.1000 with=1.3200 count=300000\n" +
		"GPE-DD mode=syscall pair=3 without=0.9000 with=1.2600 count=300000\n" +
		"GPE-DD mode=fentry pair=1 without=0.0000 with=1.0000 count=300000\n" +
		"GPE-DD mode=fentry pair=2 without=1.0000 with=1.0100 count=300000\n" +
		"GPE-RESULT mode=syscall result=pass hooks=syscall detail=all checks passed (gpe-ebpf loaded hooks=syscall)\n"
	r := parseSerial(log)
	if r.release != "7.2.13+deb14-cloud-amd64" {
		t.Errorf("release %q", r.release)
	}
	if got := r.results["syscall"]; got.result != "pass" || got.hooks != "syscall" {
		t.Errorf("syscall result %+v", got)
	}
	tests := []struct {
		mode             string
		pairs            int
		median, min, max float64
		printed          string
	}{
		{"syscall", 3, 1.25, 1.2, 1.4, "1.25 (1.20–1.40)"},
		{"fentry", 1, 1.01, 1.01, 1.01, "1.01 (1.01–1.01)"},
		{"socket", 0, 0, 0, 0, "-"},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			c := costOf(r.dd[tc.mode])
			near := func(a, b float64) bool { return math.Abs(a-b) < 1e-9 }
			if c.Pairs != tc.pairs || !near(c.Median, tc.median) || !near(c.Min, tc.min) || !near(c.Max, tc.max) {
				t.Errorf("cost %+v, want %d pairs, median %g, %g–%g", c, tc.pairs, tc.median, tc.min, tc.max)
			}
			if c.String() != tc.printed {
				t.Errorf("printed %q, want %q", c.String(), tc.printed)
			}
		})
	}
	if c := costOf([]float64{1.0, 1.1}); math.Abs(c.Median-1.05) > 1e-9 {
		t.Errorf("median of two pairs %g, want their mean 1.05", c.Median)
	}
}
