package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// BPFStatsEnabled says whether the kernel counts each BPF program's runs and run time now
// (the sysctl kernel.bpf_stats_enabled is not 0). A kernel without the switch (before Linux
// 5.8) counts nothing: false, and no error.
func (fs FS) BPFStatsEnabled() (bool, error) {
	path := filepath.Join(fs.Root, "sys", "kernel", "bpf_stats_enabled")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", path, err)
	}
	return strings.TrimSpace(string(b)) != "0", nil
}
