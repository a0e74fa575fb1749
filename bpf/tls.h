/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * tls.h: TLS: uprobes on the workers' libssl feed the plaintext to the same state machine, and the socket
 * hooks skip the ciphertext.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_TLS_H
#define GPE_TLS_H

/*
 * Gunicorn with --certfile serves TLS itself: the socket hooks see only records, whose
 * plaintext exists in user space, in libssl's buffers. internal/probes/tls.go attaches these
 * programs to the libssl each tracked worker has mapped, with the worker's PID, so that the
 * breakpoints are installed in that process only (a uprobe given a PID traps in no other):
 *   uprobe SSL_set_fd            an SSL is tied to its socket (Python's ssl module calls it when
 *                                it wraps a socket, before the handshake): SSL* -> (sk, fd)
 *   uprobe SSL_read, SSL_read_ex, SSL_write, SSL_write_ex
 *                                a thread enters a TLS read or write: remember the SSL and the
 *                                plaintext buffer, per thread
 *   uprobe SSL_get_current_cipher
 *                                asyncio and uvloop ask for it as an SSL's handshake completes
 *                                (memory BIOs: no SSL_set_fd): SSL* -> the socket whose
 *                                ciphertext completed it (tls_handshake_done)
 *   uretprobe of those four      it returns: the plaintext bytes go through on_io, the same
 *                                state machine as a plaintext connection's, with call.tls set
 * One entry program serves the five functions, told apart by the attach cookie (enum
 * tls_func), and one return program the four.
 * The ciphertext the socket hooks see of a socket tied to an SSL, or in a thread that is inside
 * one of these calls, is skipped (tls_skip), so nothing is counted twice. An SSL whose
 * SSL_set_fd was not seen (wrapped before the uprobes were attached) is tied to the socket of
 * the first socket call made inside one of its reads or writes (socket mode: libssl reads and
 * writes with read/write, which the syscall mode does not hook). SSL_read served from plaintext
 * libssl had already buffered makes no socket call: the SSL* -> socket association answers it.
 */

#define TLS_SOCK_BY_READ (1u << 31) /* in a tls_socks value: above any tgid */
#define TLS_BY_HANDSHAKE 4 /* in a tls_ssl value, beside enum tls_conn_flag: tied as its
			    * handshake completed (tls_handshake_done); its reads never tie it again */

static __always_inline void tls_note_read(struct sock *sk, __u32 fd, __u32 flags)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_conn v = {.sk = (__u64)sk, .fd = fd, .flags = flags};
	bpf_map_update_elem(&tls_last_read, &id, &v, BPF_ANY);
}

