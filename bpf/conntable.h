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

/* The inode number of a socket, what /proc/<pid>/fd/<fd> links to. */
static __always_inline __u32 unix_ino(struct sock *sk)
{
	return BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
}

#endif /* GPE_CONNTABLE_H */
