package main

import "testing"

func TestParseWrk(t *testing.T) {
	tests := []struct {
		name, out string
		want      wrkResult
	}{
		{"seconds", "  39738 requests in 5.01s, 5.31MB read\n", wrkResult{Requests: 39738, Seconds: 5.01}},
		{"minutes", "  196398 requests in 1.00m, 24.03MB read\n  Non-2xx or 3xx responses: 196398\n", wrkResult{Requests: 196398, Seconds: 60, Non2xx: 196398}},
		{"errors", "  10 requests in 900.00ms, 1MB read\n  Socket errors: connect 1, read 2, write 3, timeout 4\n", wrkResult{Requests: 10, Seconds: 0.9, SocketErrors: 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseWrk(tt.out)
			if err != nil {
				t.Fatal(err)
			}
			got.PerSec = 0
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestParseHey: hey's summary, as the tls phase reads it.
func TestParseHey(t *testing.T) {
	out := `
Summary:
  Total:	2.0031 secs
  Slowest:	0.0411 secs
  Requests/sec:	611.5399

Status code distribution:
  [200]	1220 responses
  [503]	5 responses

Error distribution:
  [3]	Get "https://127.0.0.1:1/ok": EOF
`
	r, err := parseHey(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Requests != 1225 || r.Non2xx != 5 || r.SocketErrors != 3 || r.Seconds != 2.0031 {
		t.Errorf("parseHey = %+v", r)
	}
}
