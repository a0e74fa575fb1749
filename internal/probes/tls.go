package probes

import (
	"bufio"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// TLS: the plaintext of a worker's TLS connections, from uprobes on the libssl it has mapped
// (bpf/gpe.bpf.c, section TLS). Each uprobe is given the worker's PID: the kernel installs its
// breakpoint in that process only, so no other process using the same libssl traps.

// tlsFunc is a libssl function the TLS programs trace, with its attach cookie (enum tls_func in
// bpf/gpe.bpf.c) and whether its return is traced too.
type tlsFunc struct {
	symbol string
	cookie uint64
	ret    bool
}

// tlsFuncs are traced in every worker's libssl. SSL_read_ex and SSL_write_ex are what Python
// 3.10+ calls (CPython's _ssl.c); SSL_read and SSL_write are what older Pythons and other
// callers use. SSL_get_current_cipher is what asyncio and uvloop ask for as the handshake of
// an SSL over memory BIOs completes, which ties it to its socket (bpf/tls.h,
// tls_handshake_done); Python calls it on no socket it wrapped itself (SSL_set_fd), so the
// sync and threaded workers never trap on it. A symbol the library lacks (OpenSSL before
// 1.1.1 has no _ex calls) is left out.
var tlsFuncs = []tlsFunc{
	{"SSL_set_fd", 1, false},
	{"SSL_read", 2, true},
	{"SSL_read_ex", 3, true},
	{"SSL_write", 4, true},
	{"SSL_write_ex", 5, true},
	{"SSL_get_current_cipher", 6, false},
}

// tlsPrograms are the programs Load keeps when Config.TLS is on: the uprobe_multi pair where
// the kernel has uprobe_multi links that filter by process (haveUprobeMulti), else the
// perf-event pair.
func tlsPrograms(multi bool) []string {
	if multi {
		return []string{gpeProgOnSslEnterM, gpeProgOnSslRetM}
	}
	return []string{gpeProgOnSslEnter, gpeProgOnSslRet}
}

// haveUprobeMulti says whether the kernel has uprobe_multi links whose PID filter takes in
// every thread of the process: before Linux 6.10 (commit 46ba0e49b642, "bpf: fix multi-uprobe
// PID filtering logic") it took only the thread the PID names, which would miss the calls of
// a gthread worker's threads.
func haveUprobeMulti() bool {
	return kernelAtLeast(6, 10) && features.HaveBPFLinkUprobeMulti() == nil
}

// kernelAtLeast compares the running kernel's release with major.minor.
func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var maj, min int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &maj, &min); err != nil {
		return false
	}
	return maj > major || maj == major && min >= minor
}

// TLSAttach is what AttachTLS did for one process (events.TLSAttach).
type TLSAttach = events.TLSAttach

// ErrTLSOff is returned by AttachTLS when the TLS programs were not loaded (events.ErrTLSOff).
var ErrTLSOff = events.ErrTLSOff

// AttachTLS attaches the TLS uprobes, scoped to pid, to the libssl that pid has mapped (read
// from /proc/pid/maps, opened through /proc/pid/root, so a worker in a container is served by
// its own image's library). A process with no libssl mapped gets nothing (Lib ""), and no
// error; attaching the same process twice does nothing the second time.
func (p *Probes) AttachTLS(pid uint32) (TLSAttach, error) {
	start := time.Now()
	if !p.cfg.TLS {
		return TLSAttach{}, ErrTLSOff
	}
	p.tlsMu.Lock()
	defer p.tlsMu.Unlock()
	if _, ok := p.tlsLinks[pid]; ok {
		return TLSAttach{Already: true}, nil
	}
	f, err := proc.Host.Maps(pid)
	if err != nil {
		return TLSAttach{}, fmt.Errorf("tls: %w", err)
	}
	lib, id, err := libsslOf(f)
	f.Close()
	if err != nil || lib == "" {
		return TLSAttach{}, err
	}
	path := libPath(pid, lib, id)
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return TLSAttach{Lib: lib}, fmt.Errorf("tls: open %s of pid %d: %w", lib, pid, err)
	}
	known, ok := p.tlsLibs[id]
	if !ok {
		if known, err = tlsFuncsIn(path); err != nil {
			return TLSAttach{Lib: lib}, fmt.Errorf("tls: %w", err)
		}
		if p.tlsLibs == nil {
			p.tlsLibs = map[string]tlsLib{}
		}
		p.tlsLibs[id] = known
	}
	funcs := known.funcs
	var links []link.Link
	if p.tlsMulti {
		links, err = p.attachMulti(ex, pid, known)
	} else {
		links, err = p.attachPerf(ex, pid, known)
	}
	if err != nil {
		closeLinks(links)
		return TLSAttach{Lib: lib}, fmt.Errorf("tls: attach to %s in pid %d: %w", lib, pid, err)
	}
	n := 0
	for _, f := range funcs {
		n++
		if f.ret {
			n++
		}
	}
	p.tlsLinks[pid] = links
	return TLSAttach{Lib: lib, Probes: n, Took: time.Since(start)}, nil
}

