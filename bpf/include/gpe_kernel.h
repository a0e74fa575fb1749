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

struct task_struct {
	int exit_code;
	pid_t pid;
	pid_t tgid;
	struct task_struct *real_parent;
	u64 start_boottime;
	struct files_struct *files;
};

struct file {
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

struct socket {
	struct sock *sk;
};

struct sock {
	u8 sk_shutdown;
};

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

/*
 * The context of a syscalls/sys_enter_* and sys_exit_* tracepoint: the 8-byte common
 * header, the syscall number, then the arguments (or the return value). This layout is the
 * tracepoint ABI (see /sys/kernel/tracing/events/syscalls/sys_enter_recvfrom/format), not a
 * kernel struct, so it is not relocated.
 */
struct sys_enter_ctx {
	u64 common;
	s32 syscall_nr;
	u32 pad;
	u64 args[6];
};

struct sys_exit_ctx {
	u64 common;
	s32 syscall_nr;
	u32 pad;
	s64 ret;
};

#endif /* GPE_KERNEL_H */
