//go:build ignore
// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * gpe.bpf.c: the kernel side of gpe-ebpf.
 *
 * Hooks (tracepoints and BTF tracepoints only; no kprobes, no fentry/fexit). Both modes:
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
 * Syscall mode (--hooks syscall, kernels before 6.3):
 *   tracepoint/syscalls/sys_exit_{recvfrom,recvmsg,sendto,sendmsg,sendfile64}
 *                                the same state machine (on_io), fed from the syscall's return
 *                                value and registers; the fd's socket from the task's fd table.
 * Both modes, with --tls auto (internal/probes/tls.go attaches them per worker, with its PID):
 *   uprobe SSL_set_fd, SSL_read, SSL_read_ex, SSL_write, SSL_write_ex and uretprobes of the
 *                                last four, on the libssl a worker has mapped: the plaintext of
 *                                TLS connections through the same state machine (section TLS)
 * User space (internal/probes) loads one mode's programs only, and attaches them.
 *
 * No syscall tracepoint in socket mode: enabling any one puts every task's every syscall on the
 * kernel's slow path (BENCHMARKS.md: dd bs=1 paid 4% with no program attached at all). The
 * socket hooks fire only for socket I/O. Every I/O hook first reads the calling process's slot
 * of `filter`, returning at once when no tracked process has a tgid in it, so the rest of the
 * host pays one memory read.
 *
 * Records (bpf/gpe.h): gpe_proc_event for process events, gpe_req_event / gpe_req_start for
 * requests, all behind the same 16-byte header, in one ring buffer. Submits that fail are
 * counted per CPU in `lost`.
 *
 * Minimum kernel, with BTF: 6.3 in socket mode (the sock_send_length/sock_recv_length
 * tracepoints); 5.17 in syscall mode (bpf_loop; bpf_task_pt_regs is 5.15, atomic fetch-and-add
 * and compare-and-swap 5.12). The TLS uprobes: uprobe_multi links from 6.10, else perf-event
 * uprobes with attach cookies (5.15). Tested on 6.18.
 */
#include "include/gpe_kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "gpe.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/*
 * Process kinds and a process's master, keyed by tgid. Seeded from user space at attach. A
 * worker's requests in flight (read, status line not written yet) are counted here, and the
 * time it had one: user space reads them at each scrape (gunicorn_worker_requests_in_flight,
 * gunicorn_worker_busy_seconds_total), so that no record has to say when a request starts.
 */
struct proc_info {
	__u32 master;
	__u32 kind;       /* enum gpe_proc_kind */
	__u32 inflight;   /* requests in flight */
	__u32 pad;
	__u64 busy_since; /* when inflight last went from 0 to 1 */
	__u64 busy_ns;    /* time with inflight > 0, up to the last time it went back to 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct proc_info);
} procs SEC(".maps");

/*
 * How many tracked processes have a tgid in each slot (tgid % GPE_FILTER_SLOTS): a zero slot
 * means "not tracked" without a hash lookup, which is what every socket call of every other
 * process on the host asks. Counts go up before an entry is added to procs and down after one
 * is removed, here and in user space (probes.go, atomically through a shared mapping), so a
 * slot is never zero while one of its processes is tracked; a count that is too high only
 * costs a lookup.
 */
struct filter {
	__u32 n[GPE_FILTER_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct filter);
} filter SEC(".maps");

static __always_inline void filter_add(__u32 tgid, int d)
{
	__u32 zero = 0;
	struct filter *f = bpf_map_lookup_elem(&filter, &zero);
	if (f)
		__sync_fetch_and_add(&f->n[tgid & (GPE_FILTER_SLOTS - 1)], d);
}

static __always_inline int maybe_tracked(__u32 tgid)
{
	__u32 zero = 0;
	struct filter *f = bpf_map_lookup_elem(&filter, &zero);
	return f && f->n[tgid & (GPE_FILTER_SLOTS - 1)] != 0;
}

/* Add or replace a process in procs, keeping filter in step. */
static __always_inline void track(__u32 tgid, struct proc_info *v)
{
	filter_add(tgid, 1);
	if (bpf_map_update_elem(&procs, &tgid, v, BPF_NOEXIST) != 0) {
		bpf_map_update_elem(&procs, &tgid, v, BPF_ANY);
		filter_add(tgid, -1); /* it was there already, and counted */
	}
}

static __always_inline void untrack(__u32 tgid)
{
	if (bpf_map_delete_elem(&procs, &tgid) == 0)
		filter_add(tgid, -1);
}

enum conn_state {
	CONN_IDLE = 0,       /* adopted, or between requests */
	CONN_READING = 1,    /* request bytes read, no final status line written yet */
	CONN_RESPONDING = 2, /* final status line written */
	CONN_TLS = 3,        /* the first bytes were a TLS record: nothing is parsed */
	CONN_PROBATION = 4,  /* the first bytes were not a request line: a request only if the
			      * worker answers them with a status line (Gunicorn's 400 to garbage) */
};

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct conn {
	struct conn_key owner; /* the worker and fd that read the connection's first request */
	char line[GPE_LINE_MAX]; /* the current request's line, as far as its first read had it:
				  * head_len bytes, then zeros to the next multiple of 8 */
	__u64 start_ns;
	__u64 last_write_ns;
	__u64 bytes_in;
	__u64 bytes_out;
	__u32 seq;      /* the current request's id: unique on the host (next_seq) */
	__u16 status;
	__u8 state;
	__u8 phase;    /* enum line_phase: how far the request line has been read */
	__u16 line_len; /* request-line bytes emitted so far */
	__u8 flags;    /* GPE_FLAG_* */
	__u8 unix_sock; /* AF_UNIX: no hook sees the close; user space checks the fd (probes.go) */
	__u32 ino;      /* AF_UNIX: the socket's inode number, what /proc/<pid>/fd/<fd> links to */
	__u64 est_ns;   /* TCP: when the kernel established it, if to a tracked listener; sent with
			 * the first request's END (the accept-queue wait), then 0 */
	__u16 head_len; /* bytes of line */
	__u16 pad[3];
};

enum line_phase {
	LINE_METHOD = 0,  /* reading the method */
	LINE_TARGET = 1,  /* the first byte of the target is next */
	LINE_PATH = 2,    /* in the path */
	LINE_DONE = 3,    /* the path ended (space, ?, #): nothing more is kept */
	LINE_INVALID = 4, /* not an HTTP request line */
};

/*
 * TCP connections of tracked workers, in a fixed table indexed by the socket's hash (sk_hash:
 * the kernel's hash of the connection's addresses and ports, set when it is created and left
 * alone until it is freed), each slot tagged with the socket that holds it. Finding one is a
 * single memory access: no lock, no allocation, no helper call (the verifier inlines array
 * lookups), which matters because every socket call of a worker and every TCP socket's end
 * on the host asks (BENCHMARKS.md; a socket cookie, tried first, costs a helper call and a
 * write to the socket on first use). A slot is taken at the connection's first read
 * (compare-and-swap of the tag) and given back when the socket is destroyed. A connection
 * whose slot is taken goes to `conns` instead.
 */
struct slot {
	__u64 sk; /* the socket holding the slot (struct sock *), 0 if free */
	struct conn c;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GPE_CONN_SLOTS);
	__type(key, __u32);
	__type(value, struct slot);
} slots SEC(".maps");

