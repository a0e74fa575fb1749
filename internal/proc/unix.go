package proc

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// UnixPaths lists the Unix sockets of process pid's network namespace (/proc/PID/net/unix):
// inode → path, "" for a socket with no name. An abstract name starts with '@'. A server's
// accepted socket is listed with its listener's path, which is how a worker's Unix downstream
// peer (the inode of the server's end) gets a name.
func (fs FS) UnixPaths(pid uint32) (map[uint64]string, error) {
	b, err := os.ReadFile(filepath.Join(fs.pidDir(pid), "net", "unix"))
	if err != nil {
		return nil, fmt.Errorf("read unix sockets of pid %d: %w", pid, err)
	}
	return parseUnix(b), nil
}

// parseUnix reads a /proc/net/unix table: "Num RefCount Protocol Flags Type St Inode Path",
// the path (which may hold spaces) after the single space that follows the inode.
func parseUnix(table []byte) map[uint64]string {
	out := make(map[uint64]string)
	sc := bufio.NewScanner(bytes.NewReader(table))
	for sc.Scan() {
		rest := sc.Text()
		var field string
		for range 7 {
			field, rest, _ = strings.Cut(strings.TrimLeft(rest, " "), " ")
		}
		ino, err := strconv.ParseUint(field, 10, 64)
		if err != nil || ino == 0 {
			continue // the header, or a line cut short
		}
		out[ino] = rest
	}
	return out
}
