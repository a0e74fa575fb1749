package listeners

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// Listener is one listening socket of a master, as the kernel sees it at the time of the read.
type Listener struct {
	// Name is host:port (127.0.0.1:8000, [::]:8000) or the Unix socket's path.
	Name string
	// Unix is true for a Unix socket.
	Unix bool
	// Inode identifies the socket; masters that share a socket (a USR2 upgrade) share it.
	Inode uint64
	// QueueLength is the connections waiting to be accepted.
	QueueLength uint32
	// QueueMax is the backlog the socket listens with.
	QueueMax uint32
	// Drops is the socket's drop count (sk_drops: the kernel's ListenDrops for this listener);
	// HasDrops is false for Unix sockets, whose connects block or fail with EAGAIN instead.
	Drops    uint64
	HasDrops bool
}

// Config says where the reader looks.
type Config struct {
	// ProcRoot is /proc; tests point it at a fixture.
	ProcRoot string
	// Timeout bounds each netlink dump.
	Timeout time.Duration
}

// DefaultConfig reads the real /proc.
func DefaultConfig() Config {
	return Config{ProcRoot: proc.Host.Root, Timeout: 2 * time.Second}
}

// Reader reads the listeners of masters. It keeps one sock_diag netlink socket per network
// namespace in use: opening one in another namespace needs a setns on a locked thread, and an
// open socket pins its namespace, so a cached socket can never end up in a different
// namespace that reuses the inode. Sockets of namespaces no master uses any more are closed
// at the next Read. Safe for concurrent use.
type Reader struct {
	cfg  Config
	log  *slog.Logger
	proc proc.FS // at cfg.ProcRoot

	mu         sync.Mutex
	self       uint64                   // our own network namespace
	conns      map[uint64]*netlink.Conn // by network namespace inode
	unresolved map[uint32]bool          // masters already logged as unresolved
	nsFailed   map[uint64]string        // last error logged per namespace
	denied     map[uint64]bool          // namespaces we may not enter (no CAP_SYS_ADMIN)
	deniedLog  bool                     // the missing capability was logged
	workers    func(master uint32) []uint32
}

// SetWorkers gives the reader the live HTTP workers of each master. A socket the master
// listens on that its workers do not hold is then left out: the workers serve the HTTP
// listeners they inherit, and a socket the master serves itself is none, as Gunicorn 25.1+'s
// control socket (gunicorn.ctl, served by a thread of the master and closed around every
// fork so that no worker inherits it). Without it, or while no worker's fds can be read,
// every listener of the master is read.
func (r *Reader) SetWorkers(f func(master uint32) []uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.workers = f
}

// NewReader returns a reader; Close releases its netlink sockets.
func NewReader(cfg Config, logger *slog.Logger) *Reader {
	r := &Reader{cfg: cfg, log: logger, proc: proc.FS{Root: cfg.ProcRoot}, conns: make(map[uint64]*netlink.Conn),
		unresolved: make(map[uint32]bool), nsFailed: make(map[uint64]string), denied: make(map[uint64]bool)}
	if ino, err := r.proc.ThreadNetNS(); err == nil {
		r.self = ino
	}
	return r
}

// Close closes the netlink sockets.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for ns, c := range r.conns {
		c.Close()
		delete(r.conns, ns)
	}
	return nil
}

type master struct {
	pid     uint32
	sockets map[uint64]bool
	fds     int
}

// Read returns the listeners of each master in pids, sorted by name. A master whose
// listeners cannot be resolved (it is gone, its fds cannot be read, or none of its sockets is
// among the namespace's listeners) is left out and logged once at debug level.
func (r *Reader) Read(pids []uint32) map[uint32][]Listener {
	r.mu.Lock()
	defer r.mu.Unlock()
	byNS := make(map[uint64][]master)
	for _, pid := range pids {
		socks, n, err := r.proc.SocketInodes(pid)
		if err == nil {
			var ns uint64
			if ns, err = r.proc.NetNS(pid); err == nil {
				byNS[ns] = append(byNS[ns], master{pid, socks, n})
				continue
			}
		}
		r.unresolvedOnce(pid, err.Error())
	}

	out := make(map[uint32][]Listener)
	for ns, ms := range byNS {
		r.readNS(ns, ms, out)
	}
	for pid, ls := range out {
		if ls = r.served(pid, ls); len(ls) > 0 {
			out[pid] = ls
		} else {
			delete(out, pid)
		}
	}

	// Forget namespaces and masters no longer asked about.
	for ns, c := range r.conns {
		if _, ok := byNS[ns]; !ok {
			c.Close()
			delete(r.conns, ns)
		}
	}
	for ns := range r.nsFailed {
		if _, ok := byNS[ns]; !ok {
			delete(r.nsFailed, ns)
		}
	}
	for ns := range r.denied {
		if _, ok := byNS[ns]; !ok {
			delete(r.denied, ns)
		}
	}
	asked := make(map[uint32]bool, len(pids))
	for _, pid := range pids {
		asked[pid] = true
	}
	for pid := range r.unresolved {
		if !asked[pid] {
			delete(r.unresolved, pid)
		}
	}
	return out
}