/*
 * Unix connections of tracked workers, and TCP ones whose slot was taken, keyed by their
 * socket (struct sock *). No hook sees a Unix socket close, so user space lists these
 * (unixsweep.go). LRU so that anything missed ages out; an entry can outlive its socket, whose
 * memory may then hold another (the owner and inode checks in on_io).
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

/*
 * The TCP ports the tracked masters listen on (probes.go writes them at attach): one byte per
 * port, so the check of an established connection is one memory read.
 */
struct listen_ports {
	__u8 on[65536];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listen_ports);
} listen_ports SEC(".maps");

/*
 * When the kernel established each connection to a tracked listener, keyed by its socket,
 * until a worker's first read takes it (adopt): the time the connection waited in the accept
 * queue. LRU, so that connections no worker ever reads (the client left, or a port of another
 * network namespace) age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} established SEC(".maps");

/* Where adopt builds a new connection's entry (per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn);
} fresh_conn SEC(".maps");

/* TCP connections put in conns (an upper bound: LRU evictions are not counted down). While it
 * is 0, a TCP socket's end needs no hash lookup. */
__u64 tcp_in_conns = 0;

/* The slot of a socket whose sk_hash is hash. */
static __always_inline struct slot *slot_of(__u32 hash)
{
	__u32 i = hash & (GPE_CONN_SLOTS - 1);
	return bpf_map_lookup_elem(&slots, &i);
}

/* The TCP connection of sk (sk_hash hash), from its slot (*in, else 0) or else from conns. */
static __always_inline struct conn *find_tcp(struct sock *sk, __u32 hash, struct slot **in)
{
	struct slot *s = slot_of(hash);
	*in = 0;
	if (s && s->sk == (__u64)sk) {
		*in = s;
		return &s->c;
	}
	if (!tcp_in_conns)
		return 0;
	__u64 key = (__u64)sk;
	return bpf_map_lookup_elem(&conns, &key);
}

/* Forget sk's TCP connection (its request already ended), found by find_tcp in slot s or, if
 * s is 0, in conns. */
static __always_inline void drop_tcp(struct sock *sk, struct slot *s)
{
	if (s) {
		s->c.state = CONN_IDLE;
		__sync_val_compare_and_swap(&s->sk, (__u64)sk, 0);
		return;
	}
	__u64 key = (__u64)sk;
	if (tcp_in_conns && bpf_map_delete_elem(&conns, &key) == 0)
		__sync_fetch_and_add(&tcp_in_conns, -1);
}

/* A new TCP connection: its slot if free, else an entry in conns. */
static __always_inline struct conn *new_tcp(struct sock *sk, __u32 hash, struct conn *fresh)
{
	struct slot *s = slot_of(hash);
	if (s && __sync_val_compare_and_swap(&s->sk, 0, (__u64)sk) == 0) {
		s->c = *fresh;
		return &s->c;
	}
	__u64 key = (__u64)sk;
	if (bpf_map_update_elem(&conns, &key, fresh, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(&tcp_in_conns, 1);
	return bpf_map_lookup_elem(&conns, &key);
}

/* The last request id handed out: requests are told apart by (process, fd, id) in user space,
 * and a connection's end may follow the start of the next connection on the same fd. */
__u32 next_seq = 0;

enum op {
	OP_RECV = 2,
	OP_SEND = 3,
	OP_SENDFILE = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Ring-buffer records that could not be reserved, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Non-zero: the reader drains the ring on a timer (probes.go) and is never woken. */
volatile const __u64 wakeup_bytes = 0;

/* Non-zero: on_tcp_state is attached (--queue-wait), so established may hold entries. */
volatile const __u32 queue_wait = 1;

struct signal_struct {
	struct {
		int counter;
	} live;
} __attribute__((preserve_access_index));


struct task_struct___sig {
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
}

/*
 * A wake-up is an irq_work: an interrupt the CPU sends itself (an APIC write, a hypercall in
 * a VM), then a wake_up of the reader's wait queue. In batched mode nobody waits there, so
 * records never ask for one; with wakeup_bytes 0 the kernel wakes a waiting reader as usual.
 */
static __always_inline __u64 submit_flags(void)
{
	return wakeup_bytes ? BPF_RB_NO_WAKEUP : 0;
}

static __always_inline struct proc_info *tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&procs, &tgid);
}

static __always_inline void emit_proc(__u32 kind, __u32 tgid, __u32 other, __u32 master,
				      __s32 code, __u32 proc_kind, __u64 start_ns, __u64 busy_ns)
{
	struct gpe_proc_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	e->hdr.kind = kind;
	e->hdr.tgid = tgid;
	e->hdr.ts_ns = bpf_ktime_get_ns();
	e->other_tgid = other;
	e->master = master;
	e->code = code;
	e->proc_kind = proc_kind;
	e->start_ns = start_ns;
	e->busy_ns = busy_ns;
	bpf_ringbuf_submit(e, submit_flags());
}

/* ---- process lifecycle ---- */

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	__u32 ptgid = parent->tgid;
	__u32 ctgid = child->tgid;
	if (ctgid == ptgid) /* a new thread, not a new process */
		return 0;
	struct proc_info *p = tracked(ptgid);
	if (!p || p->kind != GPE_PROC_MASTER)
		return 0;
	struct proc_info w = {.master = ptgid, .kind = GPE_PROC_WORKER};
	track(ctgid, &w);
	emit_proc(GPE_EV_FORK, ctgid, ptgid, ptgid, 0, GPE_PROC_WORKER, child->start_boottime, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = p->tgid;
	struct proc_info *info = tracked(tgid);
	if (!info)
		return 0;
	__u32 old_master = info->master;
	__u32 old_kind = info->kind;
	if (old_kind == GPE_PROC_WORKER) {
		/* A child of the master that execs is the new master of a USR2 upgrade: track its
		 * forks from now on, before user space has even read this event. */
		struct proc_info m = {.master = tgid, .kind = GPE_PROC_MASTER};
		bpf_map_update_elem(&procs, &tgid, &m, BPF_ANY);
	}
	emit_proc(GPE_EV_EXEC, tgid, old_master, tgid, 0, old_kind, 0, 0);
	return 0;
}

SEC("tp_btf/signal_generate")
int BPF_PROG(on_signal, int sig, struct kernel_siginfo *info, struct task_struct *task, int group,
	     int result)
{
	if (result != 0) /* ignored, already pending, or not queued: nothing was delivered */
		return 0;
	__u32 tgid = task->tgid;
	struct proc_info *p = tracked(tgid);
	if (!p)
		return 0;
	__u32 sender = bpf_get_current_pid_tgid() >> 32;
	emit_proc(GPE_EV_SIGNAL, tgid, sender, p->master, sig, p->kind, 0, 0);
	return 0;
}

struct mark_victim_ctx {
	__u64 common;
	int pid;
	__u32 comm_loc;
};

SEC("tracepoint/oom/mark_victim")
int on_oom(struct mark_victim_ctx *ctx)
{
	__u32 tgid = ctx->pid;
	struct proc_info *p = tracked(tgid);
	if (!p)
		return 0;
	emit_proc(GPE_EV_OOM, tgid, 0, p->master, 0, p->kind, 0, 0);
	return 0;
}

/* ---- requests ---- */

/* Is this process a tracked worker? What a socket call on an unknown socket asks, once the
 * filter (read first in on_io) said it may be tracked. */
static __always_inline struct proc_info *worker_info(__u32 tgid)
{
	struct proc_info *p = tracked(tgid);
	return p && p->kind == GPE_PROC_WORKER ? p : 0;
}

/*
 * One more (d > 0) or one fewer request in flight on worker tgid, at now. The time busy is
 * read before the count goes down, so a request that starts on another thread in between
 * (gthread) does not make it count twice. A count user space reset (Track of a process the
 * kernel already had) is not taken below zero.
 */
static __always_inline void flight_of(struct proc_info *p, int d, __u64 now)
{
	if (!p)
		return;
	if (d > 0) {
		if (__sync_fetch_and_add(&p->inflight, 1) == 0)
			p->busy_since = now;
		return;
	}
	__u64 since = p->busy_since;
	__u32 old = __sync_fetch_and_add(&p->inflight, -1);
	if (old == 0)
		__sync_fetch_and_add(&p->inflight, 1);
	else if (old == 1 && now > since)
		__sync_fetch_and_add(&p->busy_ns, now - since);
}

/* The same for worker tgid, looked up (a hash lookup: the callers that have it pass it). */
static __always_inline void flight(__u32 tgid, int d, __u64 now)
{
	flight_of(tracked(tgid), d, now);
}

/* The header of a request record (END, or a LINE piece) about c's current request. */
static __always_inline void fill_req(struct gpe_req_event *e, __u32 kind, struct conn_key *k,
				     struct conn *c, __u64 now, __u32 kept)
{
	e->hdr.kind = kind;
	e->hdr.tgid = k->tgid;
	e->hdr.ts_ns = now;
	e->fd = k->fd;
	e->seq = c->seq;
	e->start_ns = c->start_ns;
	e->last_write_ns = c->last_write_ns;
	e->est_ns = 0;
	e->bytes_in = c->bytes_in;
	e->bytes_out = c->bytes_out;
	e->status = c->status;
	e->reason = 0;
	e->flags = c->flags;
	e->line_len = kept;
	e->pad = 0;
}

/*
 * Records are built here, per CPU: the first bytes of a read are copied into entry 0's line
 * and cut there (a LINE piece is sent from it); an END is built in entry 1 from the connection's state (its
 * line included), and only the header and the kept bytes go into the ring (send_line), so
 * "GET /ok" takes 80 bytes of it, not 328.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct gpe_req_start);
} scratch SEC(".maps");

/* Zero the bytes of line after the first kept, to the next multiple of 8: what is sent. */
static __always_inline void pad_line(char *line, __u32 kept)
{
	barrier_var(kept);
	kept &= 0x1ff;
	if (kept >= GPE_LINE_MAX)
		return;
	__u32 tail = kept & 7;
	if (tail) {
		/* Both targets are little-endian: the low bytes of the word are the kept ones. */
		__u64 *w = (__u64 *)&line[kept & 0xf8];
		*w &= (1ULL << (8 * tail)) - 1;
	}
}

/*
 * Send a record built in scratch: its header and the first kept bytes of its line (already
 * padded with zeros to 8 bytes; the rest of the read, query string included, is not sent).
 */
static __always_inline int send_line(struct gpe_req_start *e, __u32 kept)
{
	barrier_var(kept);
	kept &= 0x1ff;
	if (kept > GPE_LINE_MAX)
		kept = GPE_LINE_MAX;
	__u64 size = sizeof(struct gpe_req_event) + ((kept + 7) & 0x1f8);
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, size, submit_flags()) != 0) {
		count_lost();
		return -1;
	}
	return 0;
}

