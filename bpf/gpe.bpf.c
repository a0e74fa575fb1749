//go:build ignore
// SPDX-License-Identifier: GPL-2.0 OR MIT
/*
 * gpe.bpf.c: the kernel side of gpe-ebpf.
 *
 * Hooks (tracepoints and BTF tracepoints only; no kprobes, no fentry/fexit):
 *   tp_btf/sched_process_fork    a tracked master forks: the child is a worker
 *   tp_btf/sched_process_exec    a tracked worker execs: USR2 upgrade, it becomes a master
 *   tp_btf/sched_process_exit    a tracked process's last thread exits, with its wait status
 *   tp_btf/signal_generate       a signal is queued for a tracked process (sender recorded)
 *   tracepoint/oom/mark_victim   the OOM killer picked a tracked process
 *   tracepoint/syscalls/sys_{enter,exit}_{accept,accept4,recvfrom,recvmsg,sendto,sendmsg,
 *                                         sendfile64}, sys_enter_{close,shutdown}
 *                                the HTTP request state machine of each worker connection
 *
 * Every syscall hook first looks the calling process up in `procs` and returns at once for any
 * process that is not a tracked worker, so the rest of the host pays one hash lookup.
 *
 * Records (bpf/gpe.h): gpe_proc_event for process events, gpe_req_event / gpe_req_start for
 * requests, all behind the same 16-byte header, in one ring buffer. Submits that fail are
 * counted per CPU in `lost`.
 *
 * Minimum kernel: 5.17 (bpf_loop; ring buffer and tp_btf are older), with BTF; tested on 6.18.
 */
#include "include/gpe_kernel.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "gpe.h"

char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* Process kinds and a process's master, keyed by tgid. Seeded from user space at attach. */
struct proc_info {
	__u32 master;
	__u32 kind; /* enum gpe_proc_kind */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct proc_info);
} procs SEC(".maps");

enum conn_state {
	CONN_IDLE = 0,       /* accepted, or between requests */
	CONN_READING = 1,    /* request bytes read, no final status line written yet */
	CONN_RESPONDING = 2, /* final status line written */
	CONN_TLS = 3,        /* the first bytes were a TLS record: nothing is parsed */
};

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct conn {
	__u64 start_ns;
	__u64 last_write_ns;
	__u64 bytes_in;
	__u64 bytes_out;
	__u32 seq;
	__u16 status;
	__u8 state;
	__u8 phase;    /* enum line_phase: how far the request line has been read */
	__u16 line_len; /* request-line bytes emitted so far */
	__u8 flags;    /* GPE_FLAG_* */
	__u8 pad;
	__u32 pad2;
};

enum line_phase {
	LINE_METHOD = 0,  /* reading the method */
	LINE_TARGET = 1,  /* the first byte of the target is next */
	LINE_PATH = 2,    /* in the path */
	LINE_DONE = 3,    /* the path ended (space, ?, #): nothing more is kept */
	LINE_INVALID = 4, /* not an HTTP request line */
};

/* Connections of tracked workers. LRU so that fds closed unseen (exit, dup2) age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct conn_key);
	__type(value, struct conn);
} conns SEC(".maps");

enum op {
	OP_ACCEPT = 1,
	OP_RECV = 2,
	OP_SEND = 3,
	OP_SENDFILE = 4,
};

/* Syscall arguments kept from enter to exit, per thread. */
struct pending {
	__u64 buf;
	__u32 fd;
	__u32 op;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct pending);
} pending SEC(".maps");

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

/* Wake the reader only once this many bytes are waiting; a timer in user space reads the rest. */
volatile const __u64 wakeup_bytes = 0;

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

static __always_inline __u64 submit_flags(void)
{
	if (!wakeup_bytes)
		return 0;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		return BPF_RB_FORCE_WAKEUP;
	return BPF_RB_NO_WAKEUP;
}

static __always_inline struct proc_info *tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&procs, &tgid);
}

