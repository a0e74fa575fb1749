/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * maps.h: The maps and global variables, with the types of their entries: every piece of kernel-side
 * state, in one place. Which code reads and writes each is said beside it.
 *
 * Included by gpe.bpf.c only, in its order: it uses what the headers before it declare.
 */
#ifndef GPE_MAPS_H
#define GPE_MAPS_H

/*
 * Process kinds and a process's master, keyed by tgid. Seeded from user space at attach. A
 * worker's requests in flight (read, status line not written yet) are counted here, and the
 * time it had one: user space reads them at each scrape (gunicorn_worker_requests_in_flight,
 * gunicorn_worker_busy_seconds_total), so that no record has to say when a request starts.
 */
/* proc_info.flags */
#define PROC_TLS_SEEN 1 /* a TLS handshake was read: GPE_EV_TLS was sent */

struct proc_info {
	__u32 master;
	__u32 kind;       /* enum gpe_proc_kind */
	__u32 inflight;   /* requests in flight */
	__u32 flags;      /* PROC_* */
	__u64 busy_since; /* when inflight last went from 0 to 1 */
	__u64 busy_ns;    /* time with inflight > 0, up to the last time it went back to 0 */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct proc_info);
} procs SEC(".maps");

/*
 * How many tracked processes have a tgid in each slot (tgid % GPE_FILTER_SLOTS): a zero slot
 * means "not tracked" without a hash lookup, which is what every socket call of every other
 * process on the host asks. Counts go up before an entry is added to procs and down after one
 * is removed, here and in user space (probes.go, atomically through a shared mapping), so a
 * slot is never zero while one of its processes is tracked; a count that is too high only
 * costs a lookup.
 */
struct filter {
	__u32 n[GPE_FILTER_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_MMAPABLE);
	__type(key, __u32);
	__type(value, struct filter);
} filter SEC(".maps");

enum conn_state {
	CONN_IDLE = 0,       /* adopted, or between requests */
	CONN_READING = 1,    /* request bytes read, no final status line written yet */
	CONN_RESPONDING = 2, /* final status line written */
	CONN_TLS = 3,        /* the first bytes were a TLS record: nothing is parsed */
	CONN_PROBATION = 4,  /* the first bytes were not a request line: a request only if the
			      * worker answers them with a status line (Gunicorn's 400 to garbage) */
	CONN_H2 = 5,         /* the first bytes were the HTTP/2 preface (h2c, or h2 after TLS with
			      * ALPN): not HTTP/1, nothing is parsed, nothing is counted */
	CONN_PEER = 6,       /* the worker's own client connection (downstream): it sent on it while
			      * serving a request; its calls are counted (peer_io), nothing is parsed */
};

/* A downstream connection's state (CONN_PEER), in its entry's line. */
struct peer_conn {
	struct gpe_peer peer; /* who it talks to (calls and ns unused here) */
	__u64 key;      /* peer_key(peer): the thread's slot of this peer has it */
	__u64 mark;     /* the current call's first send, or its last receive since */
	__u32 seq;      /* the request its current call is booked to (thread_ds.seq), 0: none */
	__u8 dir;       /* the last call on it: PEER_SENT, PEER_RECEIVED, or 0 */
	__u8 slot;      /* that request's slot of the peer in thread_ds, PEER_NO_SLOT if full */
	__u8 pad[2];
};

struct conn_key {
	__u32 tgid;
	__u32 fd;
};

struct conn {
	struct conn_key owner; /* the worker and fd that read the connection's first request */
	union {
		char line[GPE_LINE_MAX]; /* the current request's line, as far as its first read
					  * had it: head_len bytes, then zeros to the next
					  * multiple of 8 */
		struct peer_conn pc;     /* CONN_PEER */
	};
	__u64 start_ns;
	__u64 last_write_ns;
	__u64 bytes_in;
	__u64 bytes_out;
	__u32 seq;      /* the current request's id: unique on the host (next_seq) */
	__u16 status;
	__u8 state;
	__u8 phase;    /* enum line_phase: how far the request line has been read */
	__u16 line_len; /* request-line bytes emitted so far */
	__u8 flags;    /* GPE_FLAG_* */
	__u8 unix_sock; /* AF_UNIX: no hook sees the close; user space checks the fd (probes.go) */
	__u32 ino;      /* AF_UNIX: the socket's inode number, what /proc/<pid>/fd/<fd> links to */
	__u64 est_ns;   /* TCP: when the kernel established it, if to a tracked listener; sent with
			 * the first request's END (the accept-queue wait), then 0 */
	__u16 head_len; /* bytes of line */
	__u8 cpu_ok;    /* request_cpu: cpu_ns was measured in the thread that began the request */
	__u8 pad[5];
	__u64 cpu0;     /* request_cpu: the beginning thread's runtime (se.sum_exec_runtime) then */
	__u64 cpu_ns;   /* its runtime at the last response write since, minus cpu0 */
	__u32 cpu_tid;  /* that thread */
	__u32 cpu_mark; /* its thread_reqs begins count at the beginning; 0: it shares the thread */
};