static __always_inline void tls_mark_sock(__u64 sk, __u32 w)
{
	if (bpf_map_update_elem(&tls_socks, &sk, &w, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(&tls_socks_n, 1);
}

static __always_inline void tls_forget_sock(struct sock *sk)
{
	if (!tls_on || !tls_socks_n)
		return;
	__u64 key = (__u64)sk;
	if (bpf_map_delete_elem(&tls_socks, &key) == 0)
		__sync_fetch_and_add(&tls_socks_n, -1);
}

static __always_inline __u32 call_fd(__s64 fd)
{
	if (fd >= 0)
		return (__u32)fd;
	struct pt_regs *r = current_user_regs();
	return (__u32)GPE_SYSCALL_ARG0(r);
}

/*
 * Is this socket call's data ciphertext of a connection whose plaintext the uprobes see? The
 * socket of a call made inside SSL_read/SSL_write is remembered for that call (fd: the call's
 * fd, or -1 to read it from the syscall's registers). note: the call read data; if its socket's
 * SSL was tied by a read, the read is noted for the next SSL_read (tls_return).
 */
static __always_inline int tls_skip(struct sock *sk, __s64 fd, int note)
{
	if (!tls_on)
		return 0;
	if (tls_in_calls) {
		__u64 id = bpf_get_current_pid_tgid();
		struct tls_call *tc = bpf_map_lookup_elem(&tls_calls, &id);
		if (tc) {
			if (!tc->sk) {
				tc->fd = call_fd(fd);
				tc->sk = (__u64)sk;
			}
			return 1;
		}
	}
	if (tls_socks_n) {
		__u64 key = (__u64)sk;
		__u32 *w = bpf_map_lookup_elem(&tls_socks, &key);
		if (w) {
			if (note && (*w & TLS_SOCK_BY_READ))
				tls_note_read(sk, call_fd(fd), 0);
			return 1;
		}
	}
	return 0;
}

/* Which function a uprobe is on: its attach cookie (tls.go, tlsFuncs). */
enum tls_func {
	TLS_SET_FD = 1,   /* SSL_set_fd(ssl, fd) */
	TLS_READ = 2,     /* SSL_read(ssl, buf, num) */
	TLS_READ_EX = 3,  /* SSL_read_ex(ssl, buf, num, *readbytes) */
	TLS_WRITE = 4,    /* SSL_write(ssl, buf, num) */
	TLS_WRITE_EX = 5, /* SSL_write_ex(ssl, buf, num, *written) */
	TLS_CIPHER = 6,   /* SSL_get_current_cipher(ssl) */
};

/* SSL_set_fd(ssl, fd): the SSL's socket, in the calling worker. */
static __always_inline int tls_set_fd(void *ssl, int fd)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct sock *sk = fd_sock((__u32)fd);
	if (!sk)
		return 0;
	struct tls_key k = {.ssl = (__u64)ssl, .tgid = tgid};
	struct tls_conn v = {.sk = (__u64)sk, .fd = (__u32)fd};
	bpf_map_update_elem(&tls_ssl, &k, &v, BPF_ANY);
	tls_mark_sock((__u64)sk, tgid);
	return 0;
}

/*
 * SSL_get_current_cipher(ssl), in a worker whose SSLs run over memory BIOs (asyncio, uvloop: no
 * SSL_set_fd, no socket call inside SSL_read). Both ask for it (SSLObject.cipher(), with
 * getpeercert() and compression()) as a handshake completes, in the callback of the socket read
 * whose ciphertext completed it, before any other socket is read: the SSL is that socket's,
 * the thread's last ciphertext read (tls_last_read), of a connection tied to no SSL yet. The
 * first SSL_read cannot tie it (tls_return): uvloop decrypts what that read brought (the
 * first request, usually) only later, from its ready queue, after reading other connections'
 * sockets. So the handshake ties the SSL, and its reads never tie it again
 * (TLS_BY_HANDSHAKE); an SSL made again at the same address is tied again by its own
 * handshake. Python calls no SSL_get_current_cipher on a socket it wrapped (SSL_set_fd): an
 * SSL tied so is left alone. Not told apart: an application that asks for the cipher itself
 * (SSLObject.cipher(); neither uvicorn nor Gunicorn's asgi worker does) while another
 * connection's handshake was read last ties its SSL to that connection.
 */
static __always_inline int tls_handshake_done(void *ssl)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_conn *last = bpf_map_lookup_elem(&tls_last_read, &id);
	if (!last || !(last->flags & TLS_UNTIED))
		return 0;
	__u32 tgid = id >> 32;
	struct tls_key k = {.ssl = (__u64)ssl, .tgid = tgid};
	struct tls_conn *s = bpf_map_lookup_elem(&tls_ssl, &k);
	if (s && !(s->flags & (TLS_BY_READ | TLS_BY_HANDSHAKE)))
		return 0;
	struct tls_conn v = *last;
	v.flags = TLS_BY_HANDSHAKE;
	last->flags = 0; /* tied now */
	bpf_map_update_elem(&tls_ssl, &k, &v, BPF_ANY);
	tls_mark_sock(v.sk, tgid | TLS_SOCK_BY_READ);
	return 0;
}

/* A thread enters SSL_read/SSL_write(_ex): remember the SSL and the plaintext buffer. */
static __always_inline int tls_enter(void *ssl, void *buf, void *lenp, __u16 op, __u16 ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call tc = {.ssl = (__u64)ssl, .buf = (__u64)buf, .lenp = (__u64)lenp, .op = op, .ex = ex};
	if (bpf_map_update_elem(&tls_calls, &id, &tc, BPF_NOEXIST) == 0)
		__sync_fetch_and_add(&tls_in_calls, 1);
	else /* a call whose return was not seen (the thread died in it) */
		bpf_map_update_elem(&tls_calls, &id, &tc, BPF_ANY);
	return 0;
}

/* The entry of any of the six functions, told apart by the attach cookie. */
static __always_inline int tls_entry(struct pt_regs *ctx)
{
	void *ssl = (void *)GPE_UPROBE_ARG0(ctx);
	__u64 f = bpf_get_attach_cookie(ctx);
	switch (f) {
	case TLS_SET_FD:
		return tls_set_fd(ssl, (int)GPE_UPROBE_ARG1(ctx));
	case TLS_CIPHER:
		return tls_handshake_done(ssl);
	case TLS_READ:
	case TLS_WRITE:
		return tls_enter(ssl, (void *)GPE_UPROBE_ARG1(ctx), 0, f == TLS_READ ? OP_RECV : OP_SEND, 0);
	case TLS_READ_EX:
	case TLS_WRITE_EX:
		return tls_enter(ssl, (void *)GPE_UPROBE_ARG1(ctx), (void *)GPE_UPROBE_ARG3(ctx),
				 f == TLS_READ_EX ? OP_RECV : OP_SEND, 1);
	}
	return 0;
}

