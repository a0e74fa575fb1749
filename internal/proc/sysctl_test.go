package proc

import (
	"os"
	"path/filepath"
	"testing"
)

func TestBPFStatsEnabled(t *testing.T) {
	for _, tc := range []struct {
		name    string
		content string // "" : no such sysctl (before Linux 5.8)
		want    bool
	}{
		{"no switch", "", false},
		{"off", "0\n", false},
		{"on", "1\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fs := FS{Root: t.TempDir()}
			if tc.content != "" {
				dir := filepath.Join(fs.Root, "sys", "kernel")
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, "bpf_stats_enabled"), []byte(tc.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if got, err := fs.BPFStatsEnabled(); got != tc.want || err != nil {
				t.Errorf("BPFStatsEnabled = %v, %v; want %v, nil", got, err, tc.want)
			}
		})
	}
	// A sysctl that cannot be read is an error, not "off".
	fs := FS{Root: t.TempDir()}
	if err := os.MkdirAll(filepath.Join(fs.Root, "sys", "kernel", "bpf_stats_enabled"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := fs.BPFStatsEnabled(); err == nil {
		t.Error("unreadable sysctl: no error")
	}
}
