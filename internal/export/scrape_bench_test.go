package export

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// BenchmarkScrape serves /metrics for 32 workers and 200 endpoints (the shape of make
// bench's memory run), gzip-compressed as Prometheus asks, uncompressed, and (for
// comparison) compressed by promhttp itself at gzip's default level.
func BenchmarkScrape(b *testing.B) {
	for _, name := range []string{"gzip", "identity", "gzip-promhttp-default"} {
		enc, _, _ := strings.Cut(name, "-")
		b.Run(name, func(b *testing.B) {
			a := aggregate.New(aggregate.DefaultConfig())
			const m = 100
			a.AddMaster(m, time.Now(), "app:app")
			var pids []uint32
			var started []time.Time
			for i := range 32 {
				pids = append(pids, uint32(m+1+i))
				started = append(started, time.Now())
			}
			a.SeedWorkers(m, pids, started)
			ts := uint64(1)
			for i := range 20000 {
				pid := pids[i%len(pids)]
				line := fmt.Sprintf("GET /p/page-%c%c", 'a'+i%26, 'a'+(i/26)%26)
				status := uint16(404)
				if i%100 == 0 {
					line, status = "GET /status/503", 503
				}
				e := events.Event{Kind: events.KindReqEnd, TGID: pid, FD: 9, Seq: uint32(i), Status: status, StartNS: ts, LastWriteNS: ts + 1000, BytesIn: 80, BytesOut: 150, Reason: events.EndClose, TS: ts + 2000, Line: []byte(line)}
				a.Handle(&e)
				ts += 5000
			}
			reg := prometheus.NewRegistry()
			reg.MustRegister(NewCollector(CollectorConfig{}, a, func() (uint64, error) { return 0, nil }, func() uint64 { return ts }))
			h := Handler(DefaultServerConfig(), reg, nil, slog.New(slog.DiscardHandler))
			if name == "gzip-promhttp-default" {
				h = promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
			}
			b.ReportAllocs()
			var size int
			for b.Loop() {
				req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
				req.Header.Set("Accept-Encoding", enc)
				rec := httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				body, _ := io.ReadAll(rec.Body)
				size = len(body)
			}
			b.ReportMetric(float64(size), "bytes")
		})
	}
}
