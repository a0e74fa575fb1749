/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * request.h: The request state machine of a worker's connection (on_io), shared by every hook mode: a read
 * starts or continues a request, a status line answers it, its end sends its one record.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_REQUEST_H
#define GPE_REQUEST_H

/* The request's one record, when it ends: everything the connection knows of it. */
static __always_inline void emit_end(struct conn_key *k, struct conn *c, __u8 reason, __u64 now)
{
	__u32 one = 1;
	struct gpe_req_start *e = bpf_map_lookup_elem(&scratch, &one);
	if (!e) {
		count_lost();
		return;
	}
	__u32 kept = c->head_len;
	fill_req(&e->req, GPE_EV_REQ_END, k, c, now, kept);
	e->req.reason = reason;
	if (c->cpu_ok && c->cpu_mark) {
		e->req.flags |= GPE_FLAG_CPU;
		e->req.cpu_ns = c->cpu_ns;
	}
	/* The accept-queue wait goes with the connection's first request only. */
	e->req.est_ns = c->est_ns;
	c->est_ns = 0;
	__builtin_memcpy(e->line, c->line, GPE_LINE_MAX);
	send_line(e, kept);
}

/* End the request in flight on c, if any, and leave the connection idle. */
static __always_inline void end_request(struct conn_key *k, struct conn *c, __u8 reason, __u64 now)
{
	if (c->state == CONN_READING || c->state == CONN_RESPONDING)
		emit_end(k, c, reason, now);
	if (c->state == CONN_READING)
		flight(k->tgid, -1, now);
	else if (c->state == CONN_H2)
		h2_end(k, c, reason, now); /* its streams end */
	if (c->state != CONN_TLS && c->state != CONN_H2 && c->state != CONN_PEER)
		c->state = CONN_IDLE;
}

/* Copy up to GPE_LINE_MAX bytes of the read into this CPU's record; *len is the count (0 if
 * the user memory could not be read). Returns the record, or 0. */
static __always_inline struct gpe_req_start *read_head(__u64 buf, __s64 n, __u32 *len)
{
	__u32 zero = 0;
	struct gpe_req_start *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return 0;
	__u32 l = n > GPE_LINE_MAX ? GPE_LINE_MAX : (__u32)n;
	barrier_var(l); /* keep the bound below on the register passed to the helper */
	l &= 0x1ff;
	if (l > GPE_LINE_MAX)
		l = GPE_LINE_MAX;
	*len = bpf_probe_read_user(e->line, l, (void *)buf) == 0 ? l : 0;
	return e;
}

/*
 * request_cpu: the calling thread's runtime (se.sum_exec_runtime: the kernel adds to it at each
 * context switch and scheduler tick, so a thread running now is behind by less than a tick).
 * Its pid in *tid.
 */
static __always_inline __u64 thread_runtime(__u32 *tid)
{
	struct task_struct *t = current_task();
#ifdef GPE_COMPAT
	*tid = (__u32)BPF_CORE_READ(t, pid);
	return BPF_CORE_READ(t, se.sum_exec_runtime);
#else
	*tid = (__u32)t->pid; /* a BTF pointer: plain loads, no helper call */
	return t->se.sum_exec_runtime;
#endif
}

/* The calling thread's pid, and its runtime if request_cpu (else 0). */
static __always_inline __u64 this_thread(__u32 *tid)
{
	if (request_cpu)
		return thread_runtime(tid);
	*tid = (__u32)bpf_get_current_pid_tgid();
	return 0;
}

/* request_cpu, downstream: c's request begins in the calling thread. */
static __always_inline void thread_begin(struct conn *c)
{
	__u32 tid = 0;
	c->cpu0 = this_thread(&tid);
	c->cpu_tid = tid;
	c->cpu_ns = 0;
	c->cpu_ok = 0;
	c->cpu_mark = 0;
	struct thread_req *r = bpf_map_lookup_elem(&thread_reqs, &tid);
	if (!r) {
		struct thread_req z = {};
		bpf_map_update_elem(&thread_reqs, &tid, &z, BPF_NOEXIST);
		r = bpf_map_lookup_elem(&thread_reqs, &tid);
		if (!r)
			return;
	}
	__u32 n = r->begins + 1;
	r->begins = n;
	r->shared = r->open ? 1 : 0; /* another request of the thread is not answered yet */
	if (!r->open)
		c->cpu_mark = n;
	r->open = c->seq;
}

