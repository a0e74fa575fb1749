package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// postgresServer is a real PostgreSQL (Debian's) in a temporary data directory, run by the
// postgres user (the server refuses root), with trust authentication, listening on a free
// loopback port and on a Unix socket in its own directory.
type postgresServer struct {
	port    int
	sockDir string // the Unix socket is sockDir/.s.PGSQL.<port>
	data    string
	log     string
	bin     string // the directory of initdb and pg_ctl
}

// startPostgres runs initdb and pg_ctl start as the postgres user, and stops the server (pg_ctl
// stop, then a kill of the postmaster it started if that failed) and removes its files at cleanup.
func startPostgres(t *testing.T) *postgresServer {
	t.Helper()
	// Debian installs each major version under /usr/lib/postgresql/<version>/bin: take the newest.
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	sort.Slice(bins, func(i, j int) bool { return pgMajor(bins[i]) < pgMajor(bins[j]) })
	var err error
	if len(bins) == 0 {
		err = fmt.Errorf("no /usr/lib/postgresql/*/bin/pg_ctl")
	}
	need(t, "the downstream test needs Debian's postgresql (make deps)", err)
	pg, err := user.Lookup("postgres")
	need(t, "the downstream test runs PostgreSQL as the postgres user (make deps creates it)", err)
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)

	// Not t.TempDir: its parent is root's and 0700, which the postgres user cannot cross.
	dir, err := os.MkdirTemp("", "gpe-pg-")
	if err != nil {
		t.Fatal(err)
	}
	s := &postgresServer{port: freePort(t), sockDir: filepath.Join(dir, "sock"), data: filepath.Join(dir, "data"),
		log: filepath.Join(dir, "postgres.log"), bin: filepath.Dir(bins[len(bins)-1])}
	for _, d := range []string{dir, s.sockDir, s.data} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(s.data, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.stop(t)
		os.RemoveAll(dir)
	})
	s.run(t, "initdb", "-D", s.data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")
	s.run(t, "pg_ctl", "start", "-w", "-t", "30", "-D", s.data, "-l", s.log,
		"-o", fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off", s.port, s.sockDir))
	return s
}

func pgMajor(pgCtl string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(pgCtl))))
	return n
}

// run runs one of the server's programs as the postgres user and fails with its output.
func (s *postgresServer) run(t *testing.T, prog string, args ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--", filepath.Join(s.bin, prog)}, args...)...)
	// pg_ctl start detaches the postmaster with its output in the log file (-l), so the pipes
	// close when pg_ctl exits; a timeout still bounds a hang.
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		log, _ := os.ReadFile(s.log)
		t.Fatalf("%s %s: %v\n%s\nserver log:\n%s", prog, strings.Join(args, " "), err, out, log)
	}
}

// stop stops the server if it runs: pg_ctl stop, else SIGQUIT to the postmaster of its pid file
// (one this test started: the data directory is this test's).
func (s *postgresServer) stop(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(s.data, "postmaster.pid"))
	if err != nil {
		return // never started, or already stopped
	}
	cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(s.bin, "pg_ctl"), "stop", "-w", "-t", "15", "-m", "fast", "-D", s.data)
	cmd.WaitDelay = 5 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Logf("pg_ctl stop: %v\n%s", err, out)
		if pid, err := strconv.Atoi(strings.SplitN(string(b), "\n", 2)[0]); err == nil && pid > 0 {
			syscall.Kill(pid, syscall.SIGQUIT) // the postmaster's immediate shutdown: it ends its children too
		}
	}
}

// dsn is a libpq connection string to the server over TCP, or over its Unix socket.
func (s *postgresServer) dsn(unix bool) string {
	host := "127.0.0.1"
	if unix {
		host = s.sockDir
	}
	return fmt.Sprintf("host=%s port=%d user=postgres dbname=postgres", host, s.port)
}

// socketPath is the server's Unix socket.
func (s *postgresServer) socketPath() string {
	return filepath.Join(s.sockDir, ".s.PGSQL."+strconv.Itoa(s.port))
}
