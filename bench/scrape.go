package main

import (
	"context"
	"fmt"
	"time"
)

// scrapePhase times scrapes of the memory run's observer, with its full label sets. Served:
// the compressed body to its last byte, as Prometheus (which asks for gzip) receives it.
// Beside it, a client that also gunzips and parses nothing: Go's default.
func (s *session) scrapePhase(ctx context.Context, ob *observer, body string) {
	o := s.o
	fmt.Printf("\n[scrape] %d scrapes of %s (%d bytes)\n", o.scrapes, ob.metricsURL(), len(body))
	var scrapeMS, gunzipMS []float64
	var gzBytes int64
	for i := 0; i < o.scrapes && ctx.Err() == nil; i++ {
		t := time.Now()
		n, err := scrapeGzip(ob.metricsURL())
		if err != nil {
			s.res.note("scrape %d failed: %v", i, err)
			continue
		}
		scrapeMS = append(scrapeMS, ms(time.Since(t)))
		gzBytes = n
	}
	for i := 0; i < o.scrapes/4 && ctx.Err() == nil; i++ {
		t := time.Now()
		if _, err := scrape(ob.metricsURL()); err != nil {
			continue
		}
		gunzipMS = append(gunzipMS, ms(time.Since(t)))
	}
	series, _ := countSeries(body)
	scrFig := newFigure("scrape time", "ms", scrapeMS, "≤ 10", atMost(10))
	scrFig.Note = fmt.Sprintf("%d workers, %d series, %d bytes (%d gzipped)", o.memWorkers, series, len(body), gzBytes)
	s.res.add(scrFig, newFigure("scrape time, client gunzips too (Go's http.Get)", "ms", gunzipMS, "", nil))
}
