package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The links of a process's fds and namespaces: /proc/PID/fd/N reads socket:[INODE] for a
// socket, /proc/PID/ns/net reads net:[INODE]. Every reader of socket inodes goes through here.

// SocketInodes returns the inodes of the sockets process pid holds open, and its count of fds
// (for a log line). An fd closed while they are read is skipped.
func (fs FS) SocketInodes(pid uint32) (map[uint64]bool, int, error) {
	dir := filepath.Join(fs.pidDir(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("read fds: %w", err)
	}
	inodes := make(map[uint64]bool)
	for _, e := range ents {
		// An error is an fd closed since it was listed.
		if ino, _, err := inodeLink(filepath.Join(dir, e.Name()), "socket"); err == nil && ino != 0 {
			inodes[ino] = true
		}
	}
	return inodes, len(ents), nil
}

// FDSocket returns the inode of the socket that fd of process pid names, 0 when it names
// something else. It fails when the fd is not open, with an error wrapping ErrNoProcess when
// the process is gone.
func (fs FS) FDSocket(pid, fd uint32) (uint64, error) {
	dir := fs.pidDir(pid)
	ino, _, err := inodeLink(filepath.Join(dir, "fd", strconv.FormatUint(uint64(fd), 10)), "socket")
	if err != nil {
		if _, serr := os.Stat(dir); errors.Is(serr, os.ErrNotExist) {
			return 0, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
		return 0, fmt.Errorf("fd %d of pid %d: %w", fd, pid, err)
	}
	return ino, nil
}

// NetNS returns the inode of process pid's network namespace. Two processes are in the same
// namespace when these are equal.
func (fs FS) NetNS(pid uint32) (uint64, error) {
	return nsInode(filepath.Join(fs.pidDir(pid), "ns", "net"))
}

// ThreadNetNS returns the inode of the calling thread's network namespace
// (thread-self: self/ns/net is the main thread's, which may differ in theory).
func (fs FS) ThreadNetNS() (uint64, error) {
	return nsInode(filepath.Join(fs.Root, "thread-self", "ns", "net"))
}

// OpenNetNS opens process pid's network namespace, for a setns.
func (fs FS) OpenNetNS(pid uint32) (*os.File, error) {
	return os.Open(filepath.Join(fs.pidDir(pid), "ns", "net"))
}

func nsInode(path string) (uint64, error) {
	ino, target, err := inodeLink(path, "net")
	if err != nil {
		return 0, fmt.Errorf("read network namespace: %w", err)
	}
	if ino == 0 {
		return 0, fmt.Errorf("read network namespace: unexpected link %q", target)
	}
	return ino, nil
}

// inodeLink reads the link at path, and the INODE of it when it is KIND:[INODE] (else 0).
func inodeLink(path, kind string) (ino uint64, target string, err error) {
	target, err = os.Readlink(path)
	if err != nil {
		return 0, "", err
	}
	ino, _ = parseInodeLink(target, kind)
	return ino, target, nil
}

// parseInodeLink parses KIND:[INODE], the target of an fd or namespace link in /proc.
func parseInodeLink(target, kind string) (uint64, bool) {
	rest, ok := strings.CutPrefix(target, kind+":[")
	if !ok {
		return 0, false
	}
	num, ok := strings.CutSuffix(rest, "]")
	if !ok {
		return 0, false
	}
	ino, err := strconv.ParseUint(num, 10, 64)
	if err != nil || ino == 0 {
		return 0, false
	}
	return ino, true
}
