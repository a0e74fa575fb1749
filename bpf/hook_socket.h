/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * hook_socket.h: Socket mode (--hooks socket, Linux 6.3+): the sock_recv_length and sock_send_length tracepoints.
 * Only what these hooks' arguments give: the socket and the byte count.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_HOOK_SOCKET_H
#define GPE_HOOK_SOCKET_H

/* A socket hook: every other process of the host stops at the filter, without a map lookup
 * or a helper call. sk is a BTF pointer here: its fields are plain loads. */
static __always_inline int sock_io(struct sock *sk, int ret, int send)
{
	if (ret == 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!maybe_tracked(tgid))
		return 0;
	if (tls_skip(sk, -1, !send && ret > 0)) /* ciphertext: its plaintext comes from the libssl uprobes */
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

#endif /* GPE_HOOK_SOCKET_H */
