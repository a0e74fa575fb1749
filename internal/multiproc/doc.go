// Package multiproc serves an application's own Python prometheus_client
// metrics when the application runs in multiprocess mode
// (PROMETHEUS_MULTIPROC_DIR), so that gpe-ebpf --multiproc-dir can expose them
// next to what it observes from the kernel.
//
// # Why a package of its own
//
// Gunicorn apps that use prometheus_client in multiprocess mode keep one
// memory-mapped file per worker and metric type, and need a
// MultiProcessCollector in some process to merge them for a scrape. gpe-ebpf
// already serves /metrics for the server, so it can do that merge and spare
// the app its own endpoint. The concern is neither a probe (no kernel), nor
// part of the request/process aggregation, nor the HTTP export itself: it is a
// file-format reader plus a prometheus.Collector that export simply registers.
//
// # The file format
//
// Files are named counter_<pid>.db, histogram_<pid>.db, summary_<pid>.db and
// gauge_<mode>_<pid>.db, mode being one of all, liveall, min, livemin, max,
// livemax, sum, livesum, mostrecent, livemostrecent. Every file is:
//
//	offset 0: uint32 used   bytes of the file in use, header included
//	offset 4: 4 bytes of padding
//	offset 8: records, up to used
//
// and every record is:
//
//	uint32 n                length of the key
//	n bytes                 key: UTF-8 JSON [metric_name, sample_name, {labels}, help]
//	1..8 spaces             padding so that the value starts 8-byte aligned
//	float64 value
//	float64 timestamp       only in the newer layout (prometheus_client >= 0.17)
//
// Integers and floats are in the host's byte order (the files never leave the
// host). The writer appends a record completely and only then stores the new
// used size, and updates a value with one aligned 8-byte store, so a reader
// needs no lock: it loads used once, never looks past it, and loads each value
// with one atomic 8-byte load from the shared mapping, so it never sees a torn
// record or value.
//
// # Telling the two layouts apart
//
// Nothing in the file says which layout it has. The reader walks the used
// region with both record sizes (8-byte and 16-byte tails) and keeps the
// interpretation that lands exactly on used with every key length in bounds
// and every key a well-formed JSON [string, string, {string: string}, string].
// With at least one record only one of them can: both read the first key the
// same way, and the wrong stride then reads its next length either from
// key text (a huge number, out of bounds) or from the low half of a timestamp
// (zero, or a key that is not JSON). A file with no record is empty under
// both. A file that neither walk explains is corrupt: it is skipped and
// counted in gpe_ebpf_multiproc_errors_total, never a crash.
//
// # Merging
//
// Collect merges the files exactly as prometheus_client's
// MultiProcessCollector does: counters, summaries (_sum, _count) and
// histograms (buckets made cumulative, _count the +Inf total) are summed over
// every file, dead processes included; gauges follow their mode: all and
// liveall keep a pid label, sum/min/max (and their live variants) drop it,
// mostrecent keeps the value with the newest timestamp. The live* modes only
// read files of processes the liveness callback says are alive, which is what
// the reference gets from mark_process_dead deleting those files.
//
// Where client_golang cannot say what Python prints, the nearest is chosen:
// observation counts become integers (they are whole numbers unless the
// files are damaged); a histogram series with a _sum but no bucket is left
// out; and a sample whose name another metric of another type already took,
// or that client_golang refuses, is logged and left out rather than failing
// the whole scrape. A file in the older layout has no timestamp, so a
// mostrecent gauge in it (which only newer writers create) reports nothing.
package multiproc
