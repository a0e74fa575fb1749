package proc

import (
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"
	"time"
)

func TestParseGunicornArgs(t *testing.T) {
	const py, gu = "/usr/bin/python3", "/usr/bin/gunicorn"
	tests := []struct {
		name     string
		cmdline  []string
		env      string
		want     GunicornSettings
		capacity int
		timeout  time.Duration
		known    bool
	}{
		{"defaults", []string{py, gu, "-w", "2", "app:app"}, "",
			GunicornSettings{Threads: -1, WorkerConnections: -1, Timeout: -1}, 1, 30 * time.Second, true},
		{"threads make gthread", []string{py, gu, "--threads", "4", "-t", "60", "app:app"}, "",
			GunicornSettings{Threads: 4, WorkerConnections: -1, Timeout: 60}, 4, time.Minute, true},
		{"joined forms", []string{py, gu, "--threads=3", "-t5", "-kgthread", "app:app"}, "",
			GunicornSettings{WorkerClass: "gthread", Threads: 3, WorkerConnections: -1, Timeout: 5}, 3, 5 * time.Second, true},
		{"gthread without threads", []string{py, gu, "-k", "gthread", "app:app"}, "",
			GunicornSettings{WorkerClass: "gthread", Threads: -1, WorkerConnections: -1, Timeout: -1}, 1, 30 * time.Second, true},
		{"gevent", []string{"python3", "-m", "gunicorn", "--worker-class", "gevent", "--worker-connections", "50", "app:app"}, "",
			GunicornSettings{WorkerClass: "gevent", Threads: -1, WorkerConnections: 50, Timeout: -1}, 50, 30 * time.Second, true},
		{"uvicorn ignores threads", []string{py, gu, "-k", "uvicorn.workers.UvicornWorker", "--threads", "8", "asgi:app"}, "",
			GunicornSettings{WorkerClass: "uvicorn.workers.UvicornWorker", Threads: 8, WorkerConnections: -1, Timeout: -1}, 1000, 30 * time.Second, true},
		{"environment", []string{py, gu, "app:app"}, `--threads 2 --timeout "90" --access-logformat '%(h)s -t 5'`,
			GunicornSettings{Threads: 2, WorkerConnections: -1, Timeout: 90}, 2, 90 * time.Second, true},
		{"command line wins", []string{py, gu, "--timeout", "10", "app:app"}, "--timeout 90 --threads 2",
			GunicornSettings{Threads: 2, WorkerConnections: -1, Timeout: 10}, 2, 10 * time.Second, true},
		{"config file", []string{py, gu, "-c", "/etc/gunicorn.py", "app:app"}, "",
			GunicornSettings{Threads: -1, WorkerConnections: -1, Timeout: -1, ConfigFile: true}, 1, 0, false},
		{"config file and timeout", []string{py, gu, "--config=/etc/g.py", "-t", "0", "app:app"}, "",
			GunicornSettings{Threads: -1, WorkerConnections: -1, Timeout: 0, ConfigFile: true}, 1, 0, true},
		{"title", []string{"gunicorn:", "master", "[app:app]"}, "--timeout 20",
			GunicornSettings{Threads: -1, WorkerConnections: -1, Timeout: 20, ConfigFile: true}, 1, 20 * time.Second, true},
		{"interpreter options are not gunicorn's", []string{py, "-t", gu, "app:app"}, "",
			GunicornSettings{Threads: -1, WorkerConnections: -1, Timeout: -1}, 1, 30 * time.Second, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ParseGunicornArgs(tt.cmdline, tt.env)
			if got != tt.want {
				t.Errorf("ParseGunicornArgs = %+v, want %+v", got, tt.want)
			}
			if c := got.Capacity(); c != tt.capacity {
				t.Errorf("Capacity = %d, want %d", c, tt.capacity)
			}
			if d, ok := got.WorkerTimeout(); d != tt.timeout || ok != tt.known {
				t.Errorf("WorkerTimeout = %v, %v; want %v, %v", d, ok, tt.timeout, tt.known)
			}
		})
	}
}

func TestShellSplit(t *testing.T) {
	got := shellSplit(` --a 'b c'  "d \"e\"" f\ g '' `)
	want := []string{"--a", "b c", `d "e"`, "f g", ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("shellSplit = %q, want %q", got, want)
	}
}

