// Package probes is the only package that talks to the kernel. It loads the BPF programs of
// bpf/gpe.bpf.c (compiled by bpf2go, see gen.go), attaches them to tracepoints and BTF
// tracepoints, seeds the map of tracked processes, and turns ring-buffer records into
// events.Events, which are plain structs (package events) so that everything above this
// package is tested by feeding them without root.
//
// Read (reader.go) returns the ring buffer's records, read at the pace ring.go describes, and
// the ends of requests on Unix connections that were closed, which no hook sees: the Unix
// sweep (unixsweep.go) finds them in the connection table and the workers' fds (through
// proc.FS). The ring buffer and the table are behind small interfaces, so the pacing, the
// sweep and the ends it adds are tested without root.
//
// The hook mode (Config.Hooks, hooks.go) is chosen here, once: the socket tracepoints where the
// kernel has them (6.3+), else fentry, kprobe or the syscall tracepoints (5.10+). Only that
// mode's programs are loaded, and all produce the same records, so nothing above this package
// knows which ran. So is the object (compat.go): the modern one, or the compat one where the
// kernel lacks a helper the modern one calls (before 5.17).
//
// TLS (tls.go): with Config.TLS, AttachTLS puts uprobes on the libssl a worker has mapped,
// scoped to that worker, and its plaintext goes through the same request records.
package probes