static __always_inline void emit_proc(__u32 kind, __u32 tgid, __u32 other, __u32 master,
				      __s32 code, __u32 proc_kind, __u64 start_ns)
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
	bpf_map_update_elem(&procs, &ctgid, &w, BPF_ANY);
	emit_proc(GPE_EV_FORK, ctgid, ptgid, ptgid, 0, GPE_PROC_WORKER, child->start_boottime);
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
	emit_proc(GPE_EV_EXEC, tgid, old_master, tgid, 0, old_kind, 0);
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
	bpf_map_delete_elem(&procs, &tgid);
	emit_proc(GPE_EV_EXIT, tgid, 0, master, p->exit_code, kind, 0);
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
	emit_proc(GPE_EV_SIGNAL, tgid, sender, p->master, sig, p->kind, 0);
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
	emit_proc(GPE_EV_OOM, tgid, 0, p->master, 0, p->kind, 0);
	return 0;
}

/* ---- requests ---- */

/* Is this process a tracked worker? The first thing every syscall hook asks. */
static __always_inline int is_worker(__u32 tgid)
{
	struct proc_info *p = tracked(tgid);
	return p && p->kind == GPE_PROC_WORKER;
}

static __always_inline int remember(__u64 id, __u32 fd, __u64 buf, __u32 op)
{
	struct pending a = {.buf = buf, .fd = fd, .op = op};
	return bpf_map_update_elem(&pending, &id, &a, BPF_ANY);
}

static __always_inline void emit_req(__u32 kind, struct conn_key *k, struct conn *c, __u8 reason,
				     __u64 now)
{
	struct gpe_req_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	e->hdr.kind = kind;
	e->hdr.tgid = k->tgid;
	e->hdr.ts_ns = now;
	e->fd = k->fd;
	e->seq = c->seq;
	e->start_ns = c->start_ns;
	e->last_write_ns = c->last_write_ns;
	e->bytes_in = c->bytes_in;
	e->bytes_out = c->bytes_out;
	e->status = c->status;
	e->reason = reason;
	e->flags = c->flags | (c->state == CONN_TLS ? GPE_FLAG_TLS : 0);
	e->line_len = 0;
	e->pad = 0;
	bpf_ringbuf_submit(e, submit_flags());
}

