/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * conntable.h: The connection table: TCP connections in their socket's slot, else in conns; Unix ones in conns.
 * Finding, adding and dropping an entry.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_CONNTABLE_H
#define GPE_CONNTABLE_H

/* The slot of a socket whose sk_hash is hash. */
static __always_inline struct slot *slot_of(__u32 hash)
{
	__u32 i = hash & slot_mask;
	return bpf_map_lookup_elem(&slots, &i);
}

/*
 * Take slot s for sk if it is free: a compare-and-swap (5.12). The compat object has none, and
 * keeps every TCP connection in conns (user space sizes conns to the whole table there).
 */
static __always_inline int claim_slot(struct slot *s, struct sock *sk)
{
#ifdef GPE_COMPAT
	return 0;
#else
	return s && __sync_val_compare_and_swap(&s->sk, 0, (__u64)sk) == 0;
#endif
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
#ifndef GPE_COMPAT /* which claims no slot */
		__sync_val_compare_and_swap(&s->sk, (__u64)sk, 0);
#endif
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
	if (claim_slot(s, sk)) {
		s->c = *fresh;
		return &s->c;
	}
	__u64 key = (__u64)sk;
	if (bpf_map_update_elem(&conns, &key, fresh, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(&tcp_in_conns, 1);
	return bpf_map_lookup_elem(&conns, &key);
}

/* The inode number of a socket, what /proc/<pid>/fd/<fd> links to. */
static __always_inline __u32 unix_ino(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
}

/*
 * A new entry for worker k's socket, in state, built in a per-CPU map value, not on the stack:
 * with its line it is 352 bytes, and a program's stack with a callback's (the cut) is at most
 * 512. A Unix one's caller sets unix_sock and ino. 0 if there is no map value.
 */
static __always_inline struct conn *init_fresh(struct conn_key *k, __u8 state)
{
	__u32 zero = 0;
	struct conn *fresh = bpf_map_lookup_elem(&fresh_conn, &zero);
	if (!fresh)
		return 0;
	fresh->owner = *k;
	fresh->start_ns = 0;
	fresh->last_write_ns = 0;
	fresh->bytes_in = 0;
	fresh->bytes_out = 0;
	fresh->seq = 0;
	fresh->status = 0;
	fresh->state = state;
	fresh->phase = 0;
	fresh->line_len = 0;
	fresh->flags = 0;
	fresh->unix_sock = 0;
	fresh->ino = 0;
	fresh->est_ns = 0;
	fresh->head_len = 0;
	return fresh;
}

/* Put fresh (init_fresh) in conns for Unix socket sk: its entry, or 0 if the map is full. */
static __always_inline struct conn *new_unix(struct sock *sk, struct conn *fresh)
{
	fresh->unix_sock = 1;
	fresh->ino = unix_ino(sk);
	__u64 key = (__u64)sk;
	bpf_map_update_elem(&conns, &key, fresh, BPF_ANY);
	return bpf_map_lookup_elem(&conns, &key);
}

#endif /* GPE_CONNTABLE_H */
