package proc

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

func TestParseUnix(t *testing.T) {
	table := `Num       RefCount Protocol Flags    Type St Inode Path
000000007f7ddf59: 00000003 00000000 00000000 0001 03  1102
00000000a1b2c3d4: 00000002 00000000 00010000 0001 01 4242 /run/postgresql/.s.PGSQL.5432
00000000a1b2c3d5: 00000003 00000000 00000000 0001 03 123456 /tmp/a dir/with spaces.sock
00000000a1b2c3d6: 00000002 00000000 00010000 0005 01  7788 @abstract@name
garbage
`
	got := parseUnix([]byte(table))
	want := map[uint64]string{1102: "", 4242: "/run/postgresql/.s.PGSQL.5432", 123456: "/tmp/a dir/with spaces.sock", 7788: "@abstract@name"}
	if len(got) != len(want) {
		t.Errorf("parseUnix = %v, want %v", got, want)
	}
	for ino, path := range want {
		if p, ok := got[ino]; !ok || p != path {
			t.Errorf("inode %d: %q (listed %v), want %q", ino, p, ok, path)
		}
	}
}

// TestUnixPaths reads this test process's own listener from the host's /proc: the socket a
// client's connection is accepted on is listed with the listener's path.
func TestUnixPaths(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f, err := s.(*net.UnixConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ino, err := Host.FDSocket(uint32(os.Getpid()), uint32(f.Fd()))
	if err != nil || ino == 0 {
		t.Fatalf("inode of the accepted socket: %d, %v", ino, err)
	}
	paths, err := Host.UnixPaths(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if got := paths[ino]; got != path {
		t.Errorf("accepted socket %d: path %q, want %q", ino, got, path)
	}
}
