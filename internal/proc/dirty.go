package proc

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Gunicorn 25+'s dirty arbiter: with dirty_workers and dirty_apps set, the master forks one
// process (gunicorn/arbiter.py spawn_dirty_arbiter) that runs no HTTP worker but a pool of
// "dirty workers" for long blocking jobs, forked from it (gunicorn/dirty/arbiter.py
// spawn_worker): the master's grandchildren. The HTTP workers send it jobs over a Unix socket
// it binds after the fork, <TMPDIR>/gunicorn-dirty-<random>/arbiter.sock (the directory is made
// by the master, the name is fixed). Like a worker, it has its master's command line unless
// setproctitle is installed, which titles it "gunicorn: dirty-arbiter" and its workers
// "gunicorn: dirty-worker [app]". Until it has bound its socket (a few milliseconds after the
// fork, once Python has run up to asyncio) nothing in /proc tells it from an HTTP worker.

// dirtyArbiterTitle is the dirty arbiter's setproctitle title, split as a command line.
const dirtyArbiterTitle = "dirty-arbiter"

// IsDirtyArbiter says whether process pid is a Gunicorn dirty arbiter: its title says so, or
// it holds a socket named <dir>/gunicorn-dirty-*/arbiter.sock (its listener, or a connection
// it accepted on it: /proc/net/unix names those by the listener's path too). The HTTP workers'
// ends of those connections have no name.
func (fs FS) IsDirtyArbiter(pid uint32) bool {
	info, err := fs.Read(pid)
	if err != nil {
		return false
	}
	if dirtyTitle(info.Cmdline) {
		return true
	}
	socks, _, err := fs.SocketInodes(pid)
	if err != nil || len(socks) == 0 {
		return false
	}
	paths, err := fs.UnixPaths(pid)
	if err != nil {
		return false
	}
	for ino := range socks {
		if dirtySocket(paths[ino]) {
			return true
		}
	}
	return false
}

// dirtyTitle says whether a command line is the dirty arbiter's setproctitle title.
func dirtyTitle(c []string) bool {
	return len(c) > 1 && c[0] == "gunicorn:" && c[1] == dirtyArbiterTitle
}

// dirtySocket says whether a Unix socket's path is a dirty arbiter's.
func dirtySocket(path string) bool {
	dir, base := filepath.Split(path)
	return base == "arbiter.sock" && strings.HasPrefix(filepath.Base(dir), "gunicorn-dirty-")
}

// ChildPIDs lists the children of process pid from /proc/PID/task/*/children (a child is
// listed under the thread that forked it), without reading every process as Children does.
func (fs FS) ChildPIDs(pid uint32) ([]uint32, error) {
	tasks, err := filepath.Glob(filepath.Join(fs.pidDir(pid), "task", "*", "children"))
	if err != nil || len(tasks) == 0 {
		return nil, fmt.Errorf("children of pid %d: no task/*/children (CONFIG_PROC_CHILDREN)", pid)
	}
	var out []uint32
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			continue // a thread that ended meanwhile
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.ParseUint(f, 10, 32); err == nil {
				out = append(out, uint32(n))
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