/* End the request in flight on c, if any, and leave the connection idle. */
static __always_inline void end_request(struct conn_key *k, struct conn *c, __u8 reason, __u64 now)
{
	if (c->state == CONN_READING || c->state == CONN_RESPONDING)
		emit_req(GPE_EV_REQ_END, k, c, reason, now);
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

static long zero_step(__u64 i, void *data)
{
	struct cut_ctx *x = data;
	__u64 at = x->kept + i;
	if (at >= GPE_LINE_MAX)
		return 1;
	x->line[at] = 0;
	return 0;
}

/*
 * Keep the part of "METHOD SP path" in the n bytes just copied to line, resuming at *phase
 * (a request line may arrive a few bytes at a time), and zero everything else: the query
 * string, the fragment, the protocol version and every header never leave the kernel.
 * Returns how many leading bytes of line are kept; *phase says where the line stands.
 */
static __always_inline __u32 cut_line(char *line, __u32 n, __u32 *phase, __u32 pos)
{
	struct cut_ctx x = {.line = line, .n = n, .phase = *phase, .pos = pos};
	bpf_loop(GPE_LINE_MAX, cut_step, &x, 0);
	*phase = x.phase;
	if (x.phase == LINE_INVALID)
		x.kept = 0;
	bpf_loop(GPE_LINE_MAX, zero_step, &x, 0);
	return x.kept;
}

/* Copy up to GPE_LINE_MAX bytes of the read into a reserved record; returns the count. */
static __always_inline __u32 copy_head(struct gpe_req_start *e, __u64 buf, __s64 n)
{
	__u32 len = n > GPE_LINE_MAX ? GPE_LINE_MAX : (__u32)n;
	len &= 0x1ff;
	if (len > GPE_LINE_MAX)
		len = GPE_LINE_MAX;
	if (bpf_probe_read_user(e->line, len, (void *)buf) != 0)
		return 0;
	return len;
}

static __always_inline void fill_line_event(struct gpe_req_start *e, __u32 kind, struct conn_key *k,
					    struct conn *c, __u64 now, __u32 kept)
{
	e->req.hdr.kind = kind;
	e->req.hdr.tgid = k->tgid;
	e->req.hdr.ts_ns = now;
	e->req.fd = k->fd;
	e->req.seq = c->seq;
	e->req.start_ns = c->start_ns;
	e->req.last_write_ns = 0;
	e->req.bytes_in = c->bytes_in;
	e->req.bytes_out = 0;
	e->req.status = 0;
	e->req.reason = 0;
	e->req.flags = 0;
	e->req.line_len = kept;
	e->req.pad = 0;
}

/* Start a new request on c with the bytes just read; emits REQ_START with the cut line. */
static __always_inline void start_request(struct conn_key *k, struct conn *c, __u64 buf, __s64 n,
					  __u64 now, int must_look_like_request)
{
	struct gpe_req_start *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		/* Still account the request so RESP and END are emitted and counted. */
		if (!must_look_like_request) {
			c->seq++;
			c->start_ns = now;
			c->last_write_ns = 0;
			c->bytes_in = n;
			c->bytes_out = 0;
			c->status = 0;
			c->flags = 0;
			c->phase = LINE_INVALID;
			c->line_len = 0;
			c->state = CONN_READING;
		} else {
			c->bytes_in += n;
		}
		return;
	}
	__u32 len = copy_head(e, buf, n);
	__u8 first = len > 0 ? (__u8)e->line[0] : 0;
	if (c->state == CONN_IDLE && c->seq == 0 && first == 0x16) {
		/* A TLS handshake record: the connection is encrypted, nothing can be parsed. */
		bpf_ringbuf_discard(e, 0);
		c->state = CONN_TLS;
		return;
	}
	__u32 phase = LINE_METHOD;
	__u32 kept = cut_line(e->line, len, &phase, 0);
	if (must_look_like_request && phase == LINE_INVALID) {
		/* Continuation bytes of the current request (e.g. a body drained late). */
		bpf_ringbuf_discard(e, 0);
		c->bytes_in += n;
		return;
	}
	if (c->state == CONN_RESPONDING)
		end_request(k, c, GPE_END_NEXT, now);
	c->seq++;
	c->start_ns = now;
	c->last_write_ns = 0;
	c->bytes_in = n;
	c->bytes_out = 0;
	c->status = 0;
	c->flags = 0;
	c->phase = phase;
	c->line_len = kept;
	c->state = CONN_READING;
	fill_line_event(e, GPE_EV_REQ_START, k, c, now, kept);
	bpf_ringbuf_submit(e, submit_flags());
}

/* More bytes of a request whose line was not complete: emit the next piece of the line. */
static __always_inline void continue_line(struct conn_key *k, struct conn *c, __u64 buf, __s64 n,
					  __u64 now)
{
	c->bytes_in += n;
	struct gpe_req_start *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		c->phase = LINE_INVALID;
		return;
	}
	__u32 len = copy_head(e, buf, n);
	__u32 phase = c->phase;
	__u32 kept = cut_line(e->line, len, &phase, c->line_len);
	c->phase = phase;
	__u32 room = GPE_LINE_MAX - (c->line_len & (GPE_LINE_MAX - 1));
	if (kept > room)
		kept = room;
	if (kept == 0 || c->line_len >= GPE_LINE_MAX) {
		bpf_ringbuf_discard(e, 0);
		return;
	}
	c->line_len += kept;
	fill_line_event(e, GPE_EV_REQ_LINE, k, c, now, kept);
	bpf_ringbuf_submit(e, submit_flags());
}

/* Has the client closed its side (a FIN or a reset arrived) on this worker's fd? */
static __always_inline __u8 peer_gone(__u32 fd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd & 0xfffff]) != 0 || !f)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	if (!sock)
		return 0;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	__u8 shut = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown);
	return (shut & 1 /* RCV_SHUTDOWN */) ? 1 : 0;
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

