/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * hook_syscall.h: Syscall mode (--hooks syscall, Linux 5.10 to 6.2): the sys_exit tracepoints of the socket calls.
 * Only what these hooks' arguments give: the return value, and the fd's socket.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_HOOK_SYSCALL_H
#define GPE_HOOK_SYSCALL_H

/* Did the recvfrom or recvmsg the task is in only peek (MSG_PEEK)? */
static __always_inline int recv_peeks(void)
{
	struct pt_regs *r = current_user_regs();
	__u64 flags = GPE_SYSCALL_NR(r) == GPE_NR_recvmsg ? GPE_SYSCALL_ARG2(r) : GPE_SYSCALL_ARG3(r);
	return (flags & GPE_MSG_PEEK) != 0;
}

/*
 * A syscall's exit: the same state machine as the socket hooks, fed from the syscall's
 * registers (the fd names the socket, through the task's fd table) and return value. The
 * filter comes first here too, but the enabled tracepoint already put every syscall of every
 * task on the kernel's slow path.
 */
static __always_inline int sys_io(struct sys_exit_ctx *ctx, int send)
{
	__s64 n = ctx->ret;
	if (n == 0)
		return 0;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!maybe_tracked(tgid))
		return 0;
	struct call call = {};
	if (!socket_call(send, &call) || (!send && recv_peeks()))
		return 0;
	struct sock *sk = fd_sock(call.fd);
	if (!sk || tls_skip(sk, call.fd, !send && n > 0))
		return 0;
	return on_io(sk, BPF_CORE_READ(sk, __sk_common.skc_hash),
		     BPF_CORE_READ(sk, __sk_common.skc_family), BPF_CORE_READ(sk, sk_protocol), tgid,
		     n, send, &call);
}

/* The exits of recvfrom and recvmsg (probes.go attaches this program to both). */
SEC("tracepoint/syscalls/sys_exit_recvfrom")
int on_sys_recv(struct sys_exit_ctx *ctx)
{
	return sys_io(ctx, 0);
}

/* The exits of sendto, sendmsg and sendfile64. */
SEC("tracepoint/syscalls/sys_exit_sendto")
int on_sys_send(struct sys_exit_ctx *ctx)
{
	return sys_io(ctx, 1);
}

#endif /* GPE_HOOK_SYSCALL_H */
