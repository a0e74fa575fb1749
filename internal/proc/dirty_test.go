package proc

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
)

func TestDirtyNames(t *testing.T) {
	sockets := []struct {
		path string
		want bool
	}{
		{"/tmp/gunicorn-dirty-k2j4_x9q/arbiter.sock", true},
		{"/var/tmp/app/gunicorn-dirty-abc/arbiter.sock", true},
		{"/tmp/gunicorn-dirty-k2j4_x9q/worker-1.sock", false}, // a dirty worker's own socket
		{"/run/gunicorn/arbiter.sock", false},
		{"/root/.gunicorn/gunicorn.ctl", false},
		{"", false},
	}
	for _, s := range sockets {
		if got := dirtySocket(s.path); got != s.want {
			t.Errorf("dirtySocket(%q) = %v, want %v", s.path, got, s.want)
		}
	}
	titles := []struct {
		cmdline []string
		want    bool
	}{
		{[]string{"gunicorn:", "dirty-arbiter"}, true},
		{[]string{"gunicorn:", "dirty-worker", "[app:app]"}, false},
		{[]string{"gunicorn:", "worker", "[app:app]"}, false},
		{[]string{"/usr/bin/python3", "/usr/bin/gunicorn", "--dirty-workers", "2", "app:app"}, false},
		{nil, false},
	}
	for _, tt := range titles {
		if got := dirtyTitle(tt.cmdline); got != tt.want {
			t.Errorf("dirtyTitle(%q) = %v, want %v", tt.cmdline, got, tt.want)
		}
	}
}

// TestIsDirtyArbiterSelf: this test process becomes a dirty arbiter as /proc shows one by
// binding <dir>/gunicorn-dirty-*/arbiter.sock, as Gunicorn's does (no root needed).
func TestIsDirtyArbiterSelf(t *testing.T) {
	self := uint32(os.Getpid())
	dir := filepath.Join(t.TempDir(), "gunicorn-dirty-x1y2")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	other, err := net.Listen("unix", filepath.Join(dir, "worker-1.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if Host.IsDirtyArbiter(self) {
		t.Fatal("a process holding only a dirty worker's socket is taken for a dirty arbiter")
	}
	l, err := net.Listen("unix", filepath.Join(dir, "arbiter.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if !Host.IsDirtyArbiter(self) {
		t.Error("a process listening on gunicorn-dirty-*/arbiter.sock is not taken for a dirty arbiter")
	}
	if Host.IsDirtyArbiter(1 << 30) {
		t.Error("a missing process is taken for a dirty arbiter")
	}
}

// TestChildPIDsSelf: a child this test starts is listed under the thread that forked it.
func TestChildPIDsSelf(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	kids, err := Host.ChildPIDs(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(kids, uint32(cmd.Process.Pid)) {
		t.Errorf("children %v, want %d among them", kids, cmd.Process.Pid)
	}
	if _, err := Host.ChildPIDs(1 << 30); err == nil {
		t.Error("children of a missing process: no error")
	}
}
