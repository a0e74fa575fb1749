/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * hook_kprobe.h: Kprobe mode (--hooks kprobe, kernels without the socket tracepoints nor BPF
 * trampolines): kprobes and kretprobes on the functions fentry mode hooks (hook_fentry.h says
 * which and why). The entry probe saves the socket (kprobe_socks), the return probe takes it
 * back with the byte count. Only what these hooks' arguments give; the socket is a plain number
 * here, read with CO-RE (sock_io_core). A kernel function's first arguments and return value are
 * in the registers of the C calling convention, as a user function's: the GPE_UPROBE_* macros.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_HOOK_KPROBE_H
#define GPE_HOOK_KPROBE_H

/* An entry: is the caller maybe tracked (the rest of the host stops here)? */
static __always_inline int kprobe_tracked(void)
{
	return maybe_tracked(bpf_get_current_pid_tgid() >> 32);
}

/* An entry of a maybe tracked process: its thread saves its socket for the return probe. */
static __always_inline int kprobe_save(struct socket *sock)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u64 v = (__u64)sock;
	bpf_map_update_elem(&kprobe_socks, &id, &v, BPF_ANY);
	return 0;
}

/* A return: the socket its entry saved, through the same state machine as the other modes. */
static __always_inline int kprobe_return(int ret, int send)
{
	__u32 tgid = sock_caller(ret);
	if (!tgid)
		return 0;
	__u64 id = bpf_get_current_pid_tgid();
	__u64 *v = bpf_map_lookup_elem(&kprobe_socks, &id);
	if (!v)
		return 0;
	struct socket *sock = (struct socket *)*v;
	bpf_map_delete_elem(&kprobe_socks, &id);
	return sock_io_core(BPF_CORE_READ(sock, sk), tgid, ret, send);
}

/* inet_recvmsg, inet6_recvmsg and unix_stream_recvmsg (probes.go attaches it to each): a
 * peek (MSG_PEEK) saves nothing, so its return is skipped. */
SEC("kprobe/inet_recvmsg")
int on_kprobe_recv(struct pt_regs *ctx)
{
	if (GPE_UPROBE_ARG3(ctx) & GPE_MSG_PEEK || !kprobe_tracked()) /* flags */
		return 0;
	return kprobe_save((struct socket *)GPE_UPROBE_ARG0(ctx));
}

SEC("kretprobe/inet_recvmsg")
int on_kretprobe_recv(struct pt_regs *ctx)
{
	return kprobe_return((int)GPE_UPROBE_RET(ctx), 0);
}

/* inet_sendmsg, inet6_sendmsg and unix_stream_sendmsg (probes.go attaches it to each). */
SEC("kprobe/inet_sendmsg")
int on_kprobe_send(struct pt_regs *ctx)
{
	return kprobe_tracked() ? kprobe_save((struct socket *)GPE_UPROBE_ARG0(ctx)) : 0;
}

/* sock_sendpage (sendfile before 6.5, optional): the socket is the file's. */
SEC("kprobe/sock_sendpage")
int on_kprobe_sendpage(struct pt_regs *ctx)
{
	struct file *file = (struct file *)GPE_UPROBE_ARG0(ctx);
	return kprobe_tracked() ? kprobe_save(BPF_CORE_READ(file, private_data)) : 0;
}

/* The returns of the send functions and of sock_sendpage (its ssize_t read as an int: a piece
 * of a sendfile is at most a pipe buffer). */
SEC("kretprobe/inet_sendmsg")
int on_kretprobe_send(struct pt_regs *ctx)
{
	return kprobe_return((int)GPE_UPROBE_RET(ctx), 1);
}

#endif /* GPE_HOOK_KPROBE_H */