/* The request's one record, when it ends: everything the connection knows of it. */
static __always_inline void emit_end(struct conn_key *k, struct conn *c, __u8 reason, __u64 now)
{
	__u32 one = 1;
	struct gpe_req_start *e = bpf_map_lookup_elem(&scratch, &one);
	if (!e) {
		count_lost();
		return;
	}
	__u32 kept = c->head_len;
	fill_req(&e->req, GPE_EV_REQ_END, k, c, now, kept);
	e->req.reason = reason;
	/* The accept-queue wait goes with the connection's first request only. */
	e->req.est_ns = c->est_ns;
	c->est_ns = 0;
	__builtin_memcpy(e->line, c->line, GPE_LINE_MAX);
	send_line(e, kept);
}

/* End the request in flight on c, if any, and leave the connection idle. */
static __always_inline void end_request(struct conn_key *k, struct conn *c, __u8 reason, __u64 now)
{
	if (c->state == CONN_READING || c->state == CONN_RESPONDING)
		emit_end(k, c, reason, now);
	if (c->state == CONN_READING)
		flight(k->tgid, -1, now);
	if (c->state != CONN_TLS)
		c->state = CONN_IDLE;
}

struct cut_ctx {
	char *line;
	__u32 n;
	__u32 phase; /* enum line_phase */
	__u32 kept;
	__u32 pos; /* bytes of this request line already seen in earlier reads */
};

/* One byte of cut_line, as a bpf_loop callback: verified once, not 256 times. */
static long cut_step(__u64 i, void *data)
{
	struct cut_ctx *x = data;
	if (i >= GPE_LINE_MAX || i >= x->n)
		return 1; /* out of bytes: the phase says where the next read resumes */
	char *line = x->line;
	char c = line[i];
	__u32 phase = x->phase;
	__u32 at = x->pos + (__u32)i;
	if (phase == LINE_METHOD) {
		if (c == ' ' && at > 0)
			phase = LINE_TARGET;
		else if (c < 'A' || c > 'Z' || at >= 16)
			phase = LINE_INVALID;
	} else if (phase == LINE_TARGET) {
		if (c == '/' || c == '*' || c == 'h')
			phase = LINE_PATH;
		else
			phase = LINE_INVALID;
	} else if (phase == LINE_PATH) {
		if (c == ' ' || c == '?' || c == '#' || c == '\r' || c == '\n' || c == 0)
			phase = LINE_DONE;
	}
	x->phase = phase;
	if (phase >= LINE_DONE)
		return 1;
	x->kept = i + 1;
	return 0;
}

/*
 * Find the part of "METHOD SP path" in the n bytes of line, resuming at *phase (a request
 * line may arrive a few bytes at a time). Returns how many leading bytes to keep; *phase says
 * where the line stands. Only those bytes go into a record (send_line): the query string, the
 * fragment, the protocol version and every header never leave the kernel.
 */
/* Bytes of a word that end a path (' ', '?', '#', CR, LF, NUL): the high bit of each such
 * byte, exact from the lowest one up (what is above a match may be a false one). */
static __always_inline __u64 path_ends(__u64 v)
{
	const __u64 ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	__u64 m = 0;
	m |= ((v ^ (ones * ' ')) - ones) & ~(v ^ (ones * ' '));
	m |= ((v ^ (ones * '?')) - ones) & ~(v ^ (ones * '?'));
	m |= ((v ^ (ones * '#')) - ones) & ~(v ^ (ones * '#'));
	m |= ((v ^ (ones * '\r')) - ones) & ~(v ^ (ones * '\r'));
	m |= ((v ^ (ones * '\n')) - ones) & ~(v ^ (ones * '\n'));
	m |= (v - ones) & ~v;
	return m & highs;
}

/* The index (0-7) of the byte whose high bit is the lowest set bit of m (m != 0), without a
 * branch: (m & -m) >> 7 is 1 << 8k, and times 0x0706050403020100 its top byte is 7 - k. */
static __always_inline __u32 first_byte(__u64 m)
{
	__u64 b = (m & -m) >> 7;
	return 7 - (__u32)((b * 0x0706050403020100ULL) >> 56);
}

#define GPE_FAST_WORDS 28 /* paths of up to 28 words (at least 224 bytes) are cut without a loop callback */

