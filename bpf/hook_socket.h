/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * hook_socket.h: Socket mode (--hooks socket, Linux 6.3+): the sock_recv_length and sock_send_length tracepoints.
 * Only what these hooks' arguments give: the socket and the byte count.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_HOOK_SOCKET_H
#define GPE_HOOK_SOCKET_H

/* The calling process, past the filter, of a socket hook whose call moved ret bytes; 0 for a
 * call that moved none and for every other process of the host, which stops here without a
 * map lookup or a helper call. Shared by the socket, fentry and kprobe modes. */
static __always_inline __u32 sock_caller(int ret)
{
	if (ret == 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	return maybe_tracked(tgid) ? tgid : 0;
}

/* A socket hook whose sk is a BTF pointer (socket and fentry modes): its fields are plain
 * loads. The kprobe mode's sk is a plain number: sock_io_core, below, reads it with CO-RE. */
static __always_inline int sock_io(struct sock *sk, int ret, int send)
{
	__u32 tgid = sock_caller(ret);
	if (!tgid || tls_skip(sk, -1, !send && ret > 0)) /* ciphertext: its plaintext comes from the libssl uprobes */
		return 0;
	struct call call = {};
	return on_io(sk, sk->__sk_common.skc_hash, sk->__sk_common.skc_family, sk->sk_protocol,
		     tgid, ret, send, &call);
}

/* The same where sk is a plain number, not a BTF pointer (kprobe mode; sendpage's socket, behind
 * a file's void *): its fields through CO-RE reads. tgid is sock_caller's, already past the filter. */
static __always_inline int sock_io_core(struct sock *sk, __u32 tgid, int ret, int send)
{
	if (!sk || tls_skip(sk, -1, !send && ret > 0))
		return 0;
	struct call call = {};
	return on_io(sk, BPF_CORE_READ(sk, __sk_common.skc_hash), BPF_CORE_READ(sk, __sk_common.skc_family),
		     BPF_CORE_READ(sk, sk_protocol), tgid, ret, send, &call);
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