/* downstream: send the calls of request seq, served alone by thread tid of process tgid. */
static __always_inline void emit_downstream(__u32 tid, __u32 tgid, __u32 seq, __u64 now)
{
	struct gpe_ds_event *d = bpf_map_lookup_elem(&thread_ds, &tid);
	if (!d || d->seq != seq || !d->n)
		return;
	d->hdr.kind = GPE_EV_DOWNSTREAM;
	d->hdr.tgid = tgid;
	d->hdr.ts_ns = now;
	if (bpf_ringbuf_output(&events, d, sizeof(*d), submit_flags()) != 0)
		count_lost();
	d->seq = 0;
}

/* request_cpu, downstream: the status line of c's request (of process tgid). The thread that
 * began it measures its runtime so far, says whether it began another meanwhile, and sends its
 * downstream calls if it did not. */
static __always_inline void thread_answer(struct conn *c, __u32 tgid, __u64 now)
{
	__u32 tid = 0;
	__u64 rt = this_thread(&tid);
	if (tid != c->cpu_tid)
		return;
	struct thread_req *r = bpf_map_lookup_elem(&thread_reqs, &tid);
	if (r) {
		if (r->begins != c->cpu_mark)
			c->cpu_mark = 0; /* the thread began another meanwhile */
		if (r->open == c->seq)
			r->open = 0;
		if (r->ds_seq == c->seq) {
			r->ds_seq = 0;
			if (c->cpu_mark)
				emit_downstream(tid, tgid, c->seq, now);
		}
	}
	if (!request_cpu || !c->cpu_mark)
		return;
	c->cpu_ns = rt - c->cpu0;
	c->cpu_ok = 1;
}

/* request_cpu: a response body write of c's request, in the thread that began it. */
static __always_inline void cpu_write(struct conn *c)
{
	__u32 tid = 0;
	__u64 rt = thread_runtime(&tid);
	if (tid != c->cpu_tid || !c->cpu_mark)
		return;
	c->cpu_ns = rt - c->cpu0;
	c->cpu_ok = 1;
}

/*
 * A new request id, unique on the host: the next of next_seq, an atomic fetch-and-add (5.12).
 * The compat object counts per CPU instead, the CPU in the low byte (unique on up to 256 CPUs,
 * for 16M requests a CPU before the count wraps, as next_seq's does after 4G).
 */
static __always_inline __u32 new_seq(void)
{
#ifdef GPE_COMPAT
	__u32 zero = 0;
	__u32 *n = bpf_map_lookup_elem(&seq_cpu, &zero);
	if (!n)
		return 0;
	*n += 1;
	return (*n << 8) | (bpf_get_smp_processor_id() & 0xff);
#else
	return __sync_fetch_and_add(&next_seq, 1) + 1;
#endif
}

/* Make c's next request the current one: READING, with nothing written yet, its line the
 * first kept bytes of line (0: none, labelled OTHER / unknown). One more in flight for k. */
static __always_inline void begin_request(struct conn_key *k, struct conn *c, __u64 start_ns,
					  __u64 bytes_in, __u8 phase, char *line, __u16 kept,
					  __u64 now, struct proc_info *pi)
{
	c->seq = new_seq();
	c->start_ns = start_ns;
	c->last_write_ns = 0;
	c->bytes_in = bytes_in;
	c->bytes_out = 0;
	c->status = 0;
	c->flags = 0;
	c->phase = phase;
	c->line_len = kept;
	c->head_len = 0;
	if (line && kept) {
		/* Only the kept bytes, padded: what follows the path (the query string, every
		 * header) is not even kept in the tables. */
		pad_line(line, kept);
		__u32 size = (kept + 7) & 0x1f8;
		if (size > GPE_LINE_MAX)
			size = GPE_LINE_MAX;
		if (bpf_probe_read_kernel(c->line, size, line) == 0)
			c->head_len = kept;
	}
	c->state = CONN_READING;
	if (request_cpu || downstream)
		thread_begin(c);
	flight_of(pi ? pi : tracked(k->tgid), 1, now);
}