/*
 * The common case of cut_line, with no callback per byte: a request line whose method and
 * path are both whole in the first read (n bytes of line). Returns the bytes to keep, or 0
 * when the slow path must decide (anything else: not a request line, in pieces, very long).
 */
static __always_inline __u32 cut_fast(struct gpe_req_start *e, __u32 n)
{
	char *line = e->line;
	__u32 m = 0, bad = 0;
#pragma unroll
	for (__u32 i = 1; i < 16; i++) {
		char ch = line[i];
		if (!m && !bad) {
			if (ch == ' ')
				m = i;
			else if (ch < 'A' || ch > 'Z')
				bad = 1;
		}
	}
	if (bad || m == 0 || m + 1 >= n || line[0] < 'A' || line[0] > 'Z')
		return 0;
	/* Through memory, as in cut_line: one state from here on, not one per method length. */
	*(volatile __u16 *)&e->req.pad = m;
	m = *(volatile __u16 *)&e->req.pad & 15;
	char t = line[m + 1];
	if (t != '/' && t != '*' && t != 'h')
		return 0;
	__u32 off = m + 1;
	for (__u32 w = 0; w < GPE_FAST_WORDS; w++) {
		__u64 v = *(__u64 *)(line + off + 8 * w);
		__u64 e = path_ends(v);
		if (e) {
			__u32 end = off + 8 * w + first_byte(e);
			return end < n ? end : 0; /* past the read: stale bytes, not the line */
		}
	}
	return 0;
}

static __always_inline __u32 cut_line(struct gpe_req_start *e, __u32 n, __u32 *phase, __u32 pos)
{
	char *line = e->line;
	if (pos == 0 && *phase == LINE_METHOD) {
		/* Through the record's memory: a load from a map value is one unknown number to the
		 * verifier, not one state per way cut_fast can end (those would be multiplied by
		 * everything after, past its instruction limit). */
		*(volatile __u16 *)&e->req.line_len = cut_fast(e, n);
		__u32 kept = *(volatile __u16 *)&e->req.line_len;
		if (kept && kept <= GPE_LINE_MAX) {
			*phase = LINE_DONE;
			return kept;
		}
	}
	struct cut_ctx x = {.line = line, .n = n, .phase = *phase, .pos = pos};
	bpf_loop(GPE_LINE_MAX, cut_step, &x, 0);
	*phase = x.phase;
	if (x.phase == LINE_INVALID)
		return 0;
	return x.kept;
}

/* Copy up to GPE_LINE_MAX bytes of the read into this CPU's record; *len is the count (0 if
 * the user memory could not be read). Returns the record, or 0. */
static __always_inline struct gpe_req_start *read_head(__u64 buf, __s64 n, __u32 *len)
{
	__u32 zero = 0;
	struct gpe_req_start *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	__u32 l = n > GPE_LINE_MAX ? GPE_LINE_MAX : (__u32)n;
	barrier_var(l); /* keep the bound below on the register passed to the helper */
	l &= 0x1ff;
	if (l > GPE_LINE_MAX)
		l = GPE_LINE_MAX;
	*len = bpf_probe_read_user(e->line, l, (void *)buf) == 0 ? l : 0;
	return e;
}

/* Make c's next request the current one: READING, with nothing written yet, its line the
 * first kept bytes of line (0: none, labelled OTHER / unknown). One more in flight for k. */
static __always_inline void begin_request(struct conn_key *k, struct conn *c, __u64 start_ns,
					  __u64 bytes_in, __u8 phase, char *line, __u16 kept,
					  __u64 now, struct proc_info *pi)
{
	c->seq = __sync_fetch_and_add(&next_seq, 1) + 1;
	c->start_ns = start_ns;
	c->last_write_ns = 0;
	c->bytes_in = bytes_in;
	c->bytes_out = 0;
	c->status = 0;
	c->flags = 0;
	c->phase = phase;
	c->line_len = kept;
	c->head_len = 0;
	if (line && kept) {
		/* Only the kept bytes, padded: what follows the path (the query string, every
		 * header) is not even kept in the tables. */
		pad_line(line, kept);
		__u32 size = (kept + 7) & 0x1f8;
		if (size > GPE_LINE_MAX)
			size = GPE_LINE_MAX;
		if (bpf_probe_read_kernel(c->line, size, line) == 0)
			c->head_len = kept;
	}
	c->state = CONN_READING;
	flight_of(pi ? pi : tracked(k->tgid), 1, now);
}

/* Start a new request on c with the bytes just read; its line is kept in c for its END. */
static __always_inline void start_request(struct conn_key *k, struct conn *c, __u64 buf, __s64 n,
					  __u64 now, int must_look_like_request, struct proc_info *pi)
{
	__u32 len = 0;
	struct gpe_req_start *e = read_head(buf, n, &len);
	if (!e)
		return;
	char *line = e->line;
	if (c->state == CONN_IDLE && c->seq == 0 && len > 0 && (__u8)line[0] == 0x16) {
		/* A TLS handshake record: the connection is encrypted, nothing can be parsed. */
		c->state = CONN_TLS;
		return;
	}
	__u32 phase = LINE_METHOD;
	__u32 kept = cut_line(e, len, &phase, 0);
	if (must_look_like_request && phase == LINE_INVALID) {
		/* Continuation bytes of the current request (e.g. a body drained late). */
		c->bytes_in += n;
		return;
	}
	if (c->state == CONN_RESPONDING)
		end_request(k, c, GPE_END_NEXT, now);
	begin_request(k, c, now, n, phase, line, kept, now, pi);
}

/* More bytes of a request whose line was not complete: emit the next piece of the line. */
static __always_inline void continue_line(struct conn_key *k, struct conn *c, __u64 buf, __s64 n,
					  __u64 now)
{
	c->bytes_in += n;
	__u32 len = 0;
	struct gpe_req_start *e = read_head(buf, n, &len);
	if (!e)
		return;
	__u32 phase = c->phase;
	__u32 kept = cut_line(e, len, &phase, c->line_len);
	c->phase = phase;
	__u32 room = GPE_LINE_MAX - (c->line_len & (GPE_LINE_MAX - 1));
	if (kept > room)
		kept = room;
	if (kept == 0 || c->line_len >= GPE_LINE_MAX)
		return;
	c->line_len += kept;
	fill_req(&e->req, GPE_EV_REQ_LINE, k, c, now, kept);
	pad_line(e->line, kept);
	if (send_line(e, kept) != 0)
		c->phase = LINE_INVALID; /* a piece is missing: keep no more of the line */
}

/* The status code of an HTTP/1.x status line at the start of buf, or 0. */
static __always_inline __u16 status_code(__u64 buf, __s64 n)
{
	char s[13];
	if (n < 12)
		return 0;
	if (bpf_probe_read_user(s, 12, (void *)buf) != 0)
		return 0;
	if (s[0] != 'H' || s[1] != 'T' || s[2] != 'T' || s[3] != 'P' || s[4] != '/' ||
	    s[5] != '1' || s[6] != '.' || s[8] != ' ')
		return 0;
	if (s[9] < '1' || s[9] > '5' || s[10] < '0' || s[10] > '9' || s[11] < '0' || s[11] > '9')
		return 0;
	return (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
}

/*
 * Had the client left before its answer, which the worker just wrote (sent bytes)? Its side
 * is shut (a FIN or a reset arrived), and, for TCP, that FIN acknowledged none of the answer.
 * The hook runs after the write: on loopback the client may already have read the answer and
 * closed, and its FIN then acknowledges the answer's bytes (snd_una past their first byte).
 */
static __always_inline __u8 client_gone(struct sock *sk, __s64 sent, __u8 unix_sock)
{
	__u8 shut = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown);
	if (!(shut & 1 /* RCV_SHUTDOWN */))
		return 0;
	if (unix_sock)
		return 1;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 first = BPF_CORE_READ(tp, write_seq) - (__u32)sent;
	__u32 una = BPF_CORE_READ(tp, snd_una);
	return (__s32)(una - first) > 0 ? 0 : 1;
}