enum line_phase {
	LINE_METHOD = 0,  /* reading the method */
	LINE_TARGET = 1,  /* the first byte of the target is next */
	LINE_PATH = 2,    /* in the path */
	LINE_DONE = 3,    /* the path ended (space, ?, #): nothing more is kept */
	LINE_INVALID = 4, /* not an HTTP request line */
};

/*
 * TCP connections of tracked workers, in a fixed table indexed by the socket's hash (sk_hash:
 * the kernel's hash of the connection's addresses and ports, set when it is created and left
 * alone until it is freed), each slot tagged with the socket that holds it. Finding one is a
 * single memory access: no lock, no allocation, no helper call (the verifier inlines array
 * lookups), which matters because every socket call of a worker and every TCP socket's end
 * on the host asks (BENCHMARKS.md; a socket cookie, tried first, costs a helper call and a
 * write to the socket on first use). A slot is taken at the connection's first read
 * (compare-and-swap of the tag) and given back when the socket is destroyed. A connection
 * whose slot is taken goes to `conns` instead. User space sets how many slots are used
 * (slot_mask + 1, a power of two, at most GPE_CONN_SLOTS) and sizes the map to match.
 */
struct slot {
	__u64 sk; /* the socket holding the slot (struct sock *), 0 if free */
	struct conn c;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, GPE_CONN_SLOTS);
	__type(key, __u32);
	__type(value, struct slot);
} slots SEC(".maps");

/* The slots used, less one (probes.go sets it at load with the map's size). */
volatile const __u32 slot_mask = GPE_CONN_SLOTS - 1;

/*
 * Unix connections of tracked workers, and TCP ones whose slot was taken, keyed by their
 * socket (struct sock *). No hook sees a Unix socket close, so user space lists these and
 * removes the closed ones (unixsweep.go); TCP ones leave at their socket's end (hook_tcp.h).
 * An entry can outlive its socket, whose memory may then hold another (the owner and inode
 * checks in on_io). Not LRU: an insert into a full LRU map evicts an entry, possibly one with
 * a request in flight, which would then never end. Full, this map refuses the new connection
 * instead, and its requests are counted as dropped (adopt). Sized at load (--max-connections).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct conn);
} conns SEC(".maps");

/*
 * The TCP ports the tracked masters listen on (probes.go writes them at attach): one byte per
 * port, so the check of an established connection is one memory read.
 */
struct listen_ports {
	__u8 on[65536];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct listen_ports);
} listen_ports SEC(".maps");

/*
 * When the kernel established each connection to a tracked listener, keyed by its socket,
 * until a worker's first read takes it (adopt): the time the connection waited in the accept
 * queue. LRU, so that connections no worker ever reads (the client left, or a port of another
 * network namespace) age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} established SEC(".maps");

/* Where adopt builds a new connection's entry (per CPU). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct conn);
} fresh_conn SEC(".maps");

/* TCP connections in conns. While it is 0, a TCP socket's end needs no hash lookup. */
__u64 tcp_in_conns = 0;

/* The last request id handed out: requests are told apart by (process, fd, id) in user space,
 * and a connection's end may follow the start of the next connection on the same fd. */
__u32 next_seq = 0;

#ifdef GPE_COMPAT
/* The compat object's request ids, counted per CPU (new_seq, request.h): no fetch-and-add. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} seq_cpu SEC(".maps");
#endif

enum op {
	OP_RECV = 2,
	OP_SEND = 3,
	OP_SENDFILE = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

/* Ring-buffer records that could not be reserved, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* What was dropped, by enum gpe_drop_reason, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, GPE_DROP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Non-zero: the reader drains the ring on a timer (probes.go) and is never woken. */
volatile const __u64 wakeup_bytes = 0;

/* Non-zero: on_tcp_state is attached (--queue-wait), so established may hold entries. */
volatile const __u32 queue_wait = 1;

/*
 * Records are built here, per CPU: the first bytes of a read are copied into entry 0's line
 * and cut there (a LINE piece is sent from it); an END is built in entry 1 from the connection's state (its
 * line included), and only the header and the kept bytes go into the ring (send_line), so
 * "GET /ok" takes 80 bytes of it, not 352.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, struct gpe_req_start);
} scratch SEC(".maps");

/* Set at load when --tls is on: the socket hooks look for ciphertext to skip. */
volatile const __u32 tls_on = 0;

