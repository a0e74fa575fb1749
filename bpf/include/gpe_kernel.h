/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The few kernel types gpe.bpf.c reads, written by hand instead of a full vmlinux.h.
 * Every struct is marked preserve_access_index, so field offsets are relocated by CO-RE
 * against the running kernel's BTF on amd64 and arm64 alike. See README.md beside this file.
 */
#ifndef GPE_KERNEL_H
#define GPE_KERNEL_H

#include <linux/types.h>
#include <linux/bpf.h>

typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef int pid_t;

/* Kernel layouts have natural padding; -Wpadded is for our own records only. */
#pragma clang diagnostic push
#pragma clang diagnostic ignored "-Wpadded"
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

struct sched_entity {
	u64 sum_exec_runtime; /* the thread's time on a CPU, as of the last context switch or tick */
};

struct task_struct {
	struct sched_entity se;
	int exit_code;
	pid_t pid;
	pid_t tgid;
	u64 start_boottime;
	struct files_struct *files; /* syscall mode: an fd's socket */
	void *stack;                /* GPE_COMPAT: the user registers are at its top */
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
};

struct file {
	struct inode *f_inode;
	void *private_data; /* a socket file's struct socket */
};

struct socket {
	struct file *file;
	struct sock *sk;
};

struct in6_addr {
	u8 s6_addr[16];
};

struct sock_common {
	unsigned int skc_hash; /* in an anonymous union in the kernel: CO-RE finds it there */
	unsigned short skc_num; /* the local port, host order (in an anonymous union too) */
	unsigned short skc_family;
	u32 skc_daddr;  /* the remote IPv4 address (in anonymous unions too) */
	u16 skc_dport;  /* the remote port, network order */
	struct in6_addr skc_v6_daddr;
};

struct sock {
	struct sock_common __sk_common;
	u8 sk_shutdown;
	u16 sk_protocol;
	struct socket *sk_socket;
};

struct unix_sock {
	struct sock *peer; /* the other end of a connected socket */
};

struct tcp_sock {
	u32 snd_una;   /* first byte we sent that the peer has not acknowledged */
	u32 write_seq; /* one past the last byte queued for sending */
};

/*
 * GPE_UREG(x): a field x of the user registers the task entered the kernel with. In the modern
 * object they come from bpf_task_pt_regs, a BTF pointer: a plain load. In the compat object
 * (GPE_COMPAT, kernels without that helper, bpf/regs.h) the pointer is computed from the task's
 * stack, an untrusted kernel address: a bpf_probe_read_kernel, relocated by CO-RE too.
 */
#ifdef GPE_COMPAT
#define GPE_UREG(x)                                                                                \
	({                                                                                         \
		typeof(x) __v = 0;                                                                 \
		bpf_core_read(&__v, sizeof(__v), &(x));                                            \
		__v;                                                                               \
	})
#else
#define GPE_UREG(x) (x)
#endif

