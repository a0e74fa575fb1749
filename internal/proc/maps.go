package proc

import (
	"os"
	"path/filepath"
)

// Maps opens a process's memory map listing (/proc/PID/maps).
func (fs FS) Maps(pid uint32) (*os.File, error) {
	return os.Open(filepath.Join(fs.pidDir(pid), "maps"))
}

// InRoot is path as the process sees it, reached from here through its root
// (/proc/PID/root): a file of a process in a container, from the host.
func (fs FS) InRoot(pid uint32, path string) string {
	return filepath.Join(fs.pidDir(pid), "root", path)
}