/*
 * --request-cpu: each request's on-CPU time, read from the serving thread's runtime at its
 * first read and at its response writes (programs that run anyway: no hook of its own).
 */
volatile const __u32 request_cpu = 0;

/*
 * Per thread (its pid), for request_cpu: is its runtime one request's? begins counts the
 * requests the thread began; open is the last one not answered yet (0: none). A request whose
 * thread began another before answering it, or that began while another was open, shares its
 * thread (an event loop's: gevent, tornado, asyncio) and gets no CPU time. LRU: threads that die
 * leave their entry to age out.
 */
struct thread_req {
	__u32 begins;
	__u32 open;
	__u32 shared; /* open began while another was open: its thread is shared (no downstream) */
	__u32 ds_seq; /* downstream: the request whose calls thread_ds holds for this thread */
};

/* --downstream: each request's calls on the worker's own client connections. */
volatile const __u32 downstream = 0;

/*
 * Per thread (its pid), for downstream: the calls of the request it serves alone (seq), per
 * peer, laid out as the record that carries them (GPE_EV_DOWNSTREAM). Only threads that make
 * calls get an entry; LRU, like thread_reqs.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, struct gpe_ds_event);
} thread_ds SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct thread_req);
} thread_reqs SEC(".maps");

/* A thread inside a TLS read or write. */
struct tls_call {
	__u64 ssl;
	__u64 buf;  /* the plaintext */
	__u64 lenp; /* the _ex calls: where the byte count is written */
	__u64 sk;   /* the socket of a socket call made inside, 0 if none yet */
	__u32 fd;
	__u16 op; /* OP_RECV or OP_SEND */
	__u16 ex; /* SSL_read_ex / SSL_write_ex: returns 1, the count is at lenp */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* pid_tgid: the thread */
	__type(value, struct tls_call);
} tls_calls SEC(".maps");

struct tls_key {
	__u64 ssl;
	__u32 tgid;
	__u32 pad;
};

struct tls_conn {
	__u64 sk;
	__u32 fd;
	__u32 flags; /* enum tls_conn_flag */
};

enum tls_conn_flag {
	TLS_BY_READ = 1, /* tls_ssl: tied by the thread's last ciphertext read (asyncio), not by
			  * SSL_set_fd */
	TLS_UNTIED = 2,  /* tls_last_read: the socket read was tied to no SSL */
};

/* SSL* of a worker -> its socket. LRU: an SSL freed unseen ages out; a new SSL at the same
 * address is tied again by its SSL_set_fd, or (TLS_BY_READ) by its reads (tls_return). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tls_key);
	__type(value, struct tls_conn);
} tls_ssl SEC(".maps");

/* Sockets carrying TLS under the uprobes, whose ciphertext the socket hooks skip, until the
 * socket is destroyed (on_tcp_destroy). Value: the worker, with TLS_SOCK_BY_READ set when
 * the socket's SSL was tied by a read (asyncio): its ciphertext reads are still noted in
 * tls_last_read. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u32);
} tls_socks SEC(".maps");

/*
 * Per thread (pid_tgid), the socket of the last ciphertext it read from a TLS connection whose
 * SSL the uprobes have not tied (on_io) or tied by a read (tls_skip). asyncio (Gunicorn's asgi worker, uvicorn) runs libssl
 * over memory BIOs: no SSL_set_fd, no socket call inside SSL_read. The handshake's end
 * (SSL_get_current_cipher, called by both loops right after the read that completed it) ties the
 * SSL to this socket (tls.h); an SSL whose handshake was not seen is tied by its first SSL_read,
 * which asyncio calls at once after the read in the same thread, but uvloop only later, from
 * its ready queue (tls_return). LRU: threads that die leave their entry to age out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct tls_conn);
} tls_last_read SEC(".maps");

/* Threads in tls_calls and sockets in tls_socks (upper bounds): while one is 0, the socket
 * hooks make no lookup of that map, so a worker that serves no TLS pays one memory read. */
__u64 tls_in_calls = 0;
__u64 tls_socks_n = 0;

/*
 * Kprobe mode (hook_kprobe.h): per thread (pid_tgid), the socket of the send or receive it is in,
 * saved by the entry probe for the return probe, which takes it back. Only tracked processes'
 * threads get an entry. LRU: an entry whose return was missed (the kretprobe's instances ran
 * out) ages out, or is replaced by the thread's next call.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} kprobe_socks SEC(".maps");

#endif /* GPE_MAPS_H */
