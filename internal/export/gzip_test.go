package export

import (
	"compress/gzip"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestAcceptsGzip(t *testing.T) {
	tests := []struct {
		header string
		want   bool
	}{
		{"", false},
		{"gzip", true},
		{"identity", false},
		{"zstd, gzip;q=0.5", true},
		{"gzip;q=0", false},
		{"GZIP", true},
		{"*", true},
		{"deflate, identity;q=1", false},
	}
	for _, tt := range tests {
		t.Run(tt.header, func(t *testing.T) {
			if got := acceptsGzip(tt.header); got != tt.want {
				t.Fatalf("acceptsGzip(%q) = %v, want %v", tt.header, got, tt.want)
			}
		})
	}
}

// A gzip-compressed scrape decodes to the same exposition as an uncompressed one.
func TestHandlerGzip(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(CollectorConfig{Version: "test"}, scenario(t), nil, func() uint64 { return 0 }))
	h := Handler(DefaultServerConfig(), reg, nil, slog.New(slog.DiscardHandler))
	get := func(enc string) *http.Response {
		req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
		req.Header.Set("Accept-Encoding", enc)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Result()
	}
	plain := get("identity")
	if ce := plain.Header.Get("Content-Encoding"); ce != "" {
		t.Fatalf("identity answered with Content-Encoding %q", ce)
	}
	want, _ := io.ReadAll(plain.Body)
	zipped := get("gzip")
	if ce := zipped.Header.Get("Content-Encoding"); ce != "gzip" {
		t.Fatalf("gzip answered with Content-Encoding %q", ce)
	}
	zr, err := gzip.NewReader(zipped.Body)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("gzip body differs:\n%s\nwant:\n%s", got, want)
	}
}
