/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * Records shared between gpe.bpf.c and internal/probes (bpf2go turns them into Go types).
 * Every field is naturally aligned and padding is explicit (the file compiles with -Wpadded),
 * so the Go structs bpf2go writes line up byte for byte. Each record starts with the same
 * 16-byte header so the reader can switch on `kind` before decoding the rest. The enums are
 * generated into Go too (bpf2go -type, gen.go): internal/probes checks that the Go constants
 * (internal/probes/layout_test.go) have their values.
 */
#ifndef GPE_H
#define GPE_H

#define GPE_LINE_MAX 256 /* bytes of the first request segment copied, once per request */
#define GPE_FILTER_SLOTS 2048 /* slots of the tracked-process filter (a power of two) */
#define GPE_PEERS_MAX 4 /* peers a request's downstream record carries */
#define GPE_CONN_SLOTS 8192   /* most slots of the TCP connection table (a power of two); the
			       * slots used and the size of conns are set at load (probes.go,
			       * --max-connections) */

enum gpe_event_kind {
	GPE_EV_FORK = 1,      /* a tracked master forked a process (a worker) */
	GPE_EV_EXIT = 2,      /* a tracked process exited (last thread) */
	GPE_EV_EXEC = 3,      /* a tracked process called execve (USR2 upgrade: new master) */
	GPE_EV_SIGNAL = 4,    /* a signal was generated for a tracked process */
	GPE_EV_OOM = 5,       /* the OOM killer chose a tracked process */
	/* 6 and 7 were a request's start and status line: no longer sent (one record a request) */
	GPE_EV_REQ_END = 8,   /* a request ended (next request, close, exit...): the whole request */
	GPE_EV_REQ_LINE = 9,  /* more of a request line that arrived in pieces, before its END */
	GPE_EV_TLS = 10,      /* a tracked worker read a TLS handshake: the first time in its life
			       * (a gpe_proc_event; user space attaches the TLS uprobes) */
	GPE_EV_DOWNSTREAM = 11, /* a request's downstream calls, per peer (a gpe_ds_event), sent
				 * when it is answered, before its END */
	GPE_EV_H2 = 12,       /* a frame of an HTTP/2 connection that user space decodes (a
			       * gpe_h2_event, bpf/h2.h says which) */
};

/* gpe_req_event.flags: bits. */
enum gpe_req_flag {
	GPE_FLAG_TLS = 1,         /* the connection carries TLS: nothing was parsed */
	GPE_FLAG_CLIENT_GONE = 2, /* the client had closed its side when the status line was written */
	GPE_FLAG_CPU = 4,         /* cpu_ns is the on-CPU time of the thread that served the
				   * request, which served no other meanwhile (request_cpu) */
};

enum gpe_proc_kind {
	GPE_PROC_MASTER = 1,
	GPE_PROC_WORKER = 2,
};

/* Why a request ended (gpe_req_event.reason). */
enum gpe_end_reason {
	GPE_END_NEXT = 1,     /* the next request started on the same connection (keep-alive) */
	GPE_END_CLOSE = 2,    /* the connection is gone: TCP socket destroyed, Unix fd closed */
	GPE_END_SHUTDOWN = 3, /* not emitted since the socket hooks (kept so values stay put) */
	GPE_END_REUSED = 4,   /* the socket's entry was of another fd or process, or of a freed socket */
	GPE_END_PIPELINE = 5, /* a second status line on the connection: pipelined requests */
	GPE_END_WAIT = 6,     /* the worker waits for the next request (a read found no data) */
	GPE_END_EXIT = 7,     /* the worker exited with the request in flight (sent before its EXIT) */
};

/*
 * Why something the kernel side should have tracked was dropped: the index of the `drops`
 * counters (gpe_ebpf_connections_dropped_total{reason}).
 */
enum gpe_drop_reason {
	GPE_DROP_TABLE_FULL = 0, /* a request on a connection the full table had no room for: it
				  * is counted here, not in the request metrics */
	GPE_DROP_TLS_UNTIED = 1, /* TLS plaintext read or written on an SSL* tied to no socket
				  * (tls_return): one a call, its bytes go nowhere */
	GPE_DROP_PEERS = 2,      /* a downstream call of a request to a peer past its first
				  * GPE_PEERS_MAX (downstream): one a call */
	GPE_DROP_REASONS = 3,
};

struct gpe_hdr {
	__u32 kind;
	__u32 tgid;  /* the process the event is about */
	__u64 ts_ns; /* bpf_ktime_get_ns() when the event happened */
};

