package export

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestDropCollector(t *testing.T) {
	c := NewDropCollector(func() (map[string]uint64, error) {
		return map[string]uint64{"table_full": 7, "tls_untied": 2}, nil
	})
	want := `# HELP gpe_ebpf_connections_dropped_total Requests the kernel side could not track, by reason: table_full, a request on a connection the full connection table (--max-connections) had no room for; tls_untied, a TLS read or write whose plaintext the uprobes saw on an SSL tied to no socket (one a call). They are not in the request metrics.
# TYPE gpe_ebpf_connections_dropped_total counter
gpe_ebpf_connections_dropped_total{reason="table_full"} 7
gpe_ebpf_connections_dropped_total{reason="tls_untied"} 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	if problems, err := testutil.CollectAndLint(c); err != nil || len(problems) > 0 {
		t.Fatalf("lint: %v %v", problems, err)
	}
	failing := NewDropCollector(func() (map[string]uint64, error) { return nil, errors.New("gone") })
	if n := testutil.CollectAndCount(failing); n != 0 {
		t.Fatalf("a failed read sent %d series", n)
	}
}
