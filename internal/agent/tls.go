package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// TLSKernel is a Kernel that can also see the plaintext of a worker's TLS connections, through
// uprobes on the libssl the worker has mapped, attached to that worker alone (*probes.Probes).
// The agent attaches them to every worker of a master that serves TLS (tlsPolicy): those
// already running at attach and each one the kernel reports forked (a reload's, a USR2
// upgrade's, a replacement's).
type TLSKernel interface {
	AttachTLS(pid uint32) (events.TLSAttach, error)
	DetachTLS(pid uint32) error
}

// tlsPolicy remembers, per master, whether it serves TLS itself, decided once when the master
// is attached (or becomes one by a USR2 exec). Every Gunicorn worker maps libssl (Gunicorn
// imports ssl), and attaching and detaching a worker's uprobes was most of what a worker
// restart cost gpe-ebpf (issue 25): a master that serves no TLS has its workers left alone.
type tlsPolicy struct {
	mu      sync.Mutex
	masters map[uint32]bool
}

func (p *tlsPolicy) set(master uint32, tls bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.masters == nil {
		p.masters = make(map[uint32]bool)
	}
	p.masters[master] = tls
}

// serves says whether master serves TLS; a master never decided (none: every worker's
// master was attached first) counts as serving it.
func (p *tlsPolicy) serves(master uint32) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	tls, ok := p.masters[master]
	return tls || !ok
}

func (p *tlsPolicy) forget(master uint32) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.masters, master)
}

// decideTLS records whether master serves TLS (servesTLS), when the Kernel can observe it.
func (a *Agent) decideTLS(master uint32) {
	if _, ok := a.k.(TLSKernel); !ok {
		return
	}
	tls, why := servesTLS(a.proc, master)
	a.tls.set(master, tls)
	if tls {
		a.log.Debug("tls: the master may serve TLS; its workers get the TLS uprobes", "master_pid", master, "because", why)
	} else {
		a.log.Debug("tls: the master serves no TLS; its workers get no TLS uprobes", "master_pid", master, "because", why)
	}
}

// servesTLS says whether a Gunicorn master may serve TLS itself, and why: a certificate or
// key in its command line (--certfile, --keyfile), in GUNICORN_CMD_ARGS, or in its config
// file (-c/--config, or gunicorn.conf.py in its working directory) by a plain text search
// for certfile, keyfile or ssl_context. What cannot be read or ruled out counts as TLS: a
// setproctitle title (the arguments are gone), a python: config module, a config file that
// cannot be read.
func servesTLS(fs proc.FS, master uint32) (bool, string) {
	info, err := fs.Read(master)
	if err != nil {
		return true, fmt.Sprintf("its command line: %v", err)
	}
	if proc.RoleOf(info) == proc.TitledMaster {
		return true, "a setproctitle title hides its arguments"
	}
	args := info.Cmdline
	if tlsArgs(args) {
		return true, "--certfile or --keyfile on its command line"
	}
	dir := filepath.Join(fs.Root, fmt.Sprint(master))
	if env, err := os.ReadFile(filepath.Join(dir, "environ")); err == nil {
		for _, kv := range strings.Split(string(env), "\x00") {
			if v, ok := strings.CutPrefix(kv, "GUNICORN_CMD_ARGS="); ok && tlsArgs(strings.Fields(v)) {
				return true, "--certfile or --keyfile in GUNICORN_CMD_ARGS"
			}
		}
	}
	conf, explicit := configFile(args)
	if strings.HasPrefix(conf, "python:") {
		return true, "its config is a Python module (" + conf + ")"
	}
	path := filepath.Join(dir, "cwd", conf) // /proc/PID/cwd works across mount namespaces
	if filepath.IsAbs(conf) {
		path = filepath.Join(dir, "root", conf)
	}
	b, err := os.ReadFile(path)
	switch {
	case err != nil && !explicit && errors.Is(err, os.ErrNotExist):
		return false, "no --certfile or --keyfile on its command line or in GUNICORN_CMD_ARGS, and no config file"
	case err != nil:
		return true, fmt.Sprintf("its config file %s cannot be read: %v", conf, err)
	}
	for _, w := range []string{"certfile", "keyfile", "ssl_context"} {
		if strings.Contains(string(b), w) {
			return true, "its config file " + conf + " mentions " + w
		}
	}
	return false, "no --certfile or --keyfile on its command line, in GUNICORN_CMD_ARGS or in its config file " + conf
}

