/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * regs.h: What the calling task is doing, from its registers and its fd table: which socket call it is in
 * (fd, op, where the bytes are), and the socket behind an fd. Used by both socket hook modes and the
 * TLS uprobes; the hook files read only their own hook's arguments.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_REGS_H
#define GPE_REGS_H

/*
 * The calling task, and the user registers it entered the kernel with. The modern object takes
 * them from bpf_get_current_task_btf and bpf_task_pt_regs (5.11, 5.15): BTF pointers, plain
 * loads. The compat object (GPE_COMPAT, loaded where those helpers are missing) has the task
 * from bpf_get_current_task, read with CO-RE, and finds the registers where both arches keep
 * them, at the top of the task's kernel stack (task_pt_regs: THREAD_SIZE, 16 KiB on Debian's
 * amd64 and arm64 kernels, which have no KASAN and 4 KiB pages).
 */
#ifdef GPE_COMPAT
#define GPE_THREAD_SIZE 16384
static __always_inline struct task_struct *current_task(void)
{
	return (struct task_struct *)bpf_get_current_task();
}

static __always_inline struct pt_regs *current_user_regs(void)
{
	void *stack = BPF_CORE_READ(current_task(), stack);
	return (struct pt_regs *)(stack + GPE_THREAD_SIZE - bpf_core_type_size(struct GPE_PT_REGS));
}
#else
static __always_inline struct task_struct *current_task(void)
{
	return bpf_get_current_task_btf();
}

static __always_inline struct pt_regs *current_user_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}
#endif

/* The first iovec's base of a user iovec array: where a status line or request line would be. */
static __always_inline __u64 iov_base(__u64 iov)
{
	struct iovec v;
	if (bpf_probe_read_user(&v, sizeof(v), (void *)iov) != 0)
		return 0;
	return (__u64)v.iov_base;
}

/* The same for a user msghdr. */
static __always_inline __u64 msghdr_base(__u64 msg)
{
	struct user_msghdr m;
	if (bpf_probe_read_user(&m, sizeof(m), (void *)msg) != 0 || !m.msg_iov || !m.msg_iovlen)
		return 0;
	return iov_base((__u64)m.msg_iov);
}

/* A socket call of a worker: its fd, where its bytes are (0 for sendfile), and its enum op
 * (0 until socket_call has filled it in). */
struct call {
	__u64 buf;
	__u32 fd;
	__u32 op;
	__u32 tls; /* the bytes are the plaintext of a TLS connection, from libssl (uprobes) */
	__u32 pad;
};

/*
 * Which socket call the current task is in, from the registers it entered the kernel with:
 * the fd (first argument) and where the bytes are. Returns 0 for a call whose bytes are not
 * looked at (recvmmsg, splice, io_uring, a kernel thread) or that is not of this direction.
 */
static __always_inline int socket_call(int send, struct call *call)
{
	struct pt_regs *r = current_user_regs();
	__u64 nr = GPE_SYSCALL_NR(r);
	__u64 a1 = GPE_SYSCALL_ARG1(r);
	__u32 op = send ? OP_SEND : OP_RECV;
	if (send) {
		switch (nr) {
		case GPE_NR_sendto:
		case GPE_NR_write:
			call->buf = a1;
			break;
		case GPE_NR_sendmsg:
			call->buf = msghdr_base(a1);
			break;
		case GPE_NR_writev:
			call->buf = iov_base(a1);
			break;
		case GPE_NR_sendfile:
			call->buf = 0;
			op = OP_SENDFILE;
			break;
		default:
			return 0;
		}
	} else {
		switch (nr) {
		case GPE_NR_recvfrom:
		case GPE_NR_read:
			call->buf = a1;
			break;
		case GPE_NR_recvmsg:
			call->buf = msghdr_base(a1);
			break;
		case GPE_NR_readv:
			call->buf = iov_base(a1);
			break;
		default:
			return 0;
		}
	}
	call->fd = (__u32)GPE_SYSCALL_ARG0(r);
	call->op = op;
	return 1;
}

/* The socket behind the current task's fd, or 0 if that fd is not a socket. */
static __always_inline struct sock *fd_sock(__u32 fd)
{
	struct task_struct *t = current_task();
	struct fdtable *fdt = BPF_CORE_READ(t, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **fds = BPF_CORE_READ(fdt, fd);
	struct file *f = 0;
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd & 0xfffff]) != 0 || !f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & GPE_S_IFMT) != GPE_S_IFSOCK)
		return 0;
	struct socket *sock = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(sock, sk);
}

#endif /* GPE_REGS_H */
