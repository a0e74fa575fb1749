/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * h2.h: HTTP/2 connections (CONN_H2: their first read was the client preface, h2c or h2 after TLS
 * with ALPN). Per connection and direction, a frame cursor walks the frame headers of each read
 * and write; only what user space needs to decode the streams is forwarded (GPE_EV_H2 records):
 * the header block fragments of HEADERS and CONTINUATION frames (HPACK is decoded in user space,
 * internal/h2), and the headers of DATA frames (their length and END_STREAM) and RST_STREAM
 * frames. Everything else (SETTINGS, PING, WINDOW_UPDATE, the payload of DATA) is skipped.
 *
 * In flight per stream, here as for HTTP/1 (proc_info.inflight): a client HEADERS frame that opens
 * a stream (its id above every one the client used before) adds one, the worker's first HEADERS
 * frame on that stream (its response headers), a RST_STREAM of it either way, or the connection's
 * end takes it off. Up to H2_OPEN streams a connection are followed at once; a stream opened while
 * H2_OPEN are waiting for their response is not counted in flight (its record still goes up).
 *
 * Not in the compat object (GPE_COMPAT, kernels before 5.17): the walk is a bpf_loop. There, an
 * HTTP/2 connection is left alone as before: no counts, no false failure.
 *
 * Included by gpe.bpf.c only, before request.h, which calls it only for CONN_H2 connections.
 */
#ifndef GPE_H2_H
#define GPE_H2_H

#define H2_OPEN 8           /* streams a connection follows in flight at once */
#define H2_FRAMES 1024      /* frame headers walked in one read or write */
#define H2_PREFACE 24       /* "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" */
#define H2_HDR 9            /* a frame header: length (24 bits), type, flags, stream id */
#define H2_NONE 0xff        /* h2_dir.type while the preface is skipped */

enum h2_frame_type {
	H2_DATA = 0,
	H2_HEADERS = 1,
	H2_RST_STREAM = 3,
	H2_CONTINUATION = 9,
};

/* One direction's cursor: where the frame being read or written is. */
struct h2_dir {
	__u32 left;      /* payload bytes of the current frame still to come */
	__u32 frame_len; /* its payload length */
	__u32 stream;    /* its stream id */
	__u8 type;       /* its type (H2_NONE: the preface) */
	__u8 flags;      /* its flags */
	__u8 have;       /* bytes of a frame header cut by the end of the last call, in hdr */
	__u8 fwd;        /* its payload is a header block fragment: forwarded */
	__u8 hdr[24];    /* room for have (at most 8) + the 9 of a header */
};

/* A CONN_H2 connection's state, in its entry's line (unused by HTTP/2). */
struct h2_conn {
	struct h2_dir d[2];   /* 0: read (the client's frames), 1: written (the worker's) */
	__u32 open[H2_OPEN];  /* streams read whose response HEADERS were not written (0: free) */
	__u32 last_sid;       /* the highest stream id the client opened */
	__u32 broken;         /* the walk lost its place (more frames in a call than H2_FRAMES) */
};

_Static_assert(sizeof(struct h2_conn) <= GPE_LINE_MAX, "h2_conn must fit in conn.line");

/* Where a GPE_EV_H2 record is built (per CPU). In the compat object too, unused: user space
 * assigns both objects' maps to one struct (probes.go), so every map is in both. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct gpe_h2_event);
} h2_scratch SEC(".maps");

#ifndef GPE_COMPAT


/* request.h, after this file: a new request id (here, a connection's). */
static __always_inline __u32 new_seq(void);

/* A record of type about c, of the frame d is in (0: none), without its fragment; the record,
 * or 0. */
static __always_inline struct gpe_h2_event *h2_record(struct conn_key *k, struct conn *c, __u8 dir,
						      __u64 now, __u8 type, struct h2_dir *d)
{
	__u32 zero = 0;
	struct gpe_h2_event *e = bpf_map_lookup_elem(&h2_scratch, &zero);
	if (!e)
		return 0;
	e->hdr.kind = GPE_EV_H2;
	e->hdr.tgid = k->tgid;
	e->hdr.ts_ns = now;
	e->fd = k->fd;
	e->conn = c->seq;
	e->dir = dir;
	e->trunc = 0;
	e->reason = 0;
	e->pad = 0;
	e->piece_len = 0;
	e->frag_len = 0;
	e->off = 0;
	e->type = type;
	e->flags = d ? d->flags : 0;
	e->stream = d ? d->stream : 0;
	e->frame_len = d ? d->frame_len : 0;
	return e;
}