/*
 * The return of any of the four: the plaintext read or written goes through on_io. A call that
 * failed is passed as EAGAIN: a read that finds nothing after a response (an event-loop worker
 * reading again: SSL_ERROR_WANT_READ) ends it, as on a plaintext connection.
 */
static __always_inline int tls_return(struct pt_regs *ctx)
{
	long ret = (long)GPE_UPROBE_RET(ctx);
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *p = bpf_map_lookup_elem(&tls_calls, &id);
	if (!p)
		return 0;
	struct tls_call tc = *p;
	if (bpf_map_delete_elem(&tls_calls, &id) == 0)
		__sync_fetch_and_add(&tls_in_calls, -1);
	__s64 n = -11;
	if (tc.ex) {
		__u64 got = 0;
		if ((int)ret == 1 && tc.lenp && bpf_probe_read_user(&got, sizeof(got), (void *)tc.lenp) == 0)
			n = (__s64)got;
	} else if ((int)ret > 0) {
		n = (int)ret;
	}
	if (n == 0)
		return 0;
	__u32 tgid = id >> 32;
	struct tls_key k = {.ssl = tc.ssl, .tgid = tgid};
	struct tls_conn *s = bpf_map_lookup_elem(&tls_ssl, &k);
	struct tls_conn v = {};
	int tie = 0;
	if (s) {
		v = *s;
	} else if (tc.sk) {
		/* Wrapped before the uprobes were attached: tied by the socket call made inside. */
		v.sk = tc.sk;
		v.fd = tc.fd;
		tie = 1;
	}
	if (!tc.sk && tc.op == OP_RECV && (!s || (v.flags & TLS_BY_READ))) {
		/* No socket call inside (asyncio's memory BIOs): the SSL is of the socket whose
		 * ciphertext this thread read last (tls_note_read). Checked at every read of an SSL
		 * tied so: asyncio calls no SSL_set_fd, so an SSL freed and made again at the same
		 * address for a new connection is told only by its reads, of another socket, or of
		 * the same socket memory made again for a new connection, tied to no SSL. */
		struct tls_conn *last = bpf_map_lookup_elem(&tls_last_read, &id);
		if (last && (last->sk != v.sk || (last->flags & TLS_UNTIED))) {
			v = *last;
			v.flags = TLS_BY_READ;
			last->flags = 0; /* tied now */
			tie = 1;
		}
	}
	if (!v.sk) {
		count_drop(GPE_DROP_TLS_UNTIED);
		return 0;
	}
	if (tie) {
		bpf_map_update_elem(&tls_ssl, &k, &v, BPF_ANY);
		tls_mark_sock(v.sk, (v.flags & TLS_BY_READ) ? tgid | TLS_SOCK_BY_READ : tgid);
	}
	struct sock *sk = (struct sock *)v.sk;
	struct call call = {.buf = tc.buf, .fd = v.fd, .op = tc.op, .tls = 1};
	return on_io(sk, BPF_CORE_READ(sk, __sk_common.skc_hash),
		     BPF_CORE_READ(sk, __sk_common.skc_family), BPF_CORE_READ(sk, sk_protocol), tgid,
		     n, tc.op == OP_SEND, &call);
}

/*
 * The programs, twice: a uprobe_multi link (used from Linux 6.10, tls.go) attaches one
 * program to all the functions of a worker's libssl at once, and closes in one RCU grace
 * period; a perf-event uprobe (older kernels, --tls-uprobes perf) is one link per function,
 * and each takes its own grace period to close. The kernel wants a different attach type for
 * each; the bodies are the same.
 */
SEC("uprobe.multi")
int on_ssl_enter_m(struct pt_regs *ctx)
{
	return tls_entry(ctx);
}

SEC("uretprobe.multi")
int on_ssl_ret_m(struct pt_regs *ctx)
{
	return tls_return(ctx);
}

SEC("uprobe")
int on_ssl_enter(struct pt_regs *ctx)
{
	return tls_entry(ctx);
}

SEC("uretprobe")
int on_ssl_ret(struct pt_regs *ctx)
{
	return tls_return(ctx);
}

#endif /* GPE_TLS_H */