static __always_inline int do_enter_accept(void)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_worker(id >> 32))
		return 0;
	remember(id, 0, 0, OP_ACCEPT);
	return 0;
}

/* Attached to sys_enter_accept and sys_enter_accept4 (probes.go). */
SEC("tracepoint/syscalls/sys_enter_accept")
int enter_accept(struct sys_enter_ctx *ctx)
{
	return do_enter_accept();
}

static __always_inline struct pending *take_pending(__u64 id)
{
	return bpf_map_lookup_elem(&pending, &id);
}

static __always_inline int do_exit_accept(struct sys_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending *a = take_pending(id);
	if (!a)
		return 0;
	bpf_map_delete_elem(&pending, &id);
	if (ctx->ret < 0)
		return 0;
	struct conn_key k = {.tgid = id >> 32, .fd = (__u32)ctx->ret};
	struct conn *old = bpf_map_lookup_elem(&conns, &k);
	if (old)
		end_request(&k, old, GPE_END_REUSED, bpf_ktime_get_ns());
	struct conn c = {};
	bpf_map_update_elem(&conns, &k, &c, BPF_ANY);
	return 0;
}

/* Attached to sys_exit_accept and sys_exit_accept4 (probes.go). */
SEC("tracepoint/syscalls/sys_exit_accept")
int exit_accept(struct sys_exit_ctx *ctx)
{
	return do_exit_accept(ctx);
}

static __always_inline int enter_io(__u32 fd, __u64 buf, __u32 op)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_worker(id >> 32))
		return 0;
	if (op != OP_RECV) {
		/* Writes matter only on connections we know. Reads on an unknown fd may be a
		 * keep-alive connection accepted before attach; the exit side decides. */
		struct conn_key k = {.tgid = id >> 32, .fd = fd};
		if (!bpf_map_lookup_elem(&conns, &k))
			return 0;
	}
	remember(id, fd, buf, op);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct sys_enter_ctx *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], OP_RECV);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct sys_enter_ctx *ctx)
{
	return enter_io(ctx->args[0], ctx->args[1], OP_SEND);
}

/* The first iovec's base of a user msghdr: where a status line or request line would be. */
static __always_inline __u64 msghdr_base(__u64 msg)
{
	struct user_msghdr m;
	struct iovec iov;
	if (bpf_probe_read_user(&m, sizeof(m), (void *)msg) != 0 || !m.msg_iov || !m.msg_iovlen)
		return 0;
	if (bpf_probe_read_user(&iov, sizeof(iov), m.msg_iov) != 0)
		return 0;
	return (__u64)iov.iov_base;
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct sys_enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_worker(id >> 32))
		return 0;
	remember(id, ctx->args[0], msghdr_base(ctx->args[1]), OP_RECV);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct sys_enter_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_worker(id >> 32))
		return 0;
	struct conn_key k = {.tgid = id >> 32, .fd = ctx->args[0]};
	if (!bpf_map_lookup_elem(&conns, &k))
		return 0;
	remember(id, ctx->args[0], msghdr_base(ctx->args[1]), OP_SEND);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_sendfile64")
int enter_sendfile(struct sys_enter_ctx *ctx)
{
	return enter_io(ctx->args[0], 0, OP_SENDFILE);
}