/* Send a record built by h2_record with its first len bytes of fragment. */
static __always_inline void h2_send(struct gpe_h2_event *e, __u32 len)
{
	barrier_var(len);
	len &= 0x3ff;
	if (len > GPE_H2_FRAG_MAX)
		len = GPE_H2_FRAG_MAX;
	__u64 size = sizeof(*e) - GPE_H2_FRAG_MAX + ((len + 7) & 0x7f8);
	if (size > sizeof(*e))
		size = sizeof(*e);
	if (bpf_ringbuf_output(&events, e, size, submit_flags()) != 0)
		count_lost();
}

/* Stream sid no longer waits for its response: one fewer in flight, if it was followed. */
static __always_inline void h2_answered(struct h2_conn *h, __u32 tgid, __u32 sid, __u64 now)
{
	for (int i = 0; i < H2_OPEN; i++) {
		if (h->open[i] == sid) {
			h->open[i] = 0;
			flight(tgid, -1, now);
			return;
		}
	}
}

/* The client opened stream sid: one more in flight, if a place is free. */
static __always_inline void h2_opened(struct h2_conn *h, __u32 tgid, __u32 sid, __u64 now)
{
	for (int i = 0; i < H2_OPEN; i++) {
		if (h->open[i] == 0) {
			h->open[i] = sid;
			flight(tgid, 1, now);
			return;
		}
	}
}

struct h2_walk {
	struct conn_key k;
	struct conn *c;
	__u64 buf;
	__u64 now;
	__u32 n;
	__u32 pos;
	__u32 dir;
	__u32 pad;
};

/* A frame header complete in d->hdr: d follows its frame; what is forwarded of it at once. */
static __always_inline void h2_frame(struct h2_walk *w, struct h2_conn *h, struct h2_dir *d)
{
	__u8 *b = d->hdr;
	d->frame_len = ((__u32)b[0] << 16) | ((__u32)b[1] << 8) | b[2];
	d->left = d->frame_len;
	d->type = b[3];
	d->flags = b[4];
	d->stream = (((__u32)b[5] << 24) | ((__u32)b[6] << 16) | ((__u32)b[7] << 8) | b[8]) & 0x7fffffff;
	d->fwd = d->type == H2_HEADERS || d->type == H2_CONTINUATION;
	__u32 tgid = w->k.tgid;
	if (d->type == H2_HEADERS && d->stream) {
		if (w->dir == 0 && d->stream > h->last_sid) {
			h->last_sid = d->stream;
			h2_opened(h, tgid, d->stream, w->now);
		} else if (w->dir == 1) {
			h2_answered(h, tgid, d->stream, w->now);
		}
	} else if (d->type == H2_RST_STREAM) {
		h2_answered(h, tgid, d->stream, w->now);
	}
	if (d->type == H2_DATA || d->type == H2_RST_STREAM || (d->fwd && d->frame_len == 0)) {
		struct gpe_h2_event *e = h2_record(&w->k, w->c, w->dir, w->now, d->type, d);
		if (e)
			h2_send(e, 0);
	}
}

/* One step of the walk, as a bpf_loop callback: the rest of the current frame's payload (a
 * header block piece forwarded), or the next frame header. */