/* The user registers saved at syscall entry (bpf_task_pt_regs): the syscall number and its
 * first arguments (the fourth only for recvfrom's flags, in syscall mode). */
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long r10;
	unsigned long ax; /* a uretprobe's return value */
	unsigned long cx; /* a uprobe's fourth argument (the user ABI; a syscall's is r10) */
	unsigned long dx;
	unsigned long si;
	unsigned long di;
	unsigned long orig_ax;
};
/* r is bpf_task_pt_regs': a BTF pointer, whose fields are plain loads (relocated), no helper call. */
#define GPE_SYSCALL_NR(r) GPE_UREG((r)->orig_ax)
#define GPE_SYSCALL_ARG0(r) GPE_UREG((r)->di)
#define GPE_SYSCALL_ARG1(r) GPE_UREG((r)->si)
#define GPE_SYSCALL_ARG2(r) GPE_UREG((r)->dx)
#define GPE_SYSCALL_ARG3(r) GPE_UREG((r)->r10)
#define GPE_PT_REGS pt_regs /* the kernel's type, for its size (bpf_core_type_size) */
/* A uprobe's arguments (the user ABI) and a uretprobe's return value: ctx fields, relocated. */
#define GPE_UPROBE_ARG0(r) ((r)->di)
#define GPE_UPROBE_ARG1(r) ((r)->si)
#define GPE_UPROBE_ARG3(r) ((r)->cx)
#define GPE_UPROBE_RET(r) ((r)->ax)
#elif defined(__TARGET_ARCH_arm64)
struct user_pt_regs {
	u64 regs[31];
};
struct pt_regs___gpe {
	u64 orig_x0; /* x0 is overwritten by the return value; orig_x0 keeps the argument */
	s32 syscallno;
};
#define GPE_SYSCALL_NR(r) GPE_UREG(((struct pt_regs___gpe *)(r))->syscallno)
#define GPE_SYSCALL_ARG0(r) GPE_UREG(((struct pt_regs___gpe *)(r))->orig_x0)
#define GPE_SYSCALL_ARG1(r) GPE_UREG(((struct user_pt_regs *)(r))->regs[1])
#define GPE_SYSCALL_ARG2(r) GPE_UREG(((struct user_pt_regs *)(r))->regs[2])
#define GPE_SYSCALL_ARG3(r) GPE_UREG(((struct user_pt_regs *)(r))->regs[3])
#define GPE_PT_REGS pt_regs___gpe
#define GPE_UPROBE_ARG0(r) (((struct user_pt_regs *)(r))->regs[0])
#define GPE_UPROBE_ARG1(r) (((struct user_pt_regs *)(r))->regs[1])
#define GPE_UPROBE_ARG3(r) (((struct user_pt_regs *)(r))->regs[3])
#define GPE_UPROBE_RET(r) (((struct user_pt_regs *)(r))->regs[0])
#else
#error "gpe-ebpf is built for amd64 and arm64 only"
#endif

struct iovec {
	void *iov_base;
	unsigned long iov_len;
};

struct user_msghdr {
	void *msg_name;
	int msg_namelen;
	struct iovec *msg_iov;
	unsigned long msg_iovlen;
};

struct kernel_siginfo;
struct linux_binprm;

#pragma clang attribute pop
#pragma clang diagnostic pop

/* Syscall numbers of the socket calls whose buffers are read (asm/unistd.h of each arch). */
#if defined(__TARGET_ARCH_x86)
#define GPE_NR_read 0
#define GPE_NR_write 1
#define GPE_NR_readv 19
#define GPE_NR_writev 20
#define GPE_NR_sendfile 40
#define GPE_NR_sendto 44
#define GPE_NR_recvfrom 45
#define GPE_NR_sendmsg 46
#define GPE_NR_recvmsg 47
#else /* arm64: the generic table */
#define GPE_NR_read 63
#define GPE_NR_write 64
#define GPE_NR_readv 65
#define GPE_NR_writev 66
#define GPE_NR_sendfile 71
#define GPE_NR_sendto 206
#define GPE_NR_recvfrom 207
#define GPE_NR_sendmsg 211
#define GPE_NR_recvmsg 212
#endif

/* Address families, and the recv flag that only peeks. */
#define GPE_AF_UNIX 1
#define GPE_AF_INET 2
#define GPE_AF_INET6 10
#define GPE_IPPROTO_TCP 6
#define GPE_TCP_ESTABLISHED 1 /* enum tcp_state */
#define GPE_TCP_SYN_RECV 3
#define GPE_TCP_CLOSE 7
#define GPE_MSG_PEEK 2
#define GPE_S_IFMT 0170000
#define GPE_S_IFSOCK 0140000

/*
 * The context of a syscalls/sys_exit_* tracepoint (syscall mode): the 8-byte common header,
 * the syscall number, the return value. This layout is the tracepoint ABI
 * (/sys/kernel/tracing/events/syscalls/sys_exit_recvfrom/format), not a kernel struct, so it
 * is not relocated.
 */
struct sys_exit_ctx {
	u64 common;
	s32 syscall_nr;
	u32 pad;
	s64 ret;
};

#endif /* GPE_KERNEL_H */
