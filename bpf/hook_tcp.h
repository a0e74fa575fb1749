/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * hook_tcp.h: Both modes: the TCP state hooks. A worker's TCP connection that is gone ends its request and
 * gives back its entry; a connection established to a tracked listener takes its slot.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_HOOK_TCP_H
#define GPE_HOOK_TCP_H

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
 * worker has closed its fd: no more of the response can be written, the request ends. With
 * --queue-wait, on_tcp_state has ended it already at the move to CLOSE, and this finds no
 * entry; except when the kernel skipped that run of on_tcp_state because another was running
 * on the same CPU (a softirq's CLOSE arriving while a process changes a state: a recursion
 * miss), which left the request in flight for good before this hook was always attached.
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
	if (claim_slot(s, sk)) {
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

#endif /* GPE_HOOK_TCP_H */