/* The first iovec's base of a user iovec array: where a status line or request line would be. */
static __always_inline __u64 iov_base(__u64 iov)
{
	struct iovec v;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)iov) != 0)
		return 0;
	return (__u64)v.iov_base;
}

/* The same for a user msghdr. */
static __always_inline __u64 msghdr_base(__u64 msg)
{
	struct user_msghdr m;
	if (bpf_probe_read_user(&m, sizeof(m), (void *)msg) != 0 || !m.msg_iov || !m.msg_iovlen)
		return 0;
	return iov_base((__u64)m.msg_iov);
}

/* A socket call of a worker: its fd, where its bytes are (0 for sendfile), and its enum op
 * (0 until socket_call has filled it in). */
struct call {
	__u64 buf;
	__u32 fd;
	__u32 op;
	__u32 tls; /* the bytes are the plaintext of a TLS connection, from libssl (uprobes) */
	__u32 pad;
};

/*
 * Which socket call the current task is in, from the registers it entered the kernel with:
 * the fd (first argument) and where the bytes are. Returns 0 for a call whose bytes are not
 * looked at (recvmmsg, splice, io_uring, a kernel thread) or that is not of this direction.
 */
static __always_inline int socket_call(int send, struct call *call)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct pt_regs *r = (struct pt_regs *)bpf_task_pt_regs(t);
	__u64 nr = GPE_SYSCALL_NR(r);
	__u64 a1 = GPE_SYSCALL_ARG1(r);
	__u32 op = send ? OP_SEND : OP_RECV;
	if (send) {
		switch (nr) {
		case GPE_NR_sendto:
		case GPE_NR_write:
			call->buf = a1;
			break;
		case GPE_NR_sendmsg:
			call->buf = msghdr_base(a1);
			break;
		case GPE_NR_writev:
			call->buf = iov_base(a1);
			break;
		case GPE_NR_sendfile:
			call->buf = 0;
			op = OP_SENDFILE;
			break;
		default:
			return 0;
		}
	} else {
		switch (nr) {
		case GPE_NR_recvfrom:
		case GPE_NR_read:
			call->buf = a1;
			break;
		case GPE_NR_recvmsg:
			call->buf = msghdr_base(a1);
			break;
		case GPE_NR_readv:
			call->buf = iov_base(a1);
			break;
		default:
			return 0;
		}
	}
	call->fd = (__u32)GPE_SYSCALL_ARG0(r);
	call->op = op;
	return 1;
}

/* A status line written on a connection in probation: what was read was a request after all
 * (one Gunicorn could not parse). It starts now, without a line (OTHER / unknown). */
static __always_inline void announce(struct conn_key *k, struct conn *c, __u64 now)
{
	begin_request(k, c, c->start_ns, c->bytes_in, LINE_INVALID, 0, 0, now, 0);
}

/* The inode number of a socket, what /proc/<pid>/fd/<fd> links to. */
static __always_inline __u32 unix_ino(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
}

static __always_inline void take(struct conn_key *k, struct conn *c, __u64 buf, __s64 n, __u64 now,
				 struct proc_info *pi);

/* A new connection of a worker: its first read. A request line (or a TLS handshake) starts a
 * request; anything else puts the connection in probation. */
static __always_inline void adopt(struct conn_key *k, struct sock *sk, __u32 hash, int tcp,
				  __u64 buf, __s64 n, __u64 now, struct proc_info *pi)
{
	/* The new entry is built in a per-CPU map value, not on the stack: with its line it is
	 * 328 bytes, and a program's stack with a callback's (the cut) is at most 512. */
	__u32 zero = 0;
	struct conn *fresh = bpf_map_lookup_elem(&fresh_conn, &zero);
	if (!fresh)
		return;
	fresh->owner = *k;
	fresh->start_ns = 0;
	fresh->last_write_ns = 0;
	fresh->bytes_in = 0;
	fresh->bytes_out = 0;
	fresh->seq = 0;
	fresh->status = 0;
	fresh->state = CONN_IDLE;
	fresh->phase = 0;
	fresh->line_len = 0;
	fresh->flags = 0;
	fresh->unix_sock = 0;
	fresh->ino = 0;
	fresh->est_ns = 0;
	fresh->head_len = 0;
	struct conn *c;
	if (!tcp) {
		fresh->unix_sock = 1;
		fresh->ino = unix_ino(sk);
		__u64 key = (__u64)sk;
		bpf_map_update_elem(&conns, &key, fresh, BPF_ANY);
		c = bpf_map_lookup_elem(&conns, &key);
	} else {
		__u64 key = (__u64)sk;
		__u64 *est = queue_wait ? bpf_map_lookup_elem(&established, &key) : 0;
		if (est) {
			fresh->est_ns = *est;
			bpf_map_delete_elem(&established, &key);
		}
		c = new_tcp(sk, hash, fresh);
	}
	if (!c)
		return;
	take(k, c, buf, n, now, pi);
}

/* The first read of connection c by worker k: a request line (or a TLS handshake) starts a
 * request; anything else puts the connection in probation. */
static __always_inline void take(struct conn_key *k, struct conn *c, __u64 buf, __s64 n, __u64 now,
				 struct proc_info *pi)
{
	start_request(k, c, buf, n, now, 1, pi);
	if (c->state == CONN_IDLE) {
		/* Not a request line: garbage sent to the port, or one of the worker's own client
		 * connections (databases, HTTP APIs). Which one, only the worker's answer tells. */
		c->state = CONN_PROBATION;
		c->start_ns = now;
		c->bytes_in = n;
	}
}

/*
 * The request state machine, after a socket call of process tgid (past the filter) moved n
 * bytes on sk (or failed, n < 0). Both hook modes come here: sk is only a key and is read
 * through BPF_CORE_READ, since in syscall mode it is a plain number, not a BTF pointer; its
 * hash, family and protocol are read by the caller. call is the socket call, or zeros to be
 * filled in here once the process is known to be a worker.
 */
