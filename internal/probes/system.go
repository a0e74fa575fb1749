package probes

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// TracefsPath is where tracefs is mounted when it is missing.
const TracefsPath = "/sys/kernel/tracing"

// EnsureTracefs mounts tracefs at /sys/kernel/tracing unless it (or debugfs's tracing
// directory) is already there: tracepoints are looked up by name in it.
func EnsureTracefs() error {
	for _, p := range []string{TracefsPath + "/events", "/sys/kernel/debug/tracing/events"} {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
	}
	if err := unix.Mount("tracefs", TracefsPath, "tracefs", 0, ""); err != nil {
		return fmt.Errorf("tracefs is not mounted and mounting it at %s failed (needs CAP_SYS_ADMIN, or mount it on the host): %w", TracefsPath, err)
	}
	return nil
}

// ErrPrivileges is wrapped by CheckPrivileges when a capability is missing.
var ErrPrivileges = errors.New("missing privileges")

// CheckPrivileges reports which of the capabilities gpe-ebpf needs the process lacks:
// CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN, which implies both) to load and attach, and
// CAP_SYS_PTRACE to read other processes' /proc entries.
func CheckPrivileges() error {
	var hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	has := func(c uint) bool { return data[c/32].Effective&(1<<(c%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) {
		return nil
	}
	var missing []string
	for _, c := range []struct {
		bit  uint
		name string
	}{{unix.CAP_BPF, "CAP_BPF"}, {unix.CAP_PERFMON, "CAP_PERFMON"}, {unix.CAP_SYS_PTRACE, "CAP_SYS_PTRACE"}} {
		if !has(c.bit) {
			missing = append(missing, c.name)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: %s (run as root, or grant them)", ErrPrivileges, strings.Join(missing, ", "))
	}
	return nil
}
