/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * downstream.h: A worker's own client connections (to databases, caches, APIs: CONN_PEER) and
 * the calls a request makes on them, per peer, in its thread's thread_ds entry. A call is a send,
 * then the receives before the next send; its time runs from the send to its last receive.
 * request.h's thread_answer sends them with the request's status line.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_DOWNSTREAM_H
#define GPE_DOWNSTREAM_H

#define PEER_SENT 1
#define PEER_RECEIVED 2
#define PEER_NO_SLOT 0xff

/* Who sk (of family) talks to, into pc, with the key its thread's slots know it by. */
static __always_inline void peer_of(struct sock *sk, __u16 family, struct peer_conn *pc)
{
	__builtin_memset(&pc->peer, 0, sizeof(pc->peer));
	pc->peer.family = family;
	if (family == GPE_AF_UNIX) {
		struct unix_sock *u = (struct unix_sock *)sk;
		pc->peer.ino = BPF_CORE_READ(u, peer, sk_socket, file, f_inode, i_ino);
		pc->key = ((__u64)family << 48) | pc->peer.ino;
	} else {
		__u16 port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
		pc->peer.port = port;
		__u64 key = ((__u64)family << 48) | ((__u64)port << 32);
		if (family == GPE_AF_INET) {
			__u32 a = BPF_CORE_READ(sk, __sk_common.skc_daddr);
			__builtin_memcpy(pc->peer.addr, &a, sizeof(a));
			key |= a;
		} else {
			bpf_core_read(pc->peer.addr, sizeof(pc->peer.addr), &sk->__sk_common.skc_v6_daddr);
			__u64 hi = 0, lo = 0;
			__builtin_memcpy(&hi, pc->peer.addr, 8);
			__builtin_memcpy(&lo, pc->peer.addr + 8, 8);
			key ^= hi * 0x9e3779b97f4a7c15ULL ^ lo;
		}
		pc->key = key;
	}
	pc->mark = 0;
	pc->seq = 0;
	pc->dir = 0;
	pc->slot = PEER_NO_SLOT;
}

/* The slot of pc's peer among the calls of d's request (added if new), in pc->slot. */
static __always_inline void peer_slot(struct peer_conn *pc, struct gpe_ds_event *d)
{
	pc->seq = d->seq;
	pc->slot = PEER_NO_SLOT;
	__u32 n = d->n;
#pragma unroll
	for (__u32 i = 0; i < GPE_PEERS_MAX; i++) {
		if (i < n && d->key[i] == pc->key) {
			pc->slot = i;
			return;
		}
	}
	if (n >= GPE_PEERS_MAX)
		return;
	d->key[n] = pc->key;
	d->peers[n] = pc->peer;
	d->peers[n].calls = 0;
	d->peers[n].ns = 0;
	d->n = n + 1;
	pc->slot = n;
}

/* A send on a downstream connection: a new call, unless the last call on it was a send too.
 * Booked to the request its thread serves alone, if any. */
static __always_inline void peer_send(struct peer_conn *pc, __u64 now)
{
	if (pc->dir == PEER_SENT)
		return;
	pc->dir = PEER_SENT;
	pc->mark = now;
	pc->seq = 0;
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct thread_req *r = bpf_map_lookup_elem(&thread_reqs, &tid);
	if (!r || !r->open || r->shared)
		return; /* no request, or the thread serves several: booked to none */
	struct gpe_ds_event *d = bpf_map_lookup_elem(&thread_ds, &tid);
	if (!d) {
		/* Its contents do not matter: seq and n are set below, a slot when it is taken. */
		__u32 zero = 0;
		struct conn *any = bpf_map_lookup_elem(&fresh_conn, &zero);
		if (!any)
			return;
		bpf_map_update_elem(&thread_ds, &tid, any, BPF_NOEXIST);
		d = bpf_map_lookup_elem(&thread_ds, &tid);
		if (!d)
			return;
		d->seq = 0;
	}
	if (d->seq != r->open) {
		d->seq = r->open;
		d->n = 0;
	}
	r->ds_seq = r->open;
	peer_slot(pc, d);
	if (pc->slot >= GPE_PEERS_MAX) {
		count_drop(GPE_DROP_PEERS);
		return;
	}
	d->peers[pc->slot & (GPE_PEERS_MAX - 1)].calls += 1;
}

/* A receive on a downstream connection: the current call's time runs to now. */
static __always_inline void peer_recv(struct peer_conn *pc, __u64 now)
{
	if (!pc->dir)
		return; /* nothing sent yet (a server's greeting) */
	if (pc->seq && pc->slot < GPE_PEERS_MAX) {
		__u32 tid = (__u32)bpf_get_current_pid_tgid();
		struct gpe_ds_event *d = bpf_map_lookup_elem(&thread_ds, &tid);
		if (d && d->seq == pc->seq)
			d->peers[pc->slot & (GPE_PEERS_MAX - 1)].ns += now - pc->mark;
	}
	pc->mark = now;
	pc->dir = PEER_RECEIVED;
}

/* A worker's send on a connection of no request: its first call, on a new entry, if the
 * thread serves a request alone (else the connection takes no room). */
static __always_inline void peer_new(struct conn_key *k, struct sock *sk, __u32 hash, int tcp,
				     __u16 family, __u64 now)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct thread_req *r = bpf_map_lookup_elem(&thread_reqs, &tid);
	if (!r || !r->open || r->shared)
		return;
	struct conn *fresh = init_fresh(k, CONN_PEER);
	if (!fresh)
		return;
	peer_of(sk, family, &fresh->pc);
	struct conn *c = tcp ? new_tcp(sk, hash, fresh) : new_unix(sk, fresh);
	if (c)
		peer_send(&c->pc, now);
}

/* A connection in probation (its first read was no request) on which the worker sent what is
 * no status line: its own client connection, from now on. */
static __always_inline void peer_adopt(struct sock *sk, __u16 family, struct conn *c, __u64 now)
{
	c->state = CONN_PEER;
	peer_of(sk, family, &c->pc);
	peer_send(&c->pc, now);
}

#endif /* GPE_DOWNSTREAM_H */