static __always_inline int on_io(struct sock *sk, __u32 hash, __u16 family, __u16 proto,
				 __u32 tgid, __s64 n, int send, struct call *call)
{
	/* UDP and the rest carry no HTTP/1, and no end would be seen. */
	__u64 key = (__u64)sk;
	int tcp = 0;
	struct slot *in = 0;
	struct conn *c = 0;
	if (family == GPE_AF_UNIX) {
		c = bpf_map_lookup_elem(&conns, &key);
	} else if ((family == GPE_AF_INET || family == GPE_AF_INET6) && proto == GPE_IPPROTO_TCP) {
		tcp = 1;
		c = find_tcp(sk, hash, &in);
	} else {
		return 0;
	}
	/* A connection this process was seen to own is a worker's; anything else asks. */
	struct proc_info *pi = 0;
	if ((!c || c->owner.tgid != tgid) && !(pi = worker_info(tgid)))
		return 0;
	if (!call->op && !socket_call(send, call))
		return 0;
	__u32 op = call->op;
	__u64 buf = call->buf;
	__u64 now = bpf_ktime_get_ns();
	struct conn_key k = {.tgid = tgid, .fd = call->fd};
	if (c && c->owner.tgid && (c->owner.tgid != k.tgid || c->owner.fd != k.fd ||
		  (c->unix_sock && op == OP_RECV && c->state != CONN_READING && unix_ino(sk) != c->ino) ||
		  (call->tls && c->state == CONN_TLS))) {
		/* The socket moved to another fd or process, or (Unix: no hook sees the close) the
		 * entry is of a socket that was freed unseen, whose memory now holds another, or
		 * (TLS) the plaintext of a connection whose ciphertext was seen first arrives: it
		 * is adopted afresh from its plaintext. */
		struct conn_key old = c->owner;
		end_request(&old, c, GPE_END_REUSED, now);
		if (c->unix_sock)
			bpf_map_delete_elem(&conns, &key);
		else
			drop_tcp(sk, in);
		c = 0;
	}
	if (n < 0) {
		/* An event-loop worker (gevent, eventlet, tornado, asyncio) reads again as soon
		 * as a response is written, and finds nothing yet: the response is complete. */
		if (c && c->state == CONN_RESPONDING && op == OP_RECV && n == -11 /* EAGAIN */)
			end_request(&k, c, GPE_END_WAIT, now);
		return 0;
	}

	if (op == OP_RECV) {
		if (!c) {
			adopt(&k, sk, hash, tcp, buf, n, now, pi);
		} else if (!c->owner.tgid) {
			/* Its slot was taken when it was established (on_tcp_state): it is this
			 * worker's from its first read. */
			c->owner = k;
			take(&k, c, buf, n, now, pi);
		} else if (c->state == CONN_READING) {
			if (c->phase < LINE_DONE && c->line_len < GPE_LINE_MAX)
				continue_line(&k, c, buf, n, now);
			else
				c->bytes_in += n;
		} else if (c->state == CONN_IDLE) {
			start_request(&k, c, buf, n, now, 0, pi);
		} else if (c->state == CONN_RESPONDING || c->state == CONN_PROBATION) {
			start_request(&k, c, buf, n, now, 1, pi);
		}
		return 0;
	}

	/* Writes matter only on connections we know. */
	if (!c || c->state == CONN_TLS || c->state == CONN_IDLE)
		return 0;
	if (op == OP_SEND) {
		__u16 st = status_code(buf, n);
		if (c->state == CONN_PROBATION) {
			if (st < 100)
				return 0; /* the worker's own client traffic */
			announce(&k, c, now);
		}
		if (st >= 200) {
			if (c->state == CONN_RESPONDING) {
				/* A second final status line: the client pipelined requests and the worker
				 * answers the next one, whose request line we did not see. */
				__u64 prev = c->last_write_ns;
				end_request(&k, c, GPE_END_PIPELINE, now);
				begin_request(&k, c, prev, 0, LINE_INVALID, 0, 0, now, 0);
			}
			c->status = st;
			c->state = CONN_RESPONDING;
			flight(k.tgid, -1, now); /* answered: in flight no more */
			/* A client that left before its answer: the worker writes into the void. */
			c->flags = client_gone(sk, n, c->unix_sock) ? GPE_FLAG_CLIENT_GONE : 0;
			c->bytes_out += n;
			c->last_write_ns = now;
			return 0;
		}
	}
	/* Body bytes (or a 1xx interim response, which does not end the request). */
	if (c->state == CONN_PROBATION)
		return 0;
	c->bytes_out += n;
	if (c->state == CONN_RESPONDING)
		c->last_write_ns = now;
	return 0;
}

/*
 * The requests a worker that exits was serving end with it (GPE_END_EXIT), before its EXIT
 * record: its files are closed after this tracepoint, so its connections are all still in
 * the tables. A walk of the slots (GPE_CONN_SLOTS callbacks, a fraction of a millisecond) and
 * of conns, once per worker exit.
 */
struct exit_walk {
	__u32 tgid;
	__u32 pad;
	__u64 now;
};

static long end_slot_of(void *map, __u32 *key, struct slot *s, struct exit_walk *x)
{
	if (s->sk && s->c.owner.tgid == x->tgid) {
		struct conn_key k = s->c.owner;
		end_request(&k, &s->c, GPE_END_EXIT, x->now);
	}
	return 0;
}

static long end_conn_of(void *map, __u64 *key, struct conn *c, struct exit_walk *x)
{
	if (c->owner.tgid == x->tgid) {
		struct conn_key k = c->owner;
		end_request(&k, c, GPE_END_EXIT, x->now);
	}
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	__u32 tgid = p->tgid;
	struct proc_info *info = tracked(tgid);
	if (!info)
		return 0;
	/* Only the last thread of the process: signal->live has already been decremented. */
	struct task_struct___sig *ps = (void *)p;
	if (BPF_CORE_READ(ps, signal, live.counter) != 0)
		return 0;
	__u32 master = info->master;
	__u32 kind = info->kind;
	__u64 now = bpf_ktime_get_ns();
	if (kind == GPE_PROC_WORKER) {
		struct exit_walk x = {.tgid = tgid, .now = now};
		bpf_for_each_map_elem(&slots, end_slot_of, &x, 0);
		bpf_for_each_map_elem(&conns, end_conn_of, &x, 0);
	}
	/* Its busy time, with the requests that just ended (they were its last). */
	__u64 busy = info->busy_ns;
	if (info->inflight && now > info->busy_since)
		busy += now - info->busy_since;
	untrack(tgid);
	emit_proc(GPE_EV_EXIT, tgid, 0, master, p->exit_code, kind, 0, busy);
	return 0;
}

/* ---- socket mode (Linux 6.3+) ---- */

static __always_inline int tls_skip(struct sock *sk, __s64 fd);

/* A socket hook: every other process of the host stops at the filter, without a map lookup
 * or a helper call. sk is a BTF pointer here: its fields are plain loads. */
static __always_inline int sock_io(struct sock *sk, int ret, int send)
{
	if (ret == 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!maybe_tracked(tgid))
		return 0;
	if (tls_skip(sk, -1)) /* ciphertext: its plaintext comes from the libssl uprobes */
		return 0;
	struct call call = {};
	return on_io(sk, sk->__sk_common.skc_hash, sk->__sk_common.skc_family, sk->sk_protocol,
		     tgid, ret, send, &call);
}

/* Every read from a socket (recvfrom, recvmsg, read, readv), after it returned. */
SEC("tp_btf/sock_recv_length")
int BPF_PROG(on_sock_recv, struct sock *sk, int ret, int flags)
{
	if (flags & GPE_MSG_PEEK)
		return 0;
	return sock_io(sk, ret, 0);
}

/* Every write to a socket (sendto, sendmsg, write, writev, and sendfile's pieces). */
SEC("tp_btf/sock_send_length")
int BPF_PROG(on_sock_send, struct sock *sk, int ret, int flags)
{
	return sock_io(sk, ret, 1);
}

/* ---- syscall mode (Linux 5.17 to 6.2, or --hooks syscall) ---- */

/* The socket behind the current task's fd, or 0 if that fd is not a socket. */
static __always_inline struct sock *fd_sock(__u32 fd)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd & 0xfffff]) != 0 || !f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & GPE_S_IFMT) != GPE_S_IFSOCK)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