// fakeProc builds /proc/PID with a stat, a command line, an environment, a working directory
// and fds linked to the files named in fds.
func fakeProc(t *testing.T, pid uint32, cmdline []string, environ []string, fds map[int]string) (FS, string) {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, strconv.Itoa(int(pid)))
	files := t.TempDir()
	for _, d := range []string{filepath.Join(dir, "fd"), filepath.Join(files, "cwd")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	join := func(s []string) []byte {
		var b []byte
		for _, x := range s {
			b = append(append(b, x...), 0)
		}
		return b
	}
	write := func(path string, b []byte) {
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(root, "stat"), []byte("btime 1700000000\n"))
	write(filepath.Join(dir, "stat"), []byte(strconv.Itoa(int(pid))+" (gunicorn) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0\n"))
	write(filepath.Join(dir, "cmdline"), join(cmdline))
	write(filepath.Join(dir, "environ"), join(environ))
	if err := os.Symlink(filepath.Join(files, "cwd"), filepath.Join(dir, "cwd")); err != nil {
		t.Fatal(err)
	}
	for fd, name := range fds {
		target := name
		if !filepath.IsAbs(name) {
			target = filepath.Join(files, name)
			write(target, nil)
		}
		if err := os.Symlink(target, filepath.Join(dir, "fd", strconv.Itoa(fd))); err != nil {
			t.Fatal(err)
		}
	}
	return FS{Root: root}, files
}

func TestGunicornFromProc(t *testing.T) {
	cmd := []string{"/usr/bin/python3", "/usr/bin/gunicorn", "-w", "2", "app:app"}
	fs, files := fakeProc(t, 42, cmd, []string{"PATH=/bin", "GUNICORN_CMD_ARGS=--threads 3 --timeout 45"}, nil)
	s, err := fs.Gunicorn(42)
	if err != nil {
		t.Fatal(err)
	}
	if d, ok := s.WorkerTimeout(); s.Capacity() != 3 || d != 45*time.Second || !ok || s.ConfigFile {
		t.Errorf("Gunicorn(42) = %+v", s)
	}
	// A gunicorn.conf.py in its working directory may set what the command line leaves out.
	fs, files = fakeProc(t, 42, cmd, nil, nil)
	if err := os.WriteFile(filepath.Join(files, "cwd", "gunicorn.conf.py"), []byte("timeout = 120\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, err = fs.Gunicorn(42)
	if _, ok := s.WorkerTimeout(); err != nil || !s.ConfigFile || ok {
		t.Errorf("Gunicorn(42) with gunicorn.conf.py = %+v, %v: the timeout is not known", s, err)
	}
	if _, err := fs.Gunicorn(43); err == nil {
		t.Errorf("Gunicorn of a missing pid succeeded")
	}
}

func TestHeartbeatFD(t *testing.T) {
	fs, files := fakeProc(t, 42, nil, nil, map[int]string{
		0: "/dev/null", 3: "socket:[1234]", 5: "wgunicorn-old", 7: "wgunicorn-abc123", 9: "app.log",
	})
	// The kernel shows an unlinked file as "PATH (deleted)".
	if err := os.Rename(filepath.Join(files, "wgunicorn-abc123"), filepath.Join(files, "wgunicorn-abc123 (deleted)")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(fs.Root, "42", "fd", "7")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(files, "wgunicorn-abc123 (deleted)"), filepath.Join(fs.Root, "42", "fd", "7")); err != nil {
		t.Fatal(err)
	}
	fd, err := fs.HeartbeatFD(42)
	if err != nil || fd != 7 {
		t.Fatalf("HeartbeatFD = %d, %v; want 7 (the newest of the two)", fd, err)
	}
	before := time.Now().Add(-time.Second)
	ctime, _, ino, err := fs.FDChangeTime(42, fd)
	if err != nil || ino == 0 || ctime.Before(before) || ctime.After(time.Now().Add(time.Second)) {
		t.Errorf("FDChangeTime = %v, %d, %v; want about now", ctime, ino, err)
	}
	fs, _ = fakeProc(t, 43, nil, nil, map[int]string{1: "/dev/null", 4: "other.tmp"})
	if _, err := fs.HeartbeatFD(43); err == nil {
		t.Errorf("HeartbeatFD found a heartbeat among no wgunicorn file")
	}
}
