// Package aggregate turns events.Events into the state gpe-ebpf exports: the process tree of
// each Gunicorn master (workers, their ids, ages and states), the request state machine
// (in-flight requests, durations, sizes, failures), restarts, signals and exits. It is pure Go:
// tests feed it event sequences, and Snapshot hands a consistent copy to the exporter.
package aggregate
