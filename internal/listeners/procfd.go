package listeners

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// socketInodes returns the inodes of the sockets process pid holds open, from the
// root/PID/fd symlinks (root is /proc outside tests): a socket's link reads socket:[INODE].
// The total count of descriptors is returned too, for the "unresolved" log line.
func socketInodes(root string, pid uint32) (map[uint64]bool, int, error) {
	dir := filepath.Join(root, strconv.FormatUint(uint64(pid), 10), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, 0, fmt.Errorf("read fds: %w", err)
	}
	inodes := make(map[uint64]bool)
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed since ReadDir
		}
		if ino, ok := parseInodeLink(target, "socket"); ok {
			inodes[ino] = true
		}
	}
	return inodes, len(ents), nil
}

// netnsInode returns the inode of process pid's network namespace, from the root/PID/ns/net
// link (net:[INODE]). Two processes are in the same namespace when these are equal.
func netnsInode(root string, pid uint32) (uint64, error) {
	return nsInode(filepath.Join(root, strconv.FormatUint(uint64(pid), 10), "ns", "net"))
}

func nsInode(path string) (uint64, error) {
	target, err := os.Readlink(path)
	if err != nil {
		return 0, fmt.Errorf("read network namespace: %w", err)
	}
	ino, ok := parseInodeLink(target, "net")
	if !ok {
		return 0, fmt.Errorf("read network namespace: unexpected link %q", target)
	}
	return ino, nil
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
