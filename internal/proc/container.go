package proc

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Container is where a process runs, as its namespaces and cgroups tell: the PID it sees
// itself (Gunicorn in a container writes its multiprocess files and logs under that one), and
// the container runtime's container ID and the Kubernetes pod UID that its cgroup path names.
// Outside any container, PID is the host PID and the rest is empty.
type Container struct {
	PID    uint32
	ID     string
	PodUID string
}

// Container reads pid's container PID (the last NSpid of /proc/PID/status) and, from
// /proc/PID/cgroup, its container ID and pod UID. A file that cannot be read leaves its
// fields at the host's values.
func (fs FS) Container(pid uint32) Container {
	c := Container{PID: pid}
	dir := fs.pidDir(pid)
	if b, err := os.ReadFile(filepath.Join(dir, "status")); err == nil {
		if p := parseNSpid(b); p != 0 {
			c.PID = p
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cgroup")); err == nil {
		c.ID, c.PodUID = ParseCgroup(b)
	}
	return c
}

// parseNSpid returns the innermost PID of a status file's NSpid line ("NSpid:\t4242\t7"),
// or 0 without one.
func parseNSpid(status []byte) uint32 {
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "NSpid:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return 0
		}
		p, err := strconv.ParseUint(f[len(f)-1], 10, 32)
		if err != nil {
			return 0
		}
		return uint32(p)
	}
	return 0
}

var (
	// A container ID is 64 hex digits ending a path segment, alone (cgroupfs drivers:
	// /docker/<id>, /kubepods/besteffort/pod<uid>/<id>) or after a runtime's prefix (systemd
	// drivers: docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope, libpod-<id>.scope).
	containerRE = regexp.MustCompile(`^(?:[a-z-]+-)?([0-9a-f]{64})(?:\.scope)?$`)
	// A pod UID is a UUID after "pod", with dashes (cgroupfs) or underscores (systemd slices).
	podRE = regexp.MustCompile(`pod([0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12})(?:\.slice)?$`)
)

// ParseCgroup finds the container ID and pod UID in the paths of a /proc/PID/cgroup file
// (cgroup v1, v2 or both). The innermost match wins; CRI-O's conmon cgroup is not the
// container's.
func ParseCgroup(b []byte) (id, podUID string) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		segs := strings.Split(parts[2], "/")
		for i := len(segs) - 1; i >= 0; i-- {
			s := segs[i]
			if id == "" && !strings.Contains(s, "conmon") {
				if m := containerRE.FindStringSubmatch(s); m != nil {
					id = m[1]
				}
			}
			if podUID == "" {
				if m := podRE.FindStringSubmatch(s); m != nil {
					podUID = strings.ReplaceAll(m[1], "_", "-")
				}
			}
		}
		if id != "" && podUID != "" {
			break
		}
	}
	return id, podUID
}
