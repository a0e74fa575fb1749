/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * http.h: HTTP/1 parsing as pure functions of bytes already copied: the request line cut after its path
 * (cut_line, with a fast path for the common case), and the status code of a status line. No map,
 * no helper call but bpf_loop (in the compat object, GPE_COMPAT: a map lookup and a bounded loop).
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_HTTP_H
#define GPE_HTTP_H

/* Zero the bytes of line after the first kept, to the next multiple of 8: what is sent. */
static __always_inline void pad_line(char *line, __u32 kept)
{
	barrier_var(kept);
	kept &= 0x1ff;
	if (kept >= GPE_LINE_MAX)
		return;
	__u32 tail = kept & 7;
	if (tail) {
		/* Both targets are little-endian: the low bytes of the word are the kept ones. */
		__u64 *w = (__u64 *)&line[kept & 0xf8];
		*w &= (1ULL << (8 * tail)) - 1;
	}
}

struct cut_ctx {
	char *line;
	__u32 n;
	__u32 phase; /* enum line_phase */
	__u32 kept;
	__u32 pos; /* bytes of this request line already seen in earlier reads */
};

/* One byte of cut_line, as a bpf_loop callback: verified once, not 256 times. */
static long cut_step(__u64 i, void *data)
{
	struct cut_ctx *x = data;
	if (i >= GPE_LINE_MAX || i >= x->n)
		return 1; /* out of bytes: the phase says where the next read resumes */
	char *line = x->line;
	char c = line[i];
	__u32 phase = x->phase;
	__u32 at = x->pos + (__u32)i;
	if (phase == LINE_METHOD) {
		if (c == ' ' && at > 0)
			phase = LINE_TARGET;
		else if (c < 'A' || c > 'Z' || at >= 16)
			phase = LINE_INVALID;
	} else if (phase == LINE_TARGET) {
		if (c == '/' || c == '*' || c == 'h')
			phase = LINE_PATH;
		else
			phase = LINE_INVALID;
	} else if (phase == LINE_PATH) {
		if (c == ' ' || c == '?' || c == '#' || c == '\r' || c == '\n' || c == 0)
			phase = LINE_DONE;
	}
	x->phase = phase;
	if (phase >= LINE_DONE)
		return 1;
	x->kept = i + 1;
	return 0;
}

/* Bytes of a word that end a path (' ', '?', '#', CR, LF, NUL): the high bit of each such
 * byte, exact from the lowest one up (what is above a match may be a false one). */
static __always_inline __u64 path_ends(__u64 v)
{
	const __u64 ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
	__u64 m = 0;
	m |= ((v ^ (ones * ' ')) - ones) & ~(v ^ (ones * ' '));
	m |= ((v ^ (ones * '?')) - ones) & ~(v ^ (ones * '?'));
	m |= ((v ^ (ones * '#')) - ones) & ~(v ^ (ones * '#'));
	m |= ((v ^ (ones * '\r')) - ones) & ~(v ^ (ones * '\r'));
	m |= ((v ^ (ones * '\n')) - ones) & ~(v ^ (ones * '\n'));
	m |= (v - ones) & ~v;
	return m & highs;
}

/* The index (0-7) of the byte whose high bit is the lowest set bit of m (m != 0), without a
 * branch: (m & -m) >> 7 is 1 << 8k, and times 0x0706050403020100 its top byte is 7 - k. */
static __always_inline __u32 first_byte(__u64 m)
{
	__u64 b = (m & -m) >> 7;
	return 7 - (__u32)((b * 0x0706050403020100ULL) >> 56);
}

#define GPE_FAST_WORDS 28 /* paths of up to 28 words (at least 224 bytes) are cut without a loop callback */

/*
 * The common case of cut_line, with no callback per byte: a request line whose method and
 * path are both whole in the first read (n bytes of line). Returns the bytes to keep, or 0
 * when the slow path must decide (anything else: not a request line, in pieces, very long).
 */
/* The length of the method that starts the n bytes of line ("GET" in "GET /"), or 0 if they do
 * not start with an upper-case method of at most 15 letters, a space and a byte after it. */
static __always_inline __u32 method_len(char *line, __u32 n)
{
	__u32 m = 0, bad = 0;
#pragma unroll
	for (__u32 i = 1; i < 16; i++) {
		char ch = line[i];
		if (!m && !bad) {
			if (ch == ' ')
				m = i;
			else if (ch < 'A' || ch > 'Z')
				bad = 1;
		}
	}
	if (bad || m == 0 || m + 1 >= n || line[0] < 'A' || line[0] > 'Z')
		return 0;
	return m;
}

static __always_inline __u32 cut_fast(struct gpe_req_start *e, __u32 n)
{
	char *line = e->line;
	__u32 m = method_len(line, n);
	if (!m)
		return 0;
	/* Through memory, as in cut_line: one state from here on, not one per method length. */
	*(volatile __u16 *)&e->req.pad = m;
	m = *(volatile __u16 *)&e->req.pad & 15;
	char t = line[m + 1];
	if (t != '/' && t != '*' && t != 'h')
		return 0;
	__u32 off = m + 1;
	for (__u32 w = 0; w < GPE_FAST_WORDS; w++) {
		__u64 v = *(__u64 *)(line + off + 8 * w);
		__u64 e = path_ends(v);
		if (e) {
			__u32 end = off + 8 * w + first_byte(e);
			return end < n ? end : 0; /* past the read: stale bytes, not the line */
		}
	}
	return 0;
}