/* Did the recvfrom or recvmsg the task is in only peek (MSG_PEEK)? */
static __always_inline int recv_peeks(void)
{
	struct pt_regs *r = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	__u64 flags = GPE_SYSCALL_NR(r) == GPE_NR_recvmsg ? GPE_SYSCALL_ARG2(r) : GPE_SYSCALL_ARG3(r);
	return (flags & GPE_MSG_PEEK) != 0;
}

/*
 * A syscall's exit: the same state machine as the socket hooks, fed from the syscall's
 * registers (the fd names the socket, through the task's fd table) and return value. The
 * filter comes first here too, but the enabled tracepoint already put every syscall of every
 * task on the kernel's slow path.
 */
static __always_inline int sys_io(struct sys_exit_ctx *ctx, int send)
{
	__s64 n = ctx->ret;
	if (n == 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!maybe_tracked(tgid))
		return 0;
	struct call call = {};
	if (!socket_call(send, &call) || (!send && recv_peeks()))
		return 0;
	struct sock *sk = fd_sock(call.fd);
	if (!sk || tls_skip(sk, call.fd))
		return 0;
	return on_io(sk, BPF_CORE_READ(sk, __sk_common.skc_hash),
		     BPF_CORE_READ(sk, __sk_common.skc_family), BPF_CORE_READ(sk, sk_protocol), tgid,
		     n, send, &call);
}

/* The exits of recvfrom and recvmsg (probes.go attaches this program to both). */
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int on_sys_recv(struct sys_exit_ctx *ctx)
{
	return sys_io(ctx, 0);
}

/* The exits of sendto, sendmsg and sendfile64. */
SEC("tracepoint/syscalls/sys_exit_sendto")
int on_sys_send(struct sys_exit_ctx *ctx)
{
	return sys_io(ctx, 1);
}

/* ---- both modes ---- */

static __always_inline void tls_forget_sock(struct sock *sk);

/* A worker's TCP connection is gone: the request on it ends, its entry is given back. */
static __always_inline int tcp_gone(struct sock *sk)
{
	tls_forget_sock(sk);
	struct slot *in = 0;
	struct conn *c = find_tcp(sk, sk->__sk_common.skc_hash, &in);
	if (!c)
		return 0;
	struct conn_key k = c->owner;
	end_request(&k, c, GPE_END_CLOSE, bpf_ktime_get_ns());
	drop_tcp(sk, in);
	return 0;
}

/*
 * A worker's TCP connection is destroyed once it is closed on both sides (or reset) and the
 * worker has closed its fd: no more of the response can be written, the request ends. Attached
 * only with --queue-wait=false: on_tcp_state, which runs on every TCP state change anyway,
 * sees the same end (the move to CLOSE), and one program fewer runs twice a connection.
 */
SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(on_tcp_destroy, struct sock *sk)
{
	return tcp_gone(sk);
}

/*
 * A TCP state change, anywhere on the host (about ten per connection). Two go further:
 * - a move to CLOSE (from TIME_WAIT's start, LAST_ACK, or a reset: the worker has closed its
 *   fd, or the connection was reset): the request on it ends, as in on_tcp_destroy;
 * - a passive open reaching ESTABLISHED (the handshake's last ACK; the connection now waits
 *   in its listener's accept queue) on a tracked listener's port.
 * It runs in softirq or in the closing process: the socket is the key.
 */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(on_tcp_state, struct sock *sk, int oldstate, int newstate)
{
	if (newstate == GPE_TCP_CLOSE)
		return tcp_gone(sk);
	if (newstate != GPE_TCP_ESTABLISHED || oldstate != GPE_TCP_SYN_RECV)
		return 0;
	__u32 zero = 0;
	struct listen_ports *lp = bpf_map_lookup_elem(&listen_ports, &zero);
	if (!lp || !lp->on[sk->__sk_common.skc_num])
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct slot *s = slot_of(sk->__sk_common.skc_hash);
	if (s && __sync_val_compare_and_swap(&s->sk, 0, (__u64)sk) == 0) {
		/* The connection's slot, taken now for the worker that will read it: no owner
		 * until then (on_io), its establishment kept. The socket lock orders these writes
		 * before any read of it (the worker's recv waits for this softirq's). A connection
		 * no worker reads gives it back when it is destroyed. */
		s->c.owner.tgid = 0;
		s->c.owner.fd = 0;
		s->c.est_ns = now;
		s->c.seq = 0;
		s->c.state = CONN_IDLE;
		s->c.unix_sock = 0;
		s->c.head_len = 0;
		return 0;
	}
	__u64 key = (__u64)sk;
	bpf_map_update_elem(&established, &key, &now, BPF_ANY);
	return 0;
}

/* ---- TLS (uprobes on libssl) ---- */

/*
 * Gunicorn with --certfile serves TLS itself: the socket hooks see only records, whose
 * plaintext exists in user space, in libssl's buffers. internal/probes/tls.go attaches these
 * programs to the libssl each tracked worker has mapped, with the worker's PID, so that the
 * breakpoints are installed in that process only (a uprobe given a PID traps in no other):
 *   uprobe SSL_set_fd            an SSL is tied to its socket (Python's ssl module calls it when
 *                                it wraps a socket, before the handshake): SSL* -> (sk, fd)
 *   uprobe SSL_read, SSL_read_ex, SSL_write, SSL_write_ex
 *                                a thread enters a TLS read or write: remember the SSL and the
 *                                plaintext buffer, per thread
 *   uretprobe of those four      it returns: the plaintext bytes go through on_io, the same
 *                                state machine as a plaintext connection's, with call.tls set
 * One entry program serves the five functions, told apart by the attach cookie (enum
 * tls_func), and one return program the four.
 * The ciphertext the socket hooks see of a socket tied to an SSL, or in a thread that is inside
 * one of these calls, is skipped (tls_skip), so nothing is counted twice. An SSL whose
 * SSL_set_fd was not seen (wrapped before the uprobes were attached) is tied to the socket of
 * the first socket call made inside one of its reads or writes (socket mode: libssl reads and
 * writes with read/write, which the syscall mode does not hook). SSL_read served from plaintext
 * libssl had already buffered makes no socket call: the SSL* -> socket association answers it.
 */

/* Set at load when --tls is on: the socket hooks look for ciphertext to skip. */
volatile const __u32 tls_on = 0;