/* Start a new request on c with the bytes just read; its line is kept in c for its END. */
static __always_inline void start_request(struct conn_key *k, struct conn *c, __u64 buf, __s64 n,
					  __u64 now, int must_look_like_request, struct proc_info *pi)
{
	__u32 len = 0;
	struct gpe_req_start *e = read_head(buf, n, &len);
	if (!e)
		return;
	char *line = e->line;
	if (c->state == CONN_IDLE && c->seq == 0 && len > 0) {
		if ((__u8)line[0] == 0x16) {
			/* A TLS handshake record: the connection is encrypted, nothing can be parsed. */
			c->state = CONN_TLS;
			tls_seen(k->tgid, pi);
			return;
		}
		if (h2_preface(line)) {
			/* HTTP/2: its preface is no request line, and no HTTP/1 status line will
			 * answer it. Left alone, not booked as a request without a response. The
			 * preface's 24 bytes are compared whatever len is (past it, stale bytes of
			 * this CPU's record, which match only if a preface was there): a test of len
			 * here would double the verifier's states through the cut below. */
			c->state = CONN_H2;
			h2_begin(k, c, buf, n); /* its frames, from the preface on (h2.h) */
			return;
		}
	}
	__u32 phase = LINE_METHOD;
	__u32 kept = cut_line(e, len, &phase, 0);
	if (must_look_like_request && phase == LINE_INVALID) {
		/* Continuation bytes of the current request (e.g. a body drained late). */
		c->bytes_in += n;
		return;
	}
	if (c->state == CONN_RESPONDING)
		end_request(k, c, GPE_END_NEXT, now);
	begin_request(k, c, now, n, phase, line, kept, now, pi);
}

/* More bytes of a request whose line was not complete: emit the next piece of the line. */
static __always_inline void continue_line(struct conn_key *k, struct conn *c, __u64 buf, __s64 n,
					  __u64 now)
{
	c->bytes_in += n;
	__u32 len = 0;
	struct gpe_req_start *e = read_head(buf, n, &len);
	if (!e)
		return;
	__u32 phase = c->phase;
	__u32 kept = cut_line(e, len, &phase, c->line_len);
	c->phase = phase;
	__u32 room = GPE_LINE_MAX - (c->line_len & (GPE_LINE_MAX - 1));
	if (kept > room)
		kept = room;
	if (kept == 0 || c->line_len >= GPE_LINE_MAX)
		return;
	c->line_len += kept;
	fill_req(&e->req, GPE_EV_REQ_LINE, k, c, now, kept);
	pad_line(e->line, kept);
	if (send_line(e, kept) != 0)
		c->phase = LINE_INVALID; /* a piece is missing: keep no more of the line */
}

/* The status code of a status line at the start of the n bytes written at buf, or 0. */
static __always_inline __u16 status_code(__u64 buf, __s64 n)
{
	char s[16];
	if (n < 12)
		return 0;
	__builtin_memset(s, 0, sizeof(s)); /* a 12-byte read leaves no byte unknown */
	__u32 len = n >= 16 ? 16 : 12;
	if (bpf_probe_read_user(s, len, (void *)buf) != 0)
		return 0;
	return parse_status(s, len);
}

/*
 * Had the client left before its answer, which the worker just wrote (sent bytes)? Its side
 * is shut (a FIN or a reset arrived), and, for TCP, that FIN acknowledged none of the answer.
 * The hook runs after the write: on loopback the client may already have read the answer and
 * closed, and its FIN then acknowledges the answer's bytes (snd_una past their first byte).
 */
static __always_inline __u8 client_gone(struct sock *sk, __s64 sent, __u8 unix_sock)
{
	__u8 shut = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown);
	if (!(shut & 1 /* RCV_SHUTDOWN */))
		return 0;
	if (unix_sock)
		return 1;
	struct tcp_sock *tp = (struct tcp_sock *)sk;
	__u32 first = BPF_CORE_READ(tp, write_seq) - (__u32)sent;
	__u32 una = BPF_CORE_READ(tp, snd_una);
	return (__s32)(una - first) > 0 ? 0 : 1;
}

/* A status line written on a connection in probation: what was read was a request after all
 * (one Gunicorn could not parse). It starts now, without a line (OTHER / unknown). */
static __always_inline void announce(struct conn_key *k, struct conn *c, __u64 now)
{
	begin_request(k, c, c->start_ns, c->bytes_in, LINE_INVALID, 0, 0, now, 0);
}

static __always_inline void take(struct conn_key *k, struct conn *c, __u64 buf, __s64 n, __u64 now,
				 struct proc_info *pi);

/* tls.h, after this file: a thread read ciphertext on a TLS connection not tied yet. */
static __always_inline void tls_note_read(struct sock *sk, __u32 fd, __u32 flags);

/* A new connection of a worker: its first read. A request line (or a TLS handshake) starts a
 * request; anything else puts the connection in probation. */