// readNS dumps the listeners of namespace ns and matches them with the sockets of its
// masters ms.
func (r *Reader) readNS(ns uint64, ms []master, out map[uint32][]Listener) {
	var diag map[uint64]diagSocket
	var err error
	if r.denied[ns] {
		err = fmt.Errorf("may not enter network namespace %d", ns)
	} else {
		diag, err = r.dump(ns, ms[0].pid)
	}
	if errors.Is(err, os.ErrPermission) && !r.denied[ns] {
		// Not retried at every scrape: entering fails the same way until the namespace
		// goes away.
		r.denied[ns] = true
		if !r.deniedLog {
			r.deniedLog = true
			r.log.Info("listeners: entering another network namespace needs CAP_SYS_ADMIN (setns); the listener series of masters there are left out", "netns", ns, "err", err)
		}
	}
	if err == nil {
		delete(r.nsFailed, ns)
	} else if r.nsFailed[ns] != err.Error() {
		r.nsFailed[ns] = err.Error()
		r.log.Debug("listeners: sock_diag", "netns", ns, "err", err)
	}
	for _, m := range ms {
		var ls []Listener
		for ino := range m.sockets {
			if s, ok := diag[ino]; ok {
				ls = append(ls, Listener{Name: s.name, Unix: s.unix, Inode: ino,
					QueueLength: s.rqueue, QueueMax: s.wqueue, Drops: s.drops, HasDrops: s.hasDrops})
			}
		}
		if len(ls) == 0 {
			why := fmt.Sprintf("none of its %d sockets (%d fds) is a listener in network namespace %d", len(m.sockets), m.fds, ns)
			if err != nil {
				why = err.Error()
			}
			r.unresolvedOnce(m.pid, why)
			continue
		}
		delete(r.unresolved, m.pid)
		sort.Slice(ls, func(i, j int) bool {
			if ls[i].Name != ls[j].Name {
				return ls[i].Name < ls[j].Name
			}
			return ls[i].Inode < ls[j].Inode
		})
		out[m.pid] = ls
	}
}

// served keeps the listeners of master that its workers hold (SetWorkers): those of the first
// worker whose fds can be read. All of them when none can.
func (r *Reader) served(master uint32, ls []Listener) []Listener {
	if r.workers == nil {
		return ls
	}
	for _, w := range r.workers(master) {
		held, _, err := r.proc.SocketInodes(w)
		if err != nil {
			continue // it exited meanwhile: ask the next one
		}
		var out []Listener
		for _, l := range ls {
			if held[l.Inode] {
				out = append(out, l)
			}
		}
		return out
	}
	return ls
}

func (r *Reader) unresolvedOnce(pid uint32, why string) {
	if r.unresolved[pid] {
		return
	}
	r.unresolved[pid] = true
	r.log.Debug("listeners: master's listening sockets not resolved; its listener series are left out", "master_pid", pid, "reason", why)
}

// dump runs the sock_diag queries in namespace ns, entered through process pid. A failed
// dump closes the namespace's socket, so the next Read starts afresh.
func (r *Reader) dump(ns uint64, pid uint32) (map[uint64]diagSocket, error) {
	c, err := r.conn(ns, pid)
	if err != nil {
		return nil, err
	}
	if err := c.SetDeadline(time.Now().Add(r.cfg.Timeout)); err != nil {
		return nil, fmt.Errorf("netlink deadline: %w", err)
	}
	diag, err := dumpListeners(c)
	if err != nil {
		c.Close()
		delete(r.conns, ns)
	}
	return diag, err
}

// conn returns the namespace's netlink socket, opening it in the namespace of pid if needed.
func (r *Reader) conn(ns uint64, pid uint32) (*netlink.Conn, error) {
	if c, ok := r.conns[ns]; ok {
		return c, nil
	}
	cfg := &netlink.Config{}
	if ns != r.self {
		f, err := r.proc.OpenNetNS(pid)
		if err != nil {
			return nil, fmt.Errorf("open network namespace of %d: %w", pid, err)
		}
		defer f.Close()
		// The namespace may have been replaced between reading its inode and opening it.
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Ino != ns {
			return nil, fmt.Errorf("network namespace of %d changed while reading it", pid)
		}
		cfg.NetNS = int(f.Fd())
	}
	c, err := netlink.Dial(unix.NETLINK_SOCK_DIAG, cfg)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag netlink socket in network namespace %d: %w", ns, err)
	}
	r.conns[ns] = c
	return c, nil
}
