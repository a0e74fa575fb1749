package main

import (
	"fmt"

	"github.com/gpe-ebpf/gpe-ebpf/internal/probes"
)

// tlsUprobes is --tls-uprobes: auto (the default) attaches uprobes to the libssl each worker
// has mapped, so that Gunicorn serving HTTPS itself (--certfile) is measured, as uprobe_multi
// links where the kernel has them (6.10+); perf does the same with perf-event uprobes whatever
// the kernel; off loads none of the TLS programs (README "Gunicorn serving TLS").
type tlsUprobes struct{ cfg *probes.Config }

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
		return fmt.Errorf("auto, perf or off")
	}
	return nil
}

func (v tlsUprobes) Type() string { return "auto|perf|off" }
