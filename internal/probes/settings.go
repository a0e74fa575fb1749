package probes

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/gpe-ebpf/gpe-ebpf/internal/setting"
)

// Settings are the rows of c: how the kernel side observes.
func Settings(c *Config) []setting.Setting {
	return []setting.Setting{
		{Name: "hooks", Group: setting.Kernel, Value: setting.String(&c.Hooks),
			Help: "how socket calls are seen: socket (tracepoints, Linux 6.3+; other processes pay one memory read per socket call), fentry (fexit on the sockets' send and receive functions, where the kernel has BPF trampolines; nothing on other syscalls either), kprobe (kprobes on the same functions), syscall (Linux 5.10+; every syscall on the host takes the slow path) or auto (the first of these the kernel has)",
			Check: func(name string) error {
				if err := checkHooks(c.Hooks); err != nil {
					return fmt.Errorf("invalid %s %w", name, err)
				}
				return nil
			}},
		{Name: "queue-wait", Group: setting.Kernel, Value: setting.Bool(&c.QueueWait),
			Help: "time each TCP connection's wait in the accept queue (gunicorn_request_queue_seconds): a hook on every TCP state change of the host, about ten per connection"},
		{Name: "request-cpu", Group: setting.Kernel, Value: setting.Bool(&c.RequestCPU),
			Help: "measure each request's on-CPU time (gunicorn_http_request_cpu_seconds) from the serving thread's runtime, read in the socket hooks at its first read and at its response writes"},
		{Name: "downstream", Group: setting.Kernel, Value: setting.Bool(&c.Downstream),
			Help: "count each request's calls on the worker's own client connections (databases, caches, APIs) by peer (gunicorn_http_downstream_calls_total, gunicorn_http_downstream_seconds_total), in the socket hooks: requests served alone on their thread"},
		{Name: "max-connections", Group: setting.Kernel, Value: setting.Uint32(&c.MaxConnections),
			Help: "connections of tracked workers the kernel tracks at once (about 400 bytes of kernel memory each); past it, a new connection's requests are counted in gpe_ebpf_connections_dropped_total{reason=\"table_full\"}, and nothing tracked is pushed out",
			Check: func(name string) error {
				return setting.Require(c.MaxConnections >= 1, "invalid %s %d: at least 1", name, c.MaxConnections)
			}},
		{Name: "tls-uprobes", Group: setting.Kernel, Value: tlsUprobes{c},
			Help: "auto: measure workers that serve TLS themselves (--certfile) through uprobes on the libssl each worker has mapped, scoped to the workers (uprobe_multi links on Linux 6.10+); perf: the same with perf-event uprobes on any kernel; off: none"},
		{Name: "ring-buffer-size", Group: setting.Kernel, Value: setting.Uint32(&c.RingBufferBytes),
			Help: "ring buffer size in bytes (a power of two, at least the page size)",
			Check: func(name string) error {
				n := c.RingBufferBytes
				return setting.Require(n >= 4096 && n&(n-1) == 0, "invalid %s %d: a power of two of at least 4096", name, n)
			}},
		{Name: "wakeup-bytes", Group: setting.Kernel, Value: setting.Uint64(&c.WakeupBytes),
			Help: "batch ring-buffer wake-ups: > 0 drains the ring every 100ms (a record waits at most that long); 0 wakes the reader for every record"},
	}
}

// checkHooks is the one test of a Config.Hooks value: --hooks and ChooseHooks run it.
func checkHooks(mode string) error {
	if slices.Contains(HookModes, mode) {
		return nil
	}
	return fmt.Errorf("%q: %s", mode, strings.Join(HookModes, ", "))
}

// tlsUprobes is --tls-uprobes: auto (the default) attaches uprobes to the libssl each worker
// has mapped, so that Gunicorn serving HTTPS itself (--certfile) is measured, as uprobe_multi
// links where the kernel has them (6.10+); perf does the same with perf-event uprobes whatever
// the kernel; off loads none of the TLS programs (README "Gunicorn serving TLS").
type tlsUprobes struct{ cfg *Config }

func (v tlsUprobes) String() string {
	switch {
	case v.cfg == nil || v.cfg.TLS && !v.cfg.TLSPerfEvents:
		return "auto"
	case v.cfg.TLS:
		return "perf"
	}
	return "off"
}

func (v tlsUprobes) Set(s string) error {
	switch s {
	case "auto":
		v.cfg.TLS, v.cfg.TLSPerfEvents = true, false
	case "perf":
		v.cfg.TLS, v.cfg.TLSPerfEvents = true, true
	case "off":
		v.cfg.TLS, v.cfg.TLSPerfEvents = false, false
	default:
		return errors.New("auto, perf or off")
	}
	return nil
}

func (v tlsUprobes) Type() string { return "auto|perf|off" }
