package probes

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/cilium/ebpf/link"
)

// TLS: the plaintext of a worker's TLS connections, from uprobes on the libssl it has mapped
// (bpf/gpe.bpf.c, section TLS). Each uprobe is given the worker's PID: the kernel installs its
// breakpoint in that process only, so no other process using the same libssl traps.

// tlsProbe is one uprobe (or uretprobe) on a libssl function.
type tlsProbe struct {
	symbol, prog string
	ret          bool
}

// tlsProbes are attached to every worker's libssl. SSL_read_ex and SSL_write_ex are what
// Python 3.10+ calls (CPython's _ssl.c); SSL_read and SSL_write are what older Pythons and
// other callers use. A symbol the library lacks (OpenSSL before 1.1.1 has no _ex calls) is
// left out.
var tlsProbes = []tlsProbe{
	{"SSL_set_fd", gpeProgOnSslSetFd, false},
	{"SSL_read_ex", gpeProgOnSslReadEx, false},
	{"SSL_read_ex", gpeProgOnSslRet, true},
	{"SSL_write_ex", gpeProgOnSslWriteEx, false},
	{"SSL_write_ex", gpeProgOnSslRet, true},
	{"SSL_read", gpeProgOnSslRead, false},
	{"SSL_read", gpeProgOnSslRet, true},
	{"SSL_write", gpeProgOnSslWrite, false},
	{"SSL_write", gpeProgOnSslRet, true},
}

// tlsPrograms are the programs Load keeps when Config.TLS is on.
func tlsPrograms() []string {
	var names []string
	for _, p := range tlsProbes {
		names = append(names, p.prog)
	}
	return names
}

// TLSAttach is what AttachTLS did for one process.
type TLSAttach struct {
	// Lib is the libssl the process has mapped, as the process names it ("" if none).
	Lib string
	// Probes is how many uprobes and uretprobes were attached.
	Probes int
	// Took is how long finding the library and attaching took.
	Took time.Duration
}

// ErrTLSOff is returned by AttachTLS when Load was not asked for TLS (Config.TLS).
var ErrTLSOff = errors.New("tls observation is off")

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
		return TLSAttach{}, nil
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return TLSAttach{}, fmt.Errorf("tls: %w", err)
	}
	lib, err := libsslOf(f)
	f.Close()
	if err != nil || lib == "" {
		return TLSAttach{}, err
	}
	ex, err := link.OpenExecutable(filepath.Join(fmt.Sprintf("/proc/%d/root", pid), lib))
	if err != nil {
		return TLSAttach{Lib: lib}, fmt.Errorf("tls: open %s of pid %d: %w", lib, pid, err)
	}
	var links []link.Link
	opts := &link.UprobeOptions{PID: int(pid)}
	for _, tp := range tlsProbes {
		var l link.Link
		if tp.ret {
			l, err = ex.Uretprobe(tp.symbol, p.progs[tp.prog], opts)
		} else {
			l, err = ex.Uprobe(tp.symbol, p.progs[tp.prog], opts)
		}
		if errors.Is(err, link.ErrNoSymbol) {
			continue
		}
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			return TLSAttach{Lib: lib}, fmt.Errorf("tls: attach %s of %s in pid %d: %w", tp.symbol, lib, pid, err)
		}
		links = append(links, l)
	}
	p.tlsLinks[pid] = links
	return TLSAttach{Lib: lib, Probes: len(links), Took: time.Since(start)}, nil
}

// DetachTLS closes the TLS uprobes of pid, if it has any (its exit, or an exec).
func (p *Probes) DetachTLS(pid uint32) error {
	p.tlsMu.Lock()
	links := p.tlsLinks[pid]
	delete(p.tlsLinks, pid)
	p.tlsMu.Unlock()
	var errs []error
	for _, l := range links {
		errs = append(errs, l.Close())
	}
	return errors.Join(errs...)
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

// closeTLS closes every TLS uprobe (Close).
func (p *Probes) closeTLS() error {
	p.tlsMu.Lock()
	all := p.tlsLinks
	p.tlsLinks = map[uint32][]link.Link{}
	p.tlsMu.Unlock()
	var errs []error
	for _, links := range all {
		for _, l := range links {
			errs = append(errs, l.Close())
		}
	}
	return errors.Join(errs...)
}

// libsslOf finds the OpenSSL libssl in a /proc/PID/maps listing: the path of the first mapping
// named libssl.so*, or "" if there is none. A library deleted since it was mapped (a package
// upgrade under a running server) cannot be opened by path: an error.
func libsslOf(maps io.Reader) (string, error) {
	sc := bufio.NewScanner(maps)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.HasPrefix(fields[5], "/") {
			continue
		}
		path := strings.Join(fields[5:], " ")
		if !strings.HasPrefix(filepath.Base(path), "libssl.so") {
			continue
		}
		if strings.HasSuffix(path, " (deleted)") {
			return "", fmt.Errorf("tls: %s was deleted since it was mapped", strings.TrimSuffix(path, " (deleted)"))
		}
		return path, nil
	}
	return "", sc.Err()
}