static __always_inline void adopt(struct conn_key *k, struct sock *sk, __u32 hash, int tcp,
				  __u64 buf, __s64 n, __u64 now, struct proc_info *pi)
{
	struct conn *fresh = init_fresh(k, CONN_IDLE);
	if (!fresh)
		return;
	struct conn *c;
	if (!tcp) {
		c = new_unix(sk, fresh);
	} else {
		__u64 key = (__u64)sk;
		__u64 *est = queue_wait ? bpf_map_lookup_elem(&established, &key) : 0;
		if (est) {
			fresh->est_ns = *est;
			bpf_map_delete_elem(&established, &key);
		}
		c = new_tcp(sk, hash, fresh);
	}
	if (!c) {
		/* The table is full: nothing is evicted for this connection, whose requests are
		 * counted as dropped instead, one for each read that starts with a request line. */
		__u32 len = 0;
		struct gpe_req_start *e = read_head(buf, n, &len);
		if (e && method_len(e->line, len))
			count_drop(GPE_DROP_TABLE_FULL);
		return;
	}
	take(k, c, buf, n, now, pi);
}

/* The first read of connection c by worker k: a request line (or a TLS handshake) starts a
 * request; anything else puts the connection in probation. */
static __always_inline void take(struct conn_key *k, struct conn *c, __u64 buf, __s64 n, __u64 now,
				 struct proc_info *pi)
{
	start_request(k, c, buf, n, now, 1, pi);
	if (c->state == CONN_IDLE) {
		/* Not a request line: garbage sent to the port, or one of the worker's own client
		 * connections (databases, HTTP APIs). Which one, only the worker's answer tells. */
		c->state = CONN_PROBATION;
		c->start_ns = now;
		c->bytes_in = n;
	}
}

/*
 * The request state machine, after a socket call of process tgid (past the filter) moved n
 * bytes on sk (or failed, n < 0). Both hook modes come here: sk is only a key and is read
 * through BPF_CORE_READ, since in syscall mode it is a plain number, not a BTF pointer; its
 * hash, family and protocol are read by the caller. call is the socket call, or zeros to be
 * filled in here once the process is known to be a worker.
 */