// attachMulti attaches lib's functions with two uprobe_multi links: the entries (told apart
// by their cookies) and the returns. They are given by file offset, so the library's symbols
// are not read again.
func (p *Probes) attachMulti(ex *link.Executable, pid uint32, lib tlsLib) ([]link.Link, error) {
	var entries, rets []uint64
	var cookies []uint64
	for i, f := range lib.funcs {
		entries, cookies = append(entries, lib.offsets[i]), append(cookies, f.cookie)
		if f.ret {
			rets = append(rets, lib.offsets[i])
		}
	}
	l, err := ex.UprobeMulti(nil, p.progs[gpeProgOnSslEnterM], &link.UprobeMultiOptions{Addresses: entries, PID: pid, Cookies: cookies})
	if err != nil {
		return nil, err
	}
	links := []link.Link{l}
	if len(rets) > 0 {
		if l, err = ex.UretprobeMulti(nil, p.progs[gpeProgOnSslRetM], &link.UprobeMultiOptions{Addresses: rets, PID: pid}); err != nil {
			return links, err
		}
		links = append(links, l)
	}
	return links, nil
}

// attachPerf attaches lib's functions with a perf-event uprobe (and uretprobe) each.
func (p *Probes) attachPerf(ex *link.Executable, pid uint32, lib tlsLib) ([]link.Link, error) {
	var links []link.Link
	for i, f := range lib.funcs {
		opts := &link.UprobeOptions{PID: int(pid), Cookie: f.cookie, Address: lib.offsets[i]}
		l, err := ex.Uprobe(f.symbol, p.progs[gpeProgOnSslEnter], opts)
		if err != nil {
			return links, fmt.Errorf("%s: %w", f.symbol, err)
		}
		links = append(links, l)
		if f.ret {
			if l, err = ex.Uretprobe(f.symbol, p.progs[gpeProgOnSslRet], opts); err != nil {
				return links, fmt.Errorf("%s return: %w", f.symbol, err)
			}
			links = append(links, l)
		}
	}
	return links, nil
}

// tlsLib is what one libssl file exports of tlsFuncs, and where: the file offset of each
// function, as the kernel's uprobes take it. AttachTLS reads it once per file (tlsLibs, by
// path, device and inode) instead of the library's ELF symbol tables at every worker's fork.
type tlsLib struct {
	funcs   []tlsFunc
	offsets []uint64
}

// tlsFuncsIn reads the tlsFuncs that the library at path exports, with their file offsets:
// a function's address less its executable segment's address, plus the segment's offset.
func tlsFuncsIn(path string) (tlsLib, error) {
	f, err := elf.Open(path)
	if err != nil {
		return tlsLib{}, err
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		return tlsLib{}, fmt.Errorf("symbols of %s: %w", path, err)
	}
	offset := map[string]uint64{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Value == 0 {
			continue
		}
		for _, prog := range f.Progs {
			if prog.Type == elf.PT_LOAD && prog.Flags&elf.PF_X != 0 && prog.Vaddr <= s.Value && s.Value < prog.Vaddr+prog.Memsz {
				offset[s.Name] = s.Value - prog.Vaddr + prog.Off
				break
			}
		}
	}
	var out tlsLib
	for _, fn := range tlsFuncs {
		if off, ok := offset[fn.symbol]; ok {
			out.funcs, out.offsets = append(out.funcs, fn), append(out.offsets, off)
		}
	}
	if len(out.funcs) == 0 {
		return tlsLib{}, fmt.Errorf("%s exports none of %d SSL functions", path, len(tlsFuncs))
	}
	return out, nil
}