static long h2_step(__u64 i, void *data)
{
	struct h2_walk *w = data;
	if (w->pos >= w->n)
		return 1;
	struct h2_conn *h = (struct h2_conn *)w->c->line;
	struct h2_dir *d = &h->d[w->dir & 1];
	__u32 avail = w->n - w->pos;
	__u64 at = w->buf + w->pos;
	if (d->left) {
		__u32 take = d->left < avail ? d->left : avail;
		if (d->fwd) {
			struct gpe_h2_event *e = h2_record(&w->k, w->c, w->dir, w->now, d->type, d);
			if (e) {
				e->off = d->frame_len - d->left;
				__u32 l = take > GPE_H2_FRAG_MAX ? GPE_H2_FRAG_MAX : take;
				barrier_var(l);
				l &= 0x3ff;
				if (l > GPE_H2_FRAG_MAX)
					l = GPE_H2_FRAG_MAX;
				if (l && bpf_probe_read_user(e->frag, l, (void *)at) != 0)
					l = 0;
				e->frag_len = l;
				e->piece_len = take;
				e->trunc = l < take;
				h2_send(e, l);
			}
		}
		d->left -= take;
		w->pos += take;
		return 0;
	}
	__u32 have = d->have;
	barrier_var(have);
	have &= 0xf;
	if (have >= H2_HDR)
		have = 0;
	__u32 need = H2_HDR - have;
	__u32 l = need < avail ? need : avail;
	barrier_var(l);
	l &= 0xf;
	if (l > H2_HDR)
		l = H2_HDR;
	if (l == 0 || bpf_probe_read_user(&d->hdr[have], l, (void *)at) != 0) {
		h->broken = 1;
		return 1;
	}
	w->pos += l;
	if (l < need) {
		d->have = have + l; /* the header goes on in the next call */
		return 1;
	}
	d->have = 0;
	h2_frame(w, h, d);
	return 0;
}

/* The n bytes at buf were read (dir 0) or written (dir 1) on CONN_H2 connection c (five
 * arguments at most: the time is taken here). */
__noinline int h2_io(struct conn_key *k, struct conn *c, __u64 buf, __s64 n, __u32 dir)
{
	if (!k || !c)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct h2_conn *h = (struct h2_conn *)c->line;
	if (h->broken || n <= 0 || !buf)
		return 0;
	struct h2_walk w = {.k = *k, .c = c, .buf = buf, .now = now, .n = (__u32)n, .dir = dir & 1};
	bpf_loop(H2_FRAMES, h2_step, &w, 0);
	if (w.pos < w.n) {
		/* More frames than one walk takes, or a header not readable: the cursor is lost
		 * for good. User space is told; the connection's streams in flight stay until its end. */
		h->broken = 1;
		struct gpe_h2_event *e = h2_record(k, c, dir, now, GPE_H2_LOST, 0);
		if (e)
			h2_send(e, 0);
	}
	return 0;
}

/*
 * h2_begin, h2_io and h2_end are global functions: the verifier checks each once, on its own,
 * not again at each of the many places on_io is inlined (the request path's instruction count
 * stays where it was). Their pointers are checked for NULL, as a global function must.
 */

/* c's first read was the preface: its state starts here, then the read is walked. */
__noinline int h2_begin(struct conn_key *k, struct conn *c, __u64 buf, __s64 n)
{
	if (!k || !c)
		return 0;
	c->seq = new_seq();
	__builtin_memset(c->line, 0, sizeof(struct h2_conn));
	struct h2_conn *h = (struct h2_conn *)c->line;
	h->d[0].type = H2_NONE;
	h->d[0].left = H2_PREFACE; /* skipped like a payload that is not forwarded */
	return h2_io(k, c, buf, n, 0);
}

/* CONN_H2 connection c ends (closed, reused, its worker exited): its streams waiting for their
 * response are in flight no more, and user space ends them. */
__noinline int h2_end(struct conn_key *k, struct conn *c, __u32 reason, __u64 now)
{
	if (!k || !c)
		return 0;
	struct h2_conn *h = (struct h2_conn *)c->line;
	for (int i = 0; i < H2_OPEN; i++) {
		if (h->open[i]) {
			h->open[i] = 0;
			flight(k->tgid, -1, now);
		}
	}
	struct gpe_h2_event *e = h2_record(k, c, 0, now, GPE_H2_CLOSE, 0);
	if (e) {
		e->reason = reason;
		h2_send(e, 0);
	}
	return 0;
}

#else /* GPE_COMPAT: HTTP/2 left alone */

static __always_inline int h2_io(struct conn_key *k, struct conn *c, __u64 buf, __s64 n, __u32 dir)
{
	return 0;
}

static __always_inline int h2_begin(struct conn_key *k, struct conn *c, __u64 buf, __s64 n)
{
	return 0;
}

static __always_inline int h2_end(struct conn_key *k, struct conn *c, __u32 reason, __u64 now)
{
	return 0;
}

#endif /* GPE_COMPAT */

#endif /* GPE_H2_H */