static __always_inline int on_io(struct sock *sk, __u32 hash, __u16 family, __u16 proto,
				 __u32 tgid, __s64 n, int send, struct call *call)
{
	/* UDP and the rest carry no HTTP/1, and no end would be seen. */
	__u64 key = (__u64)sk;
	int tcp = 0;
	struct slot *in = 0;
	struct conn *c = 0;
	if (family == GPE_AF_UNIX) {
		c = bpf_map_lookup_elem(&conns, &key);
	} else if ((family == GPE_AF_INET || family == GPE_AF_INET6) && proto == GPE_IPPROTO_TCP) {
		tcp = 1;
		c = find_tcp(sk, hash, &in);
	} else {
		return 0;
	}
	/* A connection this process was seen to own is a worker's; anything else asks. */
	struct proc_info *pi = 0;
	if ((!c || c->owner.tgid != tgid) && !(pi = worker_info(tgid)))
		return 0;
	if (!call->op && !socket_call(send, call))
		return 0;
	__u32 op = call->op;
	__u64 buf = call->buf;
	__u64 now = bpf_ktime_get_ns();
	struct conn_key k = {.tgid = tgid, .fd = call->fd};
	if (c && c->owner.tgid && (c->owner.tgid != k.tgid || c->owner.fd != k.fd ||
		  (c->unix_sock && op == OP_RECV && c->state != CONN_READING && unix_ino(sk) != c->ino) ||
		  (call->tls && c->state == CONN_TLS))) {
		/* The socket moved to another fd or process, or (Unix: no hook sees the close) the
		 * entry is of a socket that was freed unseen, whose memory now holds another, or
		 * (TLS) the plaintext of a connection whose ciphertext was seen first arrives: it
		 * is adopted afresh from its plaintext. */
		struct conn_key old = c->owner;
		end_request(&old, c, GPE_END_REUSED, now);
		if (c->unix_sock)
			bpf_map_delete_elem(&conns, &key);
		else
			drop_tcp(sk, in);
		c = 0;
	}
	if (n < 0) {
		/* An event-loop worker (gevent, eventlet, tornado, asyncio) reads again as soon
		 * as a response is written, and finds nothing yet: the response is complete. */
		if (c && c->state == CONN_RESPONDING && op == OP_RECV && n == -11 /* EAGAIN */)
			end_request(&k, c, GPE_END_WAIT, now);
		return 0;
	}

	if (op == OP_RECV) {
		if (!c) {
			adopt(&k, sk, hash, tcp, buf, n, now, pi);
		} else if (!c->owner.tgid) {
			/* Its slot was taken when it was established (on_tcp_state): it is this
			 * worker's from its first read. */
			c->owner = k;
			take(&k, c, buf, n, now, pi);
		} else if (c->state == CONN_PEER) {
			if (downstream)
				peer_recv(&c->pc, now);
		} else if (c->state == CONN_READING) {
			if (c->phase < LINE_DONE && c->line_len < GPE_LINE_MAX)
				continue_line(&k, c, buf, n, now);
			else
				c->bytes_in += n;
		} else if (c->state == CONN_IDLE) {
			start_request(&k, c, buf, n, now, 0, pi);
		} else if (c->state == CONN_RESPONDING || c->state == CONN_PROBATION) {
			start_request(&k, c, buf, n, now, 1, pi);
		} else if (c->state == CONN_H2) {
			h2_io(&k, c, buf, n, 0);
		} else if (c->state == CONN_TLS && tls_on) {
			tls_note_read(sk, k.fd, TLS_UNTIED); /* ciphertext of an SSL not tied yet (asyncio) */
		}
		return 0;
	}

	/* Writes matter only on connections we know, and on the worker's own client ones. */
	if (!c) {
		if (downstream)
			peer_new(&k, sk, hash, tcp, family, now);
		return 0;
	}
	if (c->state == CONN_PEER) {
		if (downstream)
			peer_send(&c->pc, now);
		return 0;
	}
	if (c->state == CONN_H2 && op != OP_SENDFILE)
		h2_io(&k, c, buf, n, 1); /* h2.h */
	if (c->state == CONN_TLS || c->state == CONN_IDLE || c->state == CONN_H2)
		return 0;
	if (op == OP_SEND) {
		__u16 st = status_code(buf, n);
		if (c->state == CONN_PROBATION) {
			if (st < 100) {
				/* the worker's own client traffic */
				if (downstream)
					peer_adopt(sk, family, c, now);
				return 0;
			}
			announce(&k, c, now);
		}
		if (st >= 200) {
			if (c->state == CONN_RESPONDING) {
				/* A second final status line: the client pipelined requests and the worker
				 * answers the next one, whose request line we did not see. */
				__u64 prev = c->last_write_ns;
				end_request(&k, c, GPE_END_PIPELINE, now);
				begin_request(&k, c, prev, 0, LINE_INVALID, 0, 0, now, 0);
			}
			c->status = st;
			c->state = CONN_RESPONDING;
			if (request_cpu || downstream)
				thread_answer(c, k.tgid, now);
			flight(k.tgid, -1, now); /* answered: in flight no more */
			/* A client that left before its answer: the worker writes into the void. */
			c->flags = client_gone(sk, n, c->unix_sock) ? GPE_FLAG_CLIENT_GONE : 0;
			c->bytes_out += n;
			c->last_write_ns = now;
			return 0;
		}
	}
	/* Body bytes (or a 1xx interim response, which does not end the request). */
	if (c->state == CONN_PROBATION)
		return 0;
	c->bytes_out += n;
	if (c->state == CONN_RESPONDING) {
		c->last_write_ns = now;
		if (request_cpu)
			cpu_write(c);
	}
	return 0;
}

#ifdef GPE_COMPAT
/*
 * The compat object's walk at a worker's exit (on_exit; no bpf_for_each_map_elem before 5.13):
 * the exiting worker's own fds, still open at the exit tracepoint, each looked up in conns
 * (where the compat object keeps every connection, by its socket). Global functions, each
 * verified once on its own (5.6+, scalar arguments): the per-fd work is not multiplied by the
 * loop. The first GPE_EXIT_FDS fds only: a worker's client sockets are among its first.
 */
#define GPE_EXIT_FDS 1024

__noinline int end_fd(__u32 tgid, __u32 fd, __u64 now)
{
	struct sock *sk = fd_sock(fd);
	if (!sk)
		return 0;
	__u64 key = (__u64)sk;
	struct conn *c = bpf_map_lookup_elem(&conns, &key);
	if (!c || c->owner.tgid != tgid)
		return 0;
	struct conn_key k = c->owner;
	end_request(&k, c, GPE_END_EXIT, now);
	return 1;
}

__noinline int end_fds(__u32 tgid, __u64 now)
{
	struct fdtable *fdt = BPF_CORE_READ(current_task(), files, fdt);
	if (!fdt)
		return 0;
	__u32 max = BPF_CORE_READ(fdt, max_fds);
	for (__u32 fd = 0; fd < GPE_EXIT_FDS && fd < max; fd++)
		end_fd(tgid, fd, now);
	return 0;
}
#endif

#endif /* GPE_REQUEST_H */
