package probes

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/ringbuf"

	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// The fakes the sweep and the reader are tested with, without root: a /proc tree of fd links,
// a connection table, and a ring buffer's records.

// fakeProc is a /proc tree in a temporary directory (proc.FS reads it as it reads the host's).
type fakeProc struct {
	t  *testing.T
	fs proc.FS
}

func newFakeProc(t *testing.T) fakeProc { return fakeProc{t, proc.FS{Root: t.TempDir()}} }

// fd makes fd of process pid a link to target (socket:[INODE], pipe:[N], a path).
func (p fakeProc) fd(pid, fd uint32, target string) {
	p.t.Helper()
	dir := filepath.Join(p.fs.Root, strconv.FormatUint(uint64(pid), 10), "fd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, strconv.FormatUint(uint64(fd), 10))); err != nil {
		p.t.Fatal(err)
	}
}

// process makes pid a process with no fd open.
func (p fakeProc) process(pid uint32) {
	p.t.Helper()
	if err := os.MkdirAll(filepath.Join(p.fs.Root, strconv.FormatUint(uint64(pid), 10), "fd"), 0o755); err != nil {
		p.t.Fatal(err)
	}
}

// fakeConns is the kernel's connection table. replace, when it has the key, is what take
// finds instead of the entry the iteration saw: another connection that took the socket's
// memory between the two looks.
type fakeConns struct {
	m       map[uint64]gpeConn
	replace map[uint64]gpeConn
}

func (f *fakeConns) each(fn func(sk uint64, c *gpeConn)) error {
	for sk, c := range f.m {
		fn(sk, &c)
	}
	return nil
}

func (f *fakeConns) take(sk uint64, c *gpeConn) error {
	if r, ok := f.replace[sk]; ok {
		f.m[sk] = r
		delete(f.replace, sk)
	}
	got, ok := f.m[sk]
	if !ok {
		return errors.New("no such entry")
	}
	delete(f.m, sk)
	*c = got
	return nil
}

func (f *fakeConns) putBack(sk uint64, c *gpeConn) error {
	if _, ok := f.m[sk]; ok {
		return errors.New("entry exists")
	}
	f.m[sk] = *c
	return nil
}

// unixConn is a Unix connection's entry: the request line, its state and status.
func unixConn(tgid, fd, ino uint32, state uint8, status uint16, line string) gpeConn {
	c := gpeConn{UnixSock: 1, Ino: ino, State: state, Status: status, Seq: 3, HeadLen: uint16(len(line)),
		StartNs: 10, LastWriteNs: 20, EstNs: 5, BytesIn: 100, BytesOut: 200, Flags: 2}
	c.Owner.Tgid, c.Owner.Fd = tgid, fd
	for i := range len(line) {
		c.Line[i] = int8(line[i])
	}
	return c
}

// fakeRing hands out its records, then says the ring is empty (os.ErrDeadlineExceeded) until
// it is closed (ringbuf.ErrClosed).
type fakeRing struct {
	mu      sync.Mutex
	records [][]byte
	closed  bool
	empties int // reads that found the ring empty
}

func (f *fakeRing) ReadInto(rec *ringbuf.Record) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.closed:
		return ringbuf.ErrClosed
	case len(f.records) == 0:
		f.empties++
		return os.ErrDeadlineExceeded
	}
	rec.RawSample = f.records[0]
	f.records = f.records[1:]
	return nil
}

func (f *fakeRing) SetDeadline(time.Time) {}

func (f *fakeRing) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}
