package redisfwd

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func collectorConfig(s *redisServer) CollectorConfig {
	cfg := DefaultCollectorConfig()
	cfg.Host, cfg.Port, cfg.Password = "127.0.0.1", s.port, s.password
	cfg.KeyPrefix = "test:gpe:"
	return cfg
}

// seriesByInstance returns instance label -> label set of every series of
// family name, as "k=v,k=v" strings, sorted.
func seriesByInstance(mf *dto.MetricFamily) map[string][]string {
	out := map[string][]string{}
	if mf == nil {
		return out
	}
	for _, m := range mf.Metric {
		var inst string
		var pairs []string
		for _, lp := range m.Label {
			if lp.GetName() == InstanceLabel {
				inst = lp.GetValue()
				continue
			}
			pairs = append(pairs, lp.GetName()+"="+lp.GetValue())
		}
		out[inst] = append(out[inst], strings.Join(pairs, ","))
	}
	for _, v := range out {
		slices.Sort(v)
	}
	return out
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// TestCollector runs two real forwarders into one Redis, adds a stale, a
// broken and an empty instance by hand, and scrapes the collector.
func TestCollector(t *testing.T) {
	const interval = 300 * time.Millisecond
	s := startRedis(t, "pw")
	rc := s.client(0)
	defer rc.Close()
	bg := context.Background()

	ctx, cancel := context.WithCancel(bg)
	var running []chan struct{}
	defer func() {
		cancel()
		for _, d := range running {
			<-d
		}
	}()
	for _, inst := range []string{"web-1", "web-2"} {
		reg, _ := gunicornRegistry(t)
		// A series that already has an instance label: the collector
		// overwrites it with the forwarding instance.
		info := prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "app_info", Help: "App info.", ConstLabels: prometheus.Labels{"instance": "bogus", "app": inst},
		})
		info.Set(1)
		reg.MustRegister(info)
		f, err := NewForwarder(forwarderConfig(s, inst, interval), reg, nil, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		running = append(running, done)
		go func() { f.Run(ctx); close(done) }()
	}
	eventually(t, 5*time.Second, "both instances to forward", func() bool {
		return rc.Exists(bg, "test:gpe:web-1:latest", "test:gpe:web-2:latest").Val() == 2
	})

	// web-3: a real exposition, but its metadata is 60 s old with a 1 s
	// interval: stale. web-4: fresh metadata, garbage exposition. web-5: in
	// the set with no keys at all.
	staleMeta, _ := json.Marshal(Metadata{
		Timestamp: float64(time.Now().Add(-60*time.Second).UnixMilli()) / 1000, Host: "old", Port: 9090,
		Interval: 1, Forwarder: "redis", Masters: []int{}, Instance: "web-3",
	})
	freshMeta, _ := json.Marshal(Metadata{
		Timestamp: float64(time.Now().UnixMilli()) / 1000, Host: "h", Port: 9090,
		Interval: 3600, Forwarder: "redis", Masters: []int{}, Instance: "web-4",
	})
	web1Text := rc.Get(bg, "test:gpe:web-1:latest").Val()
	for _, cmd := range [][]any{
		{"SET", "test:gpe:web-3:latest", web1Text},
		{"SET", "test:gpe:web-3:metadata", string(staleMeta)},
		{"SET", "test:gpe:web-4:latest", "this is { not an exposition\n"},
		{"SET", "test:gpe:web-4:metadata", string(freshMeta)},
		{"SADD", "test:gpe:instances", "web-3", "web-4", "web-5"},
	} {
		if err := rc.Do(bg, cmd...).Err(); err != nil {
			t.Fatalf("%v: %v", cmd[0], err)
		}
	}

	tests := []struct {
		name        string
		removeStale bool
		wantMembers []string // instances set after the scrape
	}{
		{name: "stale kept in the set", removeStale: false, wantMembers: []string{"web-1", "web-2", "web-3", "web-4", "web-5"}},
		{name: "stale removed from the set", removeStale: true, wantMembers: []string{"web-1", "web-2", "web-4", "web-5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := collectorConfig(s)
			cfg.RemoveStale = tt.removeStale
			c, err := NewCollector(cfg, testLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			srv := httptest.NewServer(c)
			defer srv.Close()

			code, body := get(t, srv.URL+"/metrics")
			if code != http.StatusOK {
				t.Fatalf("GET /metrics = %d: %s", code, body)
			}
			fams := parseText(t, body) // also fails on a family declared twice
			if n := strings.Count(body, "# TYPE gunicorn_worker_requests_total "); n != 1 {
				t.Errorf("gunicorn_worker_requests_total declared %d times, want once (merged)", n)
			}
			wantWorkers := []string{"worker_id=worker_1_1700000000", "worker_id=worker_2_1700000001"}
			for _, name := range []string{"gunicorn_worker_requests_total", "gunicorn_worker_memory_bytes", "gunicorn_worker_request_duration_seconds"} {
				got := seriesByInstance(fams[name])
				want := map[string][]string{"web-1": wantWorkers, "web-2": wantWorkers}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s series by instance = %v, want %v", name, got, want)
				}
			}
			if got := seriesByInstance(fams["gunicorn_master_worker_restarts_total"]); len(got) != 2 || got["web-1"] == nil || got["web-2"] == nil {
				t.Errorf("gunicorn_master_worker_restarts_total by instance = %v, want web-1 and web-2", got)
			}
			// The pre-existing instance="bogus" was overwritten.
			got := seriesByInstance(fams["app_info"])
			want := map[string][]string{"web-1": {"app=web-1"}, "web-2": {"app=web-2"}}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("app_info by instance = %v, want %v", got, want)
			}
			for _, gone := range []string{"web-3", "web-4", "web-5", "bogus"} {
				if strings.Contains(body, `instance="`+gone+`"`) {
					t.Errorf("instance %s is served, want it dropped", gone)
				}
			}
			members := rc.SMembers(bg, "test:gpe:instances").Val()
			slices.Sort(members)
			if !slices.Equal(members, tt.wantMembers) {
				t.Errorf("instances after the scrape = %v, want %v", members, tt.wantMembers)
			}
		})
	}

	t.Run("RunCollector serves and stops", func(t *testing.T) {
		cfg := collectorConfig(s)
		cfg.ListenAddress = "127.0.0.1:" + strconv.Itoa(freePort(t))
		rctx, rcancel := context.WithCancel(bg)
		res := make(chan error, 1)
		go func() { res <- RunCollector(rctx, cfg, testLogger(t)) }()
		base := "http://" + cfg.ListenAddress
		eventually(t, 5*time.Second, "the collector to listen", func() bool {
			c, err := net.Dial("tcp", cfg.ListenAddress)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		code, body := get(t, base+"/metrics")
		if code != http.StatusOK || !strings.Contains(body, `instance="web-1"`) || !strings.Contains(body, `instance="web-2"`) {
			t.Fatalf("GET /metrics = %d, want both instances:\n%s", code, body)
		}
		if code, body := get(t, base+"/"); code != http.StatusOK || !strings.Contains(body, "/metrics") {
			t.Errorf("GET / = %d %q, want a landing page linking /metrics", code, body)
		}
		rcancel()
		select {
		case err := <-res:
			if err != nil {
				t.Fatalf("RunCollector after cancel = %v, want nil", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("RunCollector did not return after cancel")
		}
	})

	t.Run("redis down is a 503", func(t *testing.T) {
		c, err := NewCollector(collectorConfig(s), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		srv := httptest.NewServer(c)
		defer srv.Close()
		s.kill()
		if code, body := get(t, srv.URL); code != http.StatusServiceUnavailable {
			t.Fatalf("GET with Redis down = %d %q, want 503", code, body)
		}
	})
}

func TestMerger(t *testing.T) {
	counter := func(name string, v float64, labels ...string) *dto.MetricFamily {
		mf := &dto.MetricFamily{Name: &name, Type: dto.MetricType_COUNTER.Enum()}
		m := &dto.Metric{Counter: &dto.Counter{Value: &v}}
		for i := 0; i+1 < len(labels); i += 2 {
			m.Label = append(m.Label, &dto.LabelPair{Name: &labels[i], Value: &labels[i+1]})
		}
		mf.Metric = append(mf.Metric, m)
		return mf
	}
	gauge := func(name string) *dto.MetricFamily {
		v := 1.0
		return &dto.MetricFamily{Name: &name, Type: dto.MetricType_GAUGE.Enum(),
			Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: &v}}}}
	}
	type input struct {
		inst string
		fams []*dto.MetricFamily
	}
	tests := []struct {
		name string
		in   []input
		want []string // "family{labels} value", in output order
	}{
		{
			name: "instance label added and sorted in",
			in:   []input{{"a", []*dto.MetricFamily{counter("x_total", 1, "zone", "z", "code", "200")}}},
			want: []string{`x_total{code=200,instance=a,zone=z} 1`},
		},
		{
			name: "existing instance label overwritten",
			in:   []input{{"a", []*dto.MetricFamily{counter("x_total", 1, "instance", "other")}}},
			want: []string{`x_total{instance=a} 1`},
		},
		{
			name: "same family from two instances merged, sorted",
			in: []input{
				{"b", []*dto.MetricFamily{counter("x_total", 2)}},
				{"a", []*dto.MetricFamily{counter("x_total", 1), counter("a_total", 5)}},
			},
			want: []string{`a_total{instance=a} 5`, `x_total{instance=a} 1`, `x_total{instance=b} 2`},
		},
		{
			name: "type conflict skipped for the later instance",
			in: []input{
				{"a", []*dto.MetricFamily{counter("x", 1)}},
				{"b", []*dto.MetricFamily{gauge("x")}},
			},
			want: []string{`x{instance=a} 1`},
		},
		{
			name: "series that collide after relabelling kept once",
			in: []input{{"a", []*dto.MetricFamily{
				counter("x_total", 1, "instance", "p"),
				counter("x_total", 2, "instance", "q"),
			}}},
			want: []string{`x_total{instance=a} 1`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMerger(slog.New(slog.DiscardHandler))
			for _, in := range tt.in {
				fams := map[string]*dto.MetricFamily{}
				for _, mf := range in.fams {
					if prev, ok := fams[mf.GetName()]; ok {
						prev.Metric = append(prev.Metric, mf.Metric...)
						continue
					}
					fams[mf.GetName()] = mf
				}
				m.add(in.inst, fams)
			}
			var got []string
			for _, mf := range m.result() {
				for _, metric := range mf.Metric {
					var ls []string
					for _, lp := range metric.Label {
						ls = append(ls, lp.GetName()+"="+lp.GetValue())
					}
					v := metric.GetCounter().GetValue() + metric.GetGauge().GetValue()
					got = append(got, fmt.Sprintf("%s{%s} %v", mf.GetName(), strings.Join(ls, ","), v))
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Fatalf("merged = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestIsStale(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	tests := []struct {
		name     string
		age      time.Duration
		interval float64
		want     bool
	}{
		{"just forwarded", 0, 30, false},
		{"two intervals late", 60 * time.Second, 30, false},
		{"exactly three intervals", 90 * time.Second, 30, false},
		{"past three intervals", 91 * time.Second, 30, true},
		{"sub-second interval", 2 * time.Second, 0.5, true},
		{"clock ahead of ours", -10 * time.Second, 30, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			meta := Metadata{Timestamp: float64(now.Add(-tt.age).UnixMilli()) / 1000, Interval: tt.interval}
			if got := isStale(meta, now); got != tt.want {
				t.Fatalf("isStale(age %s, interval %vs) = %v, want %v", tt.age, tt.interval, got, tt.want)
			}
		})
	}
}
