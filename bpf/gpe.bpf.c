//go:build ignore
// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * gpe.bpf.c: the kernel side of gpe-ebpf.
 *
 * Hooks (tracepoints and BTF tracepoints, except in the fentry and kprobe modes). Every mode:
 *   tp_btf/sched_process_fork    a tracked master forks: the child is a worker
 *   tp_btf/sched_process_exec    a tracked worker execs: USR2 upgrade, it becomes a master
 *   tp_btf/sched_process_exit    a tracked process's last thread exits, with its wait status
 *   tp_btf/signal_generate       a signal is queued for a tracked process (sender recorded)
 *   tracepoint/oom/mark_victim   the OOM killer picked a tracked process
 *   tp_btf/inet_sock_set_state   (--queue-wait, the default) a connection to a tracked master's
 *                                TCP listener is established (SYN_RECV → ESTABLISHED): it takes
 *                                its slot, stamped with the start of its wait in the accept
 *                                queue, which a worker's first read of it ends; and a worker's
 *                                TCP connection moves to CLOSE: the request ends
 *   tp_btf/tcp_destroy_sock      (--queue-wait=false instead) a worker's TCP connection is gone
 *                                (closed or reset): the request ends
 * Socket mode (--hooks socket, the default where the kernel has them):
 *   tp_btf/sock_recv_length      a read from a socket returned (recvfrom, recvmsg, read, readv)
 *   tp_btf/sock_send_length      a write to a socket returned (sendto, sendmsg, write, writev,
 *                                sendfile); with the two above, the HTTP request state machine
 *                                of each worker connection. The fd and the user buffer come from
 *                                the registers the task entered the syscall with.
 * Fentry mode (--hooks fentry, kernels before 6.3 with BPF trampolines):
 *   fexit/{inet,inet6,unix_stream}_{recvmsg,sendmsg}, and fexit/sock_sendpage where the kernel
 *                                has it (sendfile before 6.5): the same state machine, fed from
 *                                the protocols' functions (hook_fentry.h says why those)
 * Kprobe mode (--hooks kprobe, the same without trampolines):
 *   kprobe and kretprobe on the same functions; the entry saves the socket per thread
 * Syscall mode (--hooks syscall, the last resort):
 *   tracepoint/syscalls/sys_exit_{recvfrom,recvmsg,sendto,sendmsg,sendfile64}
 *                                the same state machine (on_io), fed from the syscall's return
 *                                value and registers; the fd's socket from the task's fd table.
 * Every mode, with --tls auto (internal/probes/tls.go attaches them per worker, with its PID):
 *   uprobe SSL_set_fd, SSL_read, SSL_read_ex, SSL_write, SSL_write_ex, SSL_get_current_cipher
 *                                and uretprobes of the read and write ones, on the libssl a
 *                                worker has mapped: the plaintext of TLS connections through the
 *                                same state machine (tls.h)
 * User space (internal/probes) loads one mode's programs only, and attaches them.
 *
 * Files, included below in this order, each a concern (one object, one set of Go bindings):
 *   gpe.h            the records and enums shared with Go (bpf2go -type, internal/probes/gen.go)
 *   maps.h           every map and global, with the types of their entries
 *   http.h           HTTP/1 parsing, pure functions: the request line cut, the status code
 *   records.h        building and submitting ring-buffer records
 *   process.h        tracked processes, requests in flight, and the lifecycle hooks (on_exit too)
 *   conntable.h      the connection table: slots, then conns
 *   regs.h           the calling task's socket call and fd table, from its registers
 *   h2.h             HTTP/2 connections: the frame walk, what user space decodes
 *   request.h        the request state machine (on_io), shared by every hook mode
 *   tls.h            the libssl uprobes, and the ciphertext the socket hooks skip
 *   hook_socket.h    socket mode's hooks: only the reading of their arguments; sock_io, which the
 *                    fentry and kprobe modes share
 *   hook_fentry.h    fentry mode's hooks: the same
 *   hook_kprobe.h    kprobe mode's hooks: the same
 *   hook_syscall.h   syscall mode's hooks: the same
 *   hook_tcp.h       the TCP state hooks of both modes
 *
 * No syscall tracepoint in the socket, fentry and kprobe modes: enabling any one puts every task's every syscall on the
 * kernel's slow path (BENCHMARKS.md: dd bs=1 paid 4% with no program attached at all). The
 * socket hooks fire only for socket I/O. Every I/O hook first reads the calling process's slot
 * of `filter`, returning at once when no tracked process has a tgid in it, so the rest of the
 * host pays one memory read.
 *
 * Records (bpf/gpe.h): gpe_proc_event for process events, gpe_req_event / gpe_req_start for
 * requests, gpe_h2_event for HTTP/2 frames (h2.h), all behind the same 16-byte header, in one ring buffer. Submits that fail are
 * counted per CPU in `lost`.
 *
 * Minimum kernel, with BTF: 6.3 in socket mode (the sock_send_length/sock_recv_length
 * tracepoints); 5.10 in the fentry, kprobe and syscall modes. Built twice (internal/probes/gen.go):
 * as is, the modern object, for kernels with bpf_loop (5.17), bpf_task_pt_regs (5.15),
 * bpf_for_each_map_elem (5.13), bpf_get_current_task_btf (5.11) and the atomic fetch-and-add and
 * compare-and-swap (5.12); with -DGPE_COMPAT, the compat object, which calls nothing newer than
 * 5.10 (each #ifdef GPE_COMPAT says what it does instead). User space probes the helpers and
 * loads one (internal/probes/compat.go). The TLS uprobes: uprobe_multi links from 6.10, else
 * perf-event uprobes with attach cookies (5.15; without, TLS is off). Tested on 6.18, and on
 * 5.10, 6.1 and 6.12 in the kernel matrix (test/kernels).
 */
#include "include/gpe_kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "gpe.h"

/* One object, one set of Go bindings: each concern in its header, in this order. */
#include "maps.h"
#include "http.h"
#include "records.h"
#include "process.h"
#include "conntable.h"
#include "downstream.h"
#include "regs.h"
#include "h2.h"
#include "request.h"
#include "tls.h"
#include "hook_socket.h"
#include "hook_fentry.h"
#include "hook_kprobe.h"
#include "hook_syscall.h"
#include "hook_tcp.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Referenced so their BTF is emitted and bpf2go writes the Go types (gen.go's -type list). */
const struct gpe_proc_event *unused_proc_event __attribute__((unused));
const struct gpe_req_start *unused_req_start __attribute__((unused));
const struct gpe_ds_event *unused_ds_event __attribute__((unused));
const enum gpe_event_kind *unused_event_kind __attribute__((unused));
const enum gpe_proc_kind *unused_proc_kind __attribute__((unused));
const enum gpe_end_reason *unused_end_reason __attribute__((unused));
const enum gpe_req_flag *unused_req_flag __attribute__((unused));
const enum conn_state *unused_conn_state __attribute__((unused));
const enum gpe_drop_reason *unused_drop_reason __attribute__((unused));
const struct gpe_h2_event *unused_h2_event __attribute__((unused));
const enum gpe_h2_kind *unused_h2_kind __attribute__((unused));