// DetachTLS closes the TLS uprobes of pid, if it has any (its exit, or an exec). They are
// closed in the background (closeLinks): the caller is the agent's event loop, and Close
// waits for them.
func (p *Probes) DetachTLS(pid uint32) error {
	p.tlsMu.Lock()
	links := p.tlsLinks[pid]
	delete(p.tlsLinks, pid)
	p.tlsMu.Unlock()
	if len(links) == 0 {
		return nil
	}
	p.tlsClosing.Add(1)
	go func() {
		defer p.tlsClosing.Done()
		closeLinks(links)
	}()
	return nil
}

// TLSAttached lists the processes with TLS uprobes attached.
func (p *Probes) TLSAttached() []uint32 {
	p.tlsMu.Lock()
	defer p.tlsMu.Unlock()
	var pids []uint32
	for pid := range p.tlsLinks {
		pids = append(pids, pid)
	}
	return pids
}

// closeTLS closes every TLS uprobe, and waits for those DetachTLS is closing (Close).
func (p *Probes) closeTLS() error {
	p.tlsMu.Lock()
	all := p.tlsLinks
	p.tlsLinks = map[uint32][]link.Link{}
	p.tlsMu.Unlock()
	var links []link.Link
	for _, l := range all {
		links = append(links, l...)
	}
	err := closeLinks(links)
	p.tlsClosing.Wait()
	return err
}

// closeLinks closes links all at once. Closing a uprobe waits for the kernel's RCU grace
// periods (uprobe_unregister): about 100 ms each on the test machine, so the 9 uprobes of 2
// workers closed one after the other took 1.8 s of gpe-ebpf's 2 s to exit. Concurrent closes
// wait for the same grace periods.
func closeLinks(links []link.Link) error {
	errs := make([]error, len(links))
	var wg sync.WaitGroup
	for i, l := range links {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = l.Close()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// libPath is where gpe-ebpf opens the library that process pid maps as lib, id being its
// libsslOf id ("dev inode path"). /proc/PID/maps names a file as the reader sees it when it
// can: a process in a container (another mount namespace, a pivot_root) maps a path of its own
// root, reached through /proc/PID/root; one under a plain chroot in our mount namespace maps the
// path as we see it, with the chroot's directory in front, which /proc/PID/root would add
// twice. That path is taken only when it is the very file mapped (same device and inode).
func libPath(pid uint32, lib, id string) string {
	inRoot := proc.Host.InRoot(pid, lib)
	if _, err := os.Stat(inRoot); err == nil {
		return inRoot
	}
	var st unix.Stat_t
	if unix.Stat(lib, &st) == nil && id == fmt.Sprintf("%02x:%02x %d %s", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino, lib) {
		return lib
	}
	return inRoot // not there: the open says so, with the path tried
}

// libsslOf finds the OpenSSL libssl in a /proc/PID/maps listing: the path of the first mapping
// named libssl.so*, or "" if there is none, and an id of the file (path, device and inode). A
// library deleted since it was mapped (a package upgrade under a running server) cannot be
// opened by path: an error.
func libsslOf(maps io.Reader) (path, id string, err error) {
	sc := bufio.NewScanner(maps)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.HasPrefix(fields[5], "/") {
			continue
		}
		lib := strings.Join(fields[5:], " ")
		if !strings.HasPrefix(filepath.Base(lib), "libssl.so") {
			continue
		}
		if strings.HasSuffix(lib, " (deleted)") {
			return "", "", fmt.Errorf("tls: %s was deleted since it was mapped", strings.TrimSuffix(lib, " (deleted)"))
		}
		return lib, fields[3] + " " + fields[4] + " " + lib, nil
	}
	return "", "", sc.Err()
}
