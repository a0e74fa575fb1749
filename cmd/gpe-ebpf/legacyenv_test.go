package main

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
)

// TestWarnLegacyEnv: the Python exporter's variables that gpe-ebpf ignores are named in one
// warning when set; variables gpe-ebpf reads, and empty ones, are not.
func TestWarnLegacyEnv(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  []string
		want []string // the variables named, in legacyEnv's order; none: no warning at all
	}{
		{name: "none set", env: []string{"PROMETHEUS_METRICS_PORT", "9091", "REDIS_HOST", "r"}},
		{name: "empty is not set", env: []string{"SIDECAR_MODE", ""}},
		{name: "the issue's four", env: []string{
			"SIDECAR_MODE", "true", "PROMETHEUS_SSL_CLIENT_CAFILE", "/ca.pem",
			"REDIS_TTL_SECONDS", "300", "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED", "true",
			"PROMETHEUS_SSL_CERTFILE", "/c.pem", // honoured: not named
		}, want: []string{"PROMETHEUS_SSL_CLIENT_CAFILE", "PROMETHEUS_SSL_CLIENT_AUTH_REQUIRED", "REDIS_TTL_SECONDS", "SIDECAR_MODE"}},
		{name: "one", env: []string{"CLEANUP_DB_FILES", "false"}, want: []string{"CLEANUP_DB_FILES"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			warnLegacyEnv(env(tc.env...), slog.New(slog.NewJSONHandler(&buf, nil)))
			lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
			if len(tc.want) == 0 {
				if buf.Len() != 0 {
					t.Errorf("logged %q, want nothing", buf.String())
				}
				return
			}
			if len(lines) != 1 {
				t.Fatalf("logged %d lines, want one warning:\n%s", len(lines), buf.String())
			}
			var rec struct {
				Level, Variables, Instead string
			}
			if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
				t.Fatal(err)
			}
			if rec.Level != "WARN" {
				t.Errorf("level %s, want WARN", rec.Level)
			}
			if got := strings.Join(tc.want, ","); rec.Variables != got {
				t.Errorf("variables=%q, want %q", rec.Variables, got)
			}
			for _, v := range tc.want {
				if !strings.Contains(rec.Instead, v+": ") {
					t.Errorf("no advice for %s in %q", v, rec.Instead)
				}
			}
		})
	}
}

// TestLegacyEnvNotHonoured: no variable listed as ignored is one gpe-ebpf reads.
func TestLegacyEnvNotHonoured(t *testing.T) {
	for _, v := range legacyEnv {
		for _, ef := range envFlags {
			if ef.env == v.name {
				t.Errorf("%s is read (--%s) yet listed as not honoured", v.name, ef.flag)
			}
		}
	}
}