// tlsArgs says whether Gunicorn arguments give a certificate or a key.
func tlsArgs(args []string) bool {
	for _, a := range args {
		name, _, _ := strings.Cut(a, "=")
		if name == "--certfile" || name == "--keyfile" {
			return true
		}
	}
	return false
}

// configFile is the config file a Gunicorn command line names (-c F, --config F,
// --config=F), explicit, or Gunicorn's default, gunicorn.conf.py in the working directory.
func configFile(args []string) (file string, explicit bool) {
	for i, a := range args {
		switch {
		case (a == "-c" || a == "--config") && i+1 < len(args):
			return args[i+1], true
		case strings.HasPrefix(a, "--config="):
			return strings.TrimPrefix(a, "--config="), true
		}
	}
	return "gunicorn.conf.py", false
}

// watchTLS attaches the TLS uprobes to worker pid of master, if the Kernel can and the master
// serves TLS. forkNS is when the kernel saw the fork (CLOCK_MONOTONIC ns; 0 for a worker
// running at attach): connections the worker wrapped between then and now were tied to no
// socket by SSL_set_fd, and are picked up at their first socket call inside
// SSL_read/SSL_write (README "TLS").
func (a *Agent) watchTLS(pid, master uint32, forkNS uint64) {
	k, ok := a.k.(TLSKernel)
	if !ok || !a.tls.serves(master) {
		return
	}
	res, err := k.AttachTLS(pid)
	switch {
	case errors.Is(err, events.ErrTLSOff):
		return
	case err != nil:
		a.log.Warn("tls: cannot attach to the worker's libssl; its TLS connections are not measured", "worker_pid", pid, "error", err)
		return
	case res.Already:
		return
	case res.Lib == "":
		a.log.Debug("tls: the worker has no libssl mapped", "worker_pid", pid)
		return
	}
	args := []any{"worker_pid", pid, "lib", res.Lib, "probes", res.Probes, "took", res.Took}
	if forkNS != 0 {
		if now := events.MonotonicNow(); now > forkNS {
			args = append(args, "since_fork", time.Duration(now-forkNS))
		}
	}
	a.log.Debug("tls: uprobes attached", args...)
}

// tlsSeen handles the kernel's report that worker pid of master read a TLS handshake, the
// first in the worker's life (events.KindTLS): a master taken for plaintext (its certificate
// set where servesTLS does not look) serves TLS after all. From then on its workers get the
// uprobes: this one now, the others as each reports its own first handshake, the new ones at
// their fork. Requests on the connections a worker read before its uprobes came are not
// measured; the later ones are (their SSL is tied at its first socket call, README "TLS").
func (a *Agent) tlsSeen(pid, master uint32) {
	if _, ok := a.k.(TLSKernel); !ok {
		return
	}
	if !a.tls.serves(master) {
		a.tls.set(master, true)
		a.log.Info("tls: a worker read a TLS handshake: its master serves TLS after all, its workers get the TLS uprobes", "master_pid", master, "worker_pid", pid)
	}
	a.watchTLS(pid, master, 0) // a no-op for a worker that has them already
}

// unwatchTLS detaches the TLS uprobes of a process that exited or became a master (exec).
func (a *Agent) unwatchTLS(pid uint32) {
	if k, ok := a.k.(TLSKernel); ok {
		if err := k.DetachTLS(pid); err != nil {
			a.log.Debug("tls: detach", "pid", pid, "error", err)
		}
	}
}
