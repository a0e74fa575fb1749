/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * process.h: The process lifecycle: which processes are tracked (procs and its filter), their requests in
 * flight, and the hooks that follow a master's forks, execs, signals, OOM kills and exits. on_exit
 * ends a worker's requests in flight before its EXIT record (end_request, request.h).
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_PROCESS_H
#define GPE_PROCESS_H

/* request.h, after this file: on_exit ends the requests of a worker that exits. */
static __always_inline void end_request(struct conn_key *k, struct conn *c, __u8 reason, __u64 now);
#ifdef GPE_COMPAT
__noinline int end_fds(__u32 tgid, __u64 now);
#endif

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

static __always_inline struct proc_info *tracked(__u32 tgid)
{
	return bpf_map_lookup_elem(&procs, &tgid);
}

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
#ifdef GPE_COMPAT
	/* No fetch-and-add before 5.12: the count read, then added to. Two threads of one
	 * worker (gthread) starting or ending requests at the same instant may miscount its busy
	 * time; a sync worker's requests never overlap. */
	__u32 had = *(volatile __u32 *)&p->inflight;
	if (d > 0) {
		__sync_fetch_and_add(&p->inflight, 1);
		if (had == 0)
			p->busy_since = now;
		return;
	}
	if (had == 0)
		return;
	__sync_fetch_and_add(&p->inflight, -1);
	if (had == 1 && now > p->busy_since)
		__sync_fetch_and_add(&p->busy_ns, now - p->busy_since);
	return;
#endif
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

struct signal_struct {
	struct {
		int counter;
	} live;
} __attribute__((preserve_access_index));

struct task_struct___sig {
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

/*
 * Worker tgid (pi, or looked up) read a TLS handshake: the first time, say so (GPE_EV_TLS), so
 * that user space attaches the TLS uprobes to the workers of a master it took for plaintext.
 * Once a process: its later TLS connections send nothing.
 */
static __always_inline void tls_seen(__u32 tgid, struct proc_info *pi)
{
	if (!pi)
		pi = tracked(tgid);
	if (!pi || (pi->flags & PROC_TLS_SEEN))
		return;
#ifdef GPE_COMPAT
	pi->flags |= PROC_TLS_SEEN; /* no fetch-and-or before 5.12: two threads may both say so */
#else
	if (__sync_fetch_and_or(&pi->flags, PROC_TLS_SEEN) & PROC_TLS_SEEN)
		return;
#endif
	emit_proc(GPE_EV_TLS, tgid, 0, pi->master, 0, pi->kind, 0, 0);
}

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

/*
 * The requests a worker that exits was serving end with it (GPE_END_EXIT), before its EXIT
 * record: its files are closed after this tracepoint, so its connections are all still in
 * the tables. A walk of the slots (slot_mask + 1 callbacks, a fraction of a millisecond) and
 * of conns, once per worker exit.
 */
struct exit_walk {
	__u32 tgid;
	__u32 pad;
	__u64 now;
};

#ifndef GPE_COMPAT
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
#endif

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
#ifdef GPE_COMPAT
	/* Without bpf_for_each_map_elem (5.13): the worker's own fds instead of the tables. */
	if (kind == GPE_PROC_WORKER)
		end_fds(tgid, now);
#else
	if (kind == GPE_PROC_WORKER) {
		struct exit_walk x = {.tgid = tgid, .now = now};
		bpf_for_each_map_elem(&slots, end_slot_of, &x, 0);
		bpf_for_each_map_elem(&conns, end_conn_of, &x, 0);
	}
#endif
	/* Its busy time, with the requests that just ended (they were its last). */
	__u64 busy = info->busy_ns;
	if (info->inflight && now > info->busy_since)
		busy += now - info->busy_since;
	untrack(tgid);
	emit_proc(GPE_EV_EXIT, tgid, 0, master, p->exit_code, kind, 0, busy);
	return 0;
}

#endif /* GPE_PROCESS_H */