#ifdef GPE_COMPAT
/*
 * No bpf_loop before 5.17: the compat object's slow path is a bounded loop in a global function,
 * which the verifier checks once on its own (5.6+, for scalar arguments), as it does a bpf_loop
 * callback; inlined, the loop's states multiplied the request path's past the million. The line
 * is in this CPU's first scratch record, where read_head put it. Returns phase << 16 | kept.
 */
__noinline int cut_slow(__u32 n, __u32 phase, __u32 pos)
{
	__u32 zero = 0;
	struct gpe_req_start *e = bpf_map_lookup_elem(&scratch, &zero);
	if (!e)
		return LINE_INVALID << 16;
	struct cut_ctx x = {.line = e->line, .n = n, .phase = phase, .pos = pos};
	for (__u32 i = 0; i < GPE_LINE_MAX; i++)
		if (cut_step(i, &x))
			break;
	return (int)((x.phase << 16) | (x.kept & 0xffff));
}
#endif

/*
 * Find the part of "METHOD SP path" in the n bytes of line, resuming at *phase (a request
 * line may arrive a few bytes at a time). Returns how many leading bytes to keep; *phase says
 * where the line stands. Only those bytes go into a record (send_line): the query string, the
 * fragment, the protocol version and every header never leave the kernel.
 */

static __always_inline __u32 cut_line(struct gpe_req_start *e, __u32 n, __u32 *phase, __u32 pos)
{
	char *line = e->line;
	if (pos == 0 && *phase == LINE_METHOD) {
		/* Through the record's memory: a load from a map value is one unknown number to the
		 * verifier, not one state per way cut_fast can end (those would be multiplied by
		 * everything after, past its instruction limit). */
		*(volatile __u16 *)&e->req.line_len = cut_fast(e, n);
		__u32 kept = *(volatile __u16 *)&e->req.line_len;
		if (kept && kept <= GPE_LINE_MAX) {
			*phase = LINE_DONE;
			return kept;
		}
	}
	struct cut_ctx x = {.line = line, .n = n, .phase = *phase, .pos = pos};
#ifdef GPE_COMPAT
	__u32 r = cut_slow(n, x.phase, pos);
	x.phase = r >> 16;
	x.kept = r & 0xffff;
#else
	bpf_loop(GPE_LINE_MAX, cut_step, &x, 0);
#endif
	*phase = x.phase;
	if (x.phase == LINE_INVALID)
		return 0;
	return x.kept;
}

/* Do the first 24 bytes of line (8-byte aligned) hold the HTTP/2 client connection preface,
 * "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" (RFC 9113, 3.4)? Three words, little-endian. */
static __always_inline int h2_preface(const char *line)
{
	const __u64 *w = (const __u64 *)line;
	return w[0] == 0x5448202a20495250ULL /* "PRI * HT" */ &&
	       w[1] == 0x0a0d302e322f5054ULL /* "TP/2.0\r\n" */ &&
	       w[2] == 0x0a0d0a0d4d530a0dULL; /* "\r\nSM\r\n\r\n" */
}

/* A status code's three digits (100 to 599), or 0. */
static __always_inline __u16 three_digits(char a, char b, char c)
{
	if (a < '1' || a > '5' || b < '0' || b > '9' || c < '0' || c > '9')
		return 0;
	return (a - '0') * 100 + (b - '0') * 10 + (c - '0');
}

/*
 * The status code of a status line "HTTP/<d>.<d...> NNN" in the first len bytes of s (12 or
 * 16), or 0. Gunicorn answers with the client's version: HTTP/1.1 and 1.0, and also 0.9, 1.10
 * or 2.0 when a client asked with those; each is an answer whose status counts. A minor
 * version of up to five digits fits in 16 bytes.
 */
static __always_inline __u16 parse_status(const char *s, __u32 len)
{
	if (s[0] != 'H' || s[1] != 'T' || s[2] != 'T' || s[3] != 'P' || s[4] != '/' ||
	    s[5] < '0' || s[5] > '9' || s[6] != '.' || s[7] < '0' || s[7] > '9')
		return 0;
	__u32 last = len >= 16 ? 12 : 8; /* where the space may be, with three digits after it */
	__u32 sp = 0, bad = 0;
	__u16 code = 0;
#pragma unroll
	for (__u32 i = 8; i < 13; i++) {
		char ch = s[i];
		if (!sp && !bad) {
			if (ch == ' ') {
				sp = i;
				code = three_digits(s[i + 1], s[i + 2], s[i + 3]);
			} else if (ch < '0' || ch > '9') {
				bad = 1;
			}
		}
	}
	return sp && sp <= last ? code : 0;
}

#endif /* GPE_HTTP_H */
