package proc

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ListenPorts lists the TCP ports pid listens on: its fds' socket inodes matched with the
// LISTEN entries of /proc/PID/net/tcp and tcp6, which are those of its network namespace.
// The kernel side times the connections to them (README "Seeing the queue").
func (fs FS) ListenPorts(pid uint32) ([]uint16, error) {
	socks, _, err := fs.SocketInodes(pid)
	if err != nil {
		return nil, err
	}
	// As /proc/net/tcp writes them.
	inodes := make(map[string]bool, len(socks))
	for ino := range socks {
		inodes[strconv.FormatUint(ino, 10)] = true
	}
	var ports []uint16
	for _, name := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(fs.pidDir(pid), "net", name))
		if err != nil {
			continue // no IPv6
		}
		ports = append(ports, parseListeners(b, inodes)...)
	}
	slices.Sort(ports)
	return slices.Compact(ports), nil
}

// parseListeners returns the local ports of the LISTEN (st 0A) sockets of a /proc/net/tcp
// table whose inode is in inodes.
func parseListeners(table []byte, inodes map[string]bool) []uint16 {
	var ports []uint16
	sc := bufio.NewScanner(bytes.NewReader(table))
	for sc.Scan() {
		// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[3] != "0A" || !inodes[f[9]] {
			continue
		}
		_, hexPort, ok := strings.Cut(f[1], ":")
		if !ok {
			continue
		}
		p, err := strconv.ParseUint(hexPort, 16, 16)
		if err != nil {
			continue
		}
		ports = append(ports, uint16(p))
	}
	return ports
}