static __always_inline int do_exit_io(struct sys_exit_ctx *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending *a = take_pending(id);
	if (!a)
		return 0;
	struct pending p = *a;
	bpf_map_delete_elem(&pending, &id);
	__s64 n = ctx->ret;
	if (n == 0)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct conn_key k = {.tgid = id >> 32, .fd = p.fd};
	struct conn *c = bpf_map_lookup_elem(&conns, &k);
	if (n < 0) {
		/* An event-loop worker (gevent, eventlet, tornado, asyncio) reads again as soon
		 * as a response is written, and finds nothing yet: the response is complete. */
		if (c && c->state == CONN_RESPONDING && p.op == OP_RECV && n == -11 /* EAGAIN */)
			end_request(&k, c, GPE_END_WAIT, now);
		return 0;
	}

	if (p.op == OP_RECV) {
		if (!c) {
			/* Adopt a connection accepted before attach, but only at a request line:
			 * the worker's own client sockets (databases, HTTP APIs) never read one. */
			struct conn fresh = {};
			bpf_map_update_elem(&conns, &k, &fresh, BPF_NOEXIST);
			c = bpf_map_lookup_elem(&conns, &k);
			if (!c)
				return 0;
			start_request(&k, c, p.buf, n, now, 1);
			if (c->state == CONN_IDLE)
				bpf_map_delete_elem(&conns, &k);
			return 0;
		}
		if (c->state == CONN_READING) {
			if (c->phase < LINE_DONE && c->line_len < GPE_LINE_MAX)
				continue_line(&k, c, p.buf, n, now);
			else
				c->bytes_in += n;
		} else if (c->state == CONN_IDLE) {
			start_request(&k, c, p.buf, n, now, 0);
		} else if (c->state == CONN_RESPONDING) {
			start_request(&k, c, p.buf, n, now, 1);
		}
		return 0;
	}

	if (!c || c->state == CONN_TLS || c->state == CONN_IDLE)
		return 0;
	if (p.op == OP_SEND) {
		__u16 st = status_code(p.buf, n);
		if (st >= 200) {
			if (c->state == CONN_RESPONDING) {
				/* A second final status line: the client pipelined requests and the worker
				 * answers the next one, whose request line we did not see. */
				emit_req(GPE_EV_REQ_END, &k, c, GPE_END_PIPELINE, now);
				c->seq++;
				c->start_ns = c->last_write_ns;
				c->bytes_in = 0;
				c->bytes_out = 0;
				struct gpe_req_start *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
				if (e) {
					__builtin_memset(e->line, 0, GPE_LINE_MAX);
					fill_line_event(e, GPE_EV_REQ_START, &k, c, now, 0);
					bpf_ringbuf_submit(e, submit_flags());
				} else {
					count_lost();
				}
			}
			c->status = st;
			c->state = CONN_RESPONDING;
			/* A client that left before its answer: the worker writes into the void. */
			c->flags = peer_gone(k.fd) ? GPE_FLAG_CLIENT_GONE : 0;
			c->bytes_out += n;
			c->last_write_ns = now;
			emit_req(GPE_EV_REQ_RESP, &k, c, 0, now);
			return 0;
		}
	}
	/* Body bytes (or a 1xx interim response, which does not end the request). */
	c->bytes_out += n;
	if (c->state == CONN_RESPONDING)
		c->last_write_ns = now;
	return 0;
}

/* One program for the exits of recvfrom, recvmsg, sendto, sendmsg and sendfile64: the same
 * context layout, and the syscall is told apart by what its enter side remembered (probes.go
 * attaches it to each). */
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int exit_io(struct sys_exit_ctx *ctx)
{
	return do_exit_io(ctx);
}

static __always_inline int conn_done(__u32 fd, __u8 reason)
{
	__u64 id = bpf_get_current_pid_tgid();
	if (!is_worker(id >> 32))
		return 0;
	struct conn_key k = {.tgid = id >> 32, .fd = fd};
	struct conn *c = bpf_map_lookup_elem(&conns, &k);
	if (!c)
		return 0;
	end_request(&k, c, reason, bpf_ktime_get_ns());
	if (reason == GPE_END_CLOSE)
		bpf_map_delete_elem(&conns, &k);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_close")
int enter_close(struct sys_enter_ctx *ctx)
{
	return conn_done(ctx->args[0], GPE_END_CLOSE);
}

SEC("tracepoint/syscalls/sys_enter_shutdown")
int enter_shutdown(struct sys_enter_ctx *ctx)
{
	return conn_done(ctx->args[0], GPE_END_SHUTDOWN);
}

/* Referenced so their BTF is emitted and bpf2go writes the Go types. */
const struct gpe_proc_event *unused_proc_event __attribute__((unused));
const struct gpe_req_start *unused_req_start __attribute__((unused));