/* GPE_EV_FORK, EXIT, EXEC, SIGNAL, OOM, TLS. */
struct gpe_proc_event {
	struct gpe_hdr hdr;
	__u32 other_tgid; /* FORK: the parent; SIGNAL: the sender */
	__u32 master;     /* the tracked master this process belongs to (itself for a master) */
	__s32 code;       /* EXIT: wait status (exit code << 8, or the killing signal); SIGNAL: signo */
	__u32 proc_kind;  /* enum gpe_proc_kind of the process, as the kernel side knew it */
	__u64 start_ns;   /* FORK: the child's start time (boot clock) */
	__u64 busy_ns;    /* EXIT of a worker: its time with a request in flight (proc_info) */
};

/*
 * GPE_EV_REQ_END: one record a request, sent when it ends, with the first piece of its request
 * line; GPE_EV_REQ_LINE: a later piece of a line that arrived in several reads (sent before the
 * END, only its header's fd, seq and line_len matter).
 */
struct gpe_req_event {
	struct gpe_hdr hdr;
	__u32 fd;
	__u32 seq;        /* the request's id, unique on the host: LINE pieces name their END */
	__u64 start_ns;   /* first request byte read */
	__u64 last_write_ns; /* last response byte written, 0 if none */
	__u64 est_ns;     /* a TCP connection's first request: when the kernel established the
			   * connection (accept-queue wait = start_ns - this), else 0 */
	__u64 bytes_in;   /* request bytes read */
	__u64 bytes_out;  /* response bytes written */
	__u64 cpu_ns;     /* with GPE_FLAG_CPU: the serving thread's CPU time, first read to last
			   * response write */
	__u16 status;     /* the final status, 0 if none was written */
	__u8 reason;      /* enum gpe_end_reason */
	__u8 flags;       /* GPE_FLAG_* */
	__u16 line_len;   /* valid bytes in line */
	__u16 pad;
};

/* The records that carry (a piece of) the request line, cut after the path in the kernel. */
struct gpe_req_start {
	struct gpe_req_event req;
	char line[GPE_LINE_MAX];
};

/* The remote end of a worker's own client connection (to a database, a cache, an API). */
struct gpe_peer {
	__u8 addr[16];  /* TCP: the remote address (IPv4: its first 4 bytes) */
	__u16 family;   /* AF_INET, AF_INET6 or AF_UNIX */
	__u16 port;     /* TCP: the remote port, host order */
	__u32 ino;      /* AF_UNIX: the inode of the peer's socket */
	__u32 calls;    /* the request's calls: a send, then the receives before the next send */
	__u32 pad;
	__u64 ns;       /* their time: each call's first send to its last receive */
};

/*
 * GPE_EV_DOWNSTREAM: the downstream calls of request seq (whose END follows), per peer, when the
 * thread that served it served no other meanwhile (downstream).
 */
struct gpe_ds_event {
	struct gpe_hdr hdr;
	__u32 seq;
	__u32 n;         /* peers used */
	__u64 key[GPE_PEERS_MAX]; /* each peer's key (peer_key): how the kernel finds its slot */
	struct gpe_peer peers[GPE_PEERS_MAX];
};

/* gpe_h2_event.type besides the frame types (0 to 9) it forwards. */
enum gpe_h2_kind {
	GPE_H2_CLOSE = 0xfe, /* the connection ended (reason says why): its open streams end */
	GPE_H2_LOST = 0xfd,  /* the walk lost its place in the frames: nothing more of the connection */
};

#define GPE_H2_FRAG_MAX 512 /* bytes of a header block fragment a record carries */

/*
 * GPE_EV_H2: one frame (or a piece of a frame's header block) of an HTTP/2 connection, for
 * HPACK decoding in user space (internal/h2): HEADERS and CONTINUATION with their fragment,
 * DATA and RST_STREAM without payload, and the connection's end.
 */
struct gpe_h2_event {
	struct gpe_hdr hdr;
	__u32 fd;
	__u32 conn;      /* the connection's id (a request id, given at its preface) */
	__u32 stream;    /* the frame's stream id */
	__u32 frame_len; /* the frame's payload length */
	__u32 off;       /* where frag starts in the frame's payload */
	__u16 frag_len;  /* bytes of frag */
	__u8 type;       /* the frame type, or enum gpe_h2_kind */
	__u8 flags;      /* the frame's flags */
	__u8 dir;        /* 0: read from the client, 1: written by the worker */
	__u8 trunc;      /* the piece had more bytes than frag carries, or was not readable */
	__u8 reason;     /* GPE_H2_CLOSE: enum gpe_end_reason */
	__u8 pad;
	__u32 piece_len; /* bytes of the payload in this read or write (frag: the first of them) */
	char frag[GPE_H2_FRAG_MAX];
};

#endif /* GPE_H */
