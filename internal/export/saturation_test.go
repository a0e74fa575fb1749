package export

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
)

// TestTimeoutSeries: the master's timeout is served only when it is known and not 0 (no
// timeout: Gunicorn kills no worker for silence, and a heartbeat alert must not compare with 0).
func TestTimeoutSeries(t *testing.T) {
	for _, tt := range []struct {
		name     string
		settings aggregate.MasterSettings
		want     string
	}{
		{"known", aggregate.MasterSettings{Timeout: 45 * time.Second, TimeoutKnown: true}, "gunicorn_master_timeout_seconds 45\n"},
		{"unknown", aggregate.MasterSettings{}, ""},
		{"no timeout", aggregate.MasterSettings{TimeoutKnown: true}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := aggregate.New(aggregate.DefaultConfig())
			a.AddMaster(100, time.Now(), "app:app")
			a.SetMasterSettings(100, tt.settings)
			c := NewCollector(CollectorConfig{}, a, nil, func() uint64 { return 0 })
			want := tt.want
			if want != "" {
				want = "# HELP gunicorn_master_timeout_seconds The master's worker timeout, when its command line or --worker-timeout says it.\n# TYPE gunicorn_master_timeout_seconds gauge\n" + want
			}
			if err := testutil.CollectAndCompare(c, strings.NewReader(want), "gunicorn_master_timeout_seconds"); err != nil {
				t.Error(err)
			}
		})
	}
}
