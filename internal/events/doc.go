// Package events holds what the kernel side reports, as plain Go structs: the Event a
// ring-buffer record decodes into (its kinds, end reasons and flags), a worker's Occupancy,
// and the clock their times are in (CLOCK_MONOTONIC, that of bpf_ktime_get_ns).
//
// It is a package of its own so that the packages above the kernel side (aggregate, agent,
// export) can take events without importing probes, which loads the BPF programs and is the
// only package that imports cilium/ebpf. It needs neither root nor cilium/ebpf: tests build
// Events by hand and feed them. probes fills them (Decode); aggregate consumes them.
package events
