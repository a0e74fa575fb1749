package export

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"github.com/prometheus/common/expfmt"

	"github.com/gpe-ebpf/gpe-ebpf/internal/listeners"
)

// fakeListeners is a ListenerReader over fixed replies; it records what it was asked.
type fakeListeners struct {
	byPID map[uint32][]listeners.Listener
	asked [][]uint32
}

func (f *fakeListeners) Read(pids []uint32) map[uint32][]listeners.Listener {
	f.asked = append(f.asked, append([]uint32(nil), pids...))
	out := make(map[uint32][]listeners.Listener)
	for _, pid := range pids {
		if ls, ok := f.byPID[pid]; ok {
			out[pid] = ls
		}
	}
	return out
}

// listenerScenario: master 100 on TCP v4, v6 and a Unix socket; master 200 is its USR2
// successor and shares its v4 socket (same inode) and has one socket of its own; master 300
// is unresolved (the reader returns nothing for it); two SO_REUSEPORT sockets of master 400
// share a name.
func listenerScenario() *fakeListeners {
	v4 := listeners.Listener{Name: "127.0.0.1:8000", Inode: 11, QueueLength: 3, QueueMax: 64, Drops: 17, HasDrops: true}
	return &fakeListeners{byPID: map[uint32][]listeners.Listener{
		100: {
			v4,
			{Name: "[::]:8000", Inode: 12, QueueLength: 0, QueueMax: 2048, Drops: 0, HasDrops: true},
			{Name: "/run/gunicorn.sock", Unix: true, Inode: 13, QueueLength: 5, QueueMax: 128},
		},
		200: {v4, {Name: "127.0.0.1:8001", Inode: 21, QueueLength: 1, QueueMax: 16, Drops: 2, HasDrops: true}},
		400: {
			{Name: "0.0.0.0:9000", Inode: 41, QueueLength: 1, QueueMax: 10, Drops: 4, HasDrops: true},
			{Name: "0.0.0.0:9000", Inode: 42, QueueLength: 2, QueueMax: 10, Drops: 5, HasDrops: true},
		},
	}}
}

func exposeListeners(t *testing.T, cfg CollectorConfig, f *fakeListeners, masters ...uint32) []byte {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewListenerCollector(cfg, func() []uint32 { return masters }, f))
	fams, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, fam := range fams {
		if err := enc.Encode(fam); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// TestListenersGolden checks both exposition modes against testdata/listeners*.prom
// (go test -update rewrites them).
func TestListenersGolden(t *testing.T) {
	for _, tc := range []struct {
		path string
		cfg  CollectorConfig
	}{
		{"testdata/listeners.prom", CollectorConfig{}},
		{"testdata/listeners_discover.prom", CollectorConfig{MasterLabel: true}},
	} {
		t.Run(tc.path, func(t *testing.T) {
			f := listenerScenario()
			got := exposeListeners(t, tc.cfg, f, 400, 300, 200, 100)
			if *update {
				if err := os.WriteFile(tc.path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(tc.path)
			if err != nil {
				t.Fatalf("read golden file: %v (run go test -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("exposition differs from %s:\n%s", tc.path, diff(string(want), string(got)))
			}
			if len(f.asked) != 1 || len(f.asked[0]) != 4 {
				t.Errorf("reader asked %v, want one read of the 4 masters", f.asked)
			}
			problems, err := promlint.New(bytes.NewReader(got)).Lint()
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("promlint: %s: %s", p.Metric, p.Text)
			}
		})
	}
}

// TestListenersSeries spells out what the golden files hold.
func TestListenersSeries(t *testing.T) {
	plain := string(exposeListeners(t, CollectorConfig{}, listenerScenario(), 100, 200, 300, 400))
	discover := string(exposeListeners(t, CollectorConfig{MasterLabel: true}, listenerScenario(), 100, 200, 300, 400))
	for _, tc := range []struct {
		out, series string
		want        bool
	}{
		// The socket masters 100 and 200 share is counted once without master_pid…
		{plain, `gunicorn_listen_drops_total{listener="127.0.0.1:8000"} 17`, true},
		{plain, `gunicorn_listen_queue_length{listener="127.0.0.1:8000"} 3`, true},
		{plain, `gunicorn_listen_queue_max{listener="[::]:8000"} 2048`, true},
		{plain, `gunicorn_listen_queue_length{listener="/run/gunicorn.sock"} 5`, true},
		{plain, `gunicorn_listen_queue_max{listener="/run/gunicorn.sock"} 128`, true},
		// …and once per master with it.
		{discover, `gunicorn_listen_queue_length{listener="127.0.0.1:8000",master_pid="100"} 3`, true},
		{discover, `gunicorn_listen_queue_length{listener="127.0.0.1:8000",master_pid="200"} 3`, true},
		{discover, `gunicorn_listen_queue_max{listener="127.0.0.1:8001",master_pid="200"} 16`, true},
		// Two SO_REUSEPORT sockets on one address are one listener: their sum.
		{plain, `gunicorn_listen_queue_length{listener="0.0.0.0:9000"} 3`, true},
		{plain, `gunicorn_listen_queue_max{listener="0.0.0.0:9000"} 20`, true},
		{discover, `gunicorn_listen_drops_total{listener="0.0.0.0:9000",master_pid="400"} 9`, true},
		// Unix listeners have no drops series; the unresolved master has no series.
		{plain, `gunicorn_listen_drops_total{listener="/run/gunicorn.sock"}`, false},
		{discover, `gunicorn_listen_drops_total{listener="/run/gunicorn.sock"`, false},
		{discover, `master_pid="300"`, false},
	} {
		if got := strings.Contains(tc.out, tc.series); got != tc.want {
			t.Errorf("%s present = %v, want %v", tc.series, got, tc.want)
		}
	}
	for _, line := range strings.Split(discover, "\n") {
		if strings.HasPrefix(line, "gunicorn_") && !strings.Contains(line, `master_pid="`) {
			t.Errorf("series without master_pid under --discover: %s", line)
		}
	}
}

// TestListenersNoMaster: nothing attached, nothing read.
func TestListenersNoMaster(t *testing.T) {
	f := listenerScenario()
	if out := exposeListeners(t, CollectorConfig{}, f); len(out) != 0 || len(f.asked) != 0 {
		t.Errorf("with no master: exposition %q, reads %v", out, f.asked)
	}
}
