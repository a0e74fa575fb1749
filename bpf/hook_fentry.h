/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * hook_fentry.h: Fentry mode (--hooks fentry, kernels without the socket tracepoints, where BPF
 * trampolines can attach to kernel functions: x86_64 5.5+; arm64's Debian 6.12 but not its 6.1,
 * which refuses the attach, "not supported"): fexit on the protocols' send and receive functions.
 * Only what these hooks' arguments give: the socket, the flags and the byte count.
 *
 * Why the protocols' functions and not sock_sendmsg/sock_recvmsg: since "net: prevent rewrite of
 * msg_name in sock_sendmsg()" (6.6, backported to 6.1.56), write(2), sendto(2) and sendmsg(2)
 * call __sock_sendmsg, which 6.12 inlines: sock_sendmsg is not on their path. Every send and
 * receive of a TCP or Unix stream socket reaches its protocol's function, called through the
 * socket's ops (never inlined): inet_ and inet6_ for TCP, unix_stream_ for Unix sockets.
 * sendfile to a socket before 6.5 goes through sock_sendpage instead (optional: probes.go loads
 * it only where the kernel's BTF has it); from 6.5 it goes through sendmsg.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_HOOK_FENTRY_H
#define GPE_HOOK_FENTRY_H

struct msghdr;
struct page;

static __always_inline int fexit_recv(struct socket *sock, int flags, int ret)
{
	if (flags & GPE_MSG_PEEK)
		return 0;
	return sock_io(sock->sk, ret, 0);
}

/* A receive from a TCP socket (IPv4), after it returned: read, readv, recvfrom, recvmsg. */
SEC("fexit/inet_recvmsg")
int BPF_PROG(on_fexit_inet_recv, struct socket *sock, struct msghdr *msg, unsigned long size, int flags, int ret)
{
	return fexit_recv(sock, flags, ret);
}

/* The same on a TCP socket over IPv6. */
SEC("fexit/inet6_recvmsg")
int BPF_PROG(on_fexit_inet6_recv, struct socket *sock, struct msghdr *msg, unsigned long size, int flags, int ret)
{
	return fexit_recv(sock, flags, ret);
}

/* The same on a Unix stream socket. */
SEC("fexit/unix_stream_recvmsg")
int BPF_PROG(on_fexit_unix_recv, struct socket *sock, struct msghdr *msg, unsigned long size, int flags, int ret)
{
	return fexit_recv(sock, flags, ret);
}

/* A send on a TCP socket (IPv4), after it returned: write, writev, sendto, sendmsg, and
 * sendfile's pieces from 6.5. */
SEC("fexit/inet_sendmsg")
int BPF_PROG(on_fexit_inet_send, struct socket *sock, struct msghdr *msg, unsigned long size, int ret)
{
	return sock_io(sock->sk, ret, 1);
}

/* The same on a TCP socket over IPv6. */
SEC("fexit/inet6_sendmsg")
int BPF_PROG(on_fexit_inet6_send, struct socket *sock, struct msghdr *msg, unsigned long size, int ret)
{
	return sock_io(sock->sk, ret, 1);
}

/* The same on a Unix stream socket. */
SEC("fexit/unix_stream_sendmsg")
int BPF_PROG(on_fexit_unix_send, struct socket *sock, struct msghdr *msg, unsigned long size, int ret)
{
	return sock_io(sock->sk, ret, 1);
}

/* sendfile to a socket before 6.5 (optional): the socket is the file's. */
SEC("fexit/sock_sendpage")
int BPF_PROG(on_fexit_sendpage, struct file *file, struct page *page, int offset, unsigned long size,
	     long long *ppos, int more, long ret)
{
	__u32 tgid = sock_caller(ret);
	if (!tgid)
		return 0;
	struct socket *sock = file->private_data; /* a void *: a plain number, read with CO-RE */
	return sock_io_core(BPF_CORE_READ(sock, sk), tgid, ret, 1);
}

#endif /* GPE_HOOK_FENTRY_H */
