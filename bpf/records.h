/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * records.h: The ring buffer's records (bpf/gpe.h): building and submitting them, and counting the ones that
 * could not be reserved.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_RECORDS_H
#define GPE_RECORDS_H

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost, &zero);
	if (n)
		*n += 1;
}

static __always_inline void count_drop(__u32 reason)
{
	__u64 *n = bpf_map_lookup_elem(&drops, &reason);
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
	e->cpu_ns = 0;
	e->status = c->status;
	e->reason = 0;
	e->flags = c->flags;
	e->line_len = kept;
	e->pad = 0;
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

#endif /* GPE_RECORDS_H */