/* A thread inside a TLS read or write. */
struct tls_call {
	__u64 ssl;
	__u64 buf;  /* the plaintext */
	__u64 lenp; /* the _ex calls: where the byte count is written */
	__u64 sk;   /* the socket of a socket call made inside, 0 if none yet */
	__u32 fd;
	__u16 op; /* OP_RECV or OP_SEND */
	__u16 ex; /* SSL_read_ex / SSL_write_ex: returns 1, the count is at lenp */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid: the thread */
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

struct tls_key {
	__u64 ssl;
	__u32 tgid;
	__u32 pad;
};

struct tls_conn {
	__u64 sk;
	__u32 fd;
	__u32 pad;
};

/* SSL* of a worker -> its socket. LRU: an SSL freed unseen ages out; a new SSL at the same
 * address is tied again by its SSL_set_fd. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_key);
	__type(value, struct tls_conn);
} tls_ssl SEC(".maps");

/* Sockets carrying TLS under the uprobes, whose ciphertext the socket hooks skip, until the
 * socket is destroyed (on_tcp_destroy). Value: the worker. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} tls_socks SEC(".maps");

/* Threads in tls_calls and sockets in tls_socks (upper bounds): while one is 0, the socket
 * hooks make no lookup of that map, so a worker that serves no TLS pays one memory read. */
__u64 tls_in_calls = 0;
__u64 tls_socks_n = 0;

static __always_inline void tls_mark_sock(__u64 sk, __u32 tgid)
{
	if (bpf_map_update_elem(&tls_socks, &sk, &tgid, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(&tls_socks_n, 1);
}

static __always_inline void tls_forget_sock(struct sock *sk)
{
	if (!tls_on || !tls_socks_n)
		return;
	__u64 key = (__u64)sk;
	if (bpf_map_delete_elem(&tls_socks, &key) == 0)
		__sync_fetch_and_add(&tls_socks_n, -1);
}

/*
 * Is this socket call's data ciphertext of a connection whose plaintext the uprobes see? The
 * socket of a call made inside SSL_read/SSL_write is remembered for that call (fd: the call's
 * fd, or -1 to read it from the syscall's registers).
 */
static __always_inline int tls_skip(struct sock *sk, __s64 fd)
{
	if (!tls_on)
		return 0;
	if (tls_in_calls) {
		__u64 id = bpf_get_current_pid_tgid();
		struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &id);
		if (tc) {
			if (!tc->sk) {
				if (fd < 0) {
					struct pt_regs *r = (struct pt_regs *)bpf_task_pt_regs(
						bpf_get_current_task_btf());
					fd = (__u32)GPE_SYSCALL_ARG0(r);
				}
				tc->fd = (__u32)fd;
				tc->sk = (__u64)sk;
			}
			return 1;
		}
	}
	if (tls_socks_n) {
		__u64 key = (__u64)sk;
		if (bpf_map_lookup_elem(&tls_socks, &key))
			return 1;
	}
	return 0;
}

/* Which function a uprobe is on: its attach cookie (tls.go, tlsFuncs). */
enum tls_func {
	TLS_SET_FD = 1,   /* SSL_set_fd(ssl, fd) */
	TLS_READ = 2,     /* SSL_read(ssl, buf, num) */
	TLS_READ_EX = 3,  /* SSL_read_ex(ssl, buf, num, *readbytes) */
	TLS_WRITE = 4,    /* SSL_write(ssl, buf, num) */
	TLS_WRITE_EX = 5, /* SSL_write_ex(ssl, buf, num, *written) */
};

/* SSL_set_fd(ssl, fd): the SSL's socket, in the calling worker. */
static __always_inline int tls_set_fd(void *ssl, int fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct sock *sk = fd_sock((__u32)fd);
	if (!sk)
		return 0;
	struct tls_key k = {.ssl = (__u64)ssl, .tgid = tgid};
	struct tls_conn v = {.sk = (__u64)sk, .fd = (__u32)fd};
	bpf_map_update_elem(&tls_ssl, &k, &v, BPF_ANY);
	tls_mark_sock((__u64)sk, tgid);
	return 0;
}

/* A thread enters SSL_read/SSL_write(_ex): remember the SSL and the plaintext buffer. */
static __always_inline int tls_enter(void *ssl, void *buf, void *lenp, __u16 op, __u16 ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call tc = {.ssl = (__u64)ssl, .buf = (__u64)buf, .lenp = (__u64)lenp, .op = op, .ex = ex};
	if (bpf_map_update_elem(&tls_calls, &id, &tc, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(&tls_in_calls, 1);
	else /* a call whose return was not seen (the thread died in it) */
		bpf_map_update_elem(&tls_calls, &id, &tc, BPF_ANY);
	return 0;
}

/* The entry of any of the five functions, told apart by the attach cookie. */
static __always_inline int tls_entry(struct pt_regs *ctx)
{
	void *ssl = (void *)GPE_UPROBE_ARG0(ctx);
	__u64 f = bpf_get_attach_cookie(ctx);
	switch (f) {
	case TLS_SET_FD:
		return tls_set_fd(ssl, (int)GPE_UPROBE_ARG1(ctx));
	case TLS_READ:
	case TLS_WRITE:
		return tls_enter(ssl, (void *)GPE_UPROBE_ARG1(ctx), 0, f == TLS_READ ? OP_RECV : OP_SEND, 0);
	case TLS_READ_EX:
	case TLS_WRITE_EX:
		return tls_enter(ssl, (void *)GPE_UPROBE_ARG1(ctx), (void *)GPE_UPROBE_ARG3(ctx),
				 f == TLS_READ_EX ? OP_RECV : OP_SEND, 1);
	}
	return 0;
}

/*
 * The return of any of the four: the plaintext read or written goes through on_io. A call that
 * failed is passed as EAGAIN: a read that finds nothing after a response (an event-loop worker
 * reading again: SSL_ERROR_WANT_READ) ends it, as on a plaintext connection.
 */
static __always_inline int tls_return(struct pt_regs *ctx)
{
	long ret = (long)GPE_UPROBE_RET(ctx);
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *p = bpf_map_lookup_elem(&tls_calls, &id);
	if (!p)
		return 0;
	struct tls_call tc = *p;
	if (bpf_map_delete_elem(&tls_calls, &id) == 0)
		__sync_fetch_and_add(&tls_in_calls, -1);
	__s64 n = -11;
	if (tc.ex) {
		__u64 got = 0;
		if ((int)ret == 1 && tc.lenp && bpf_probe_read_user(&got, sizeof(got), (void *)tc.lenp) == 0)
			n = (__s64)got;
	} else if ((int)ret > 0) {
		n = (int)ret;
	}
	if (n == 0)
		return 0;
	__u32 tgid = id >> 32;
	struct tls_key k = {.ssl = tc.ssl, .tgid = tgid};
	struct tls_conn *s = bpf_map_lookup_elem(&tls_ssl, &k);
	struct tls_conn v = {};
	if (s) {
		v = *s;
	} else if (tc.sk) {
		/* Wrapped before the uprobes were attached: tied by the socket call made inside. */
		v.sk = tc.sk;
		v.fd = tc.fd;
		bpf_map_update_elem(&tls_ssl, &k, &v, BPF_ANY);
		tls_mark_sock(v.sk, tgid);
	} else {
		return 0;
	}
	struct sock *sk = (struct sock *)v.sk;
	struct call call = {.buf = tc.buf, .fd = v.fd, .op = tc.op, .tls = 1};
	return on_io(sk, BPF_CORE_READ(sk, __sk_common.skc_hash),
		     BPF_CORE_READ(sk, __sk_common.skc_family), BPF_CORE_READ(sk, sk_protocol), tgid,
		     n, tc.op == OP_SEND, &call);
}

/*
 * The programs, twice: a uprobe_multi link (used from Linux 6.10, tls.go) attaches one
 * program to all the functions of a worker's libssl at once, and closes in one RCU grace
 * period; a perf-event uprobe (older kernels, --tls-uprobes perf) is one link per function,
 * and each takes its own grace period to close. The kernel wants a different attach type for
 * each; the bodies are the same.
 */
SEC("uprobe.multi")
int on_ssl_enter_m(struct pt_regs *ctx)
{
	return tls_entry(ctx);
}

SEC("uretprobe.multi")
int on_ssl_ret_m(struct pt_regs *ctx)
{
	return tls_return(ctx);
}

SEC("uprobe")
int on_ssl_enter(struct pt_regs *ctx)
{
	return tls_entry(ctx);
}

SEC("uretprobe")
int on_ssl_ret(struct pt_regs *ctx)
{
	return tls_return(ctx);
}

/* Referenced so their BTF is emitted and bpf2go writes the Go types. */
const struct gpe_proc_event *unused_proc_event __attribute__((unused));
const struct gpe_req_start *unused_req_start __attribute__((unused));
