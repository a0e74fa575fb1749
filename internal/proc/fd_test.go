package proc

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func TestParseInodeLink(t *testing.T) {
	for _, tc := range []struct {
		target, kind string
		want         uint64
		ok           bool
	}{
		{"socket:[12345]", "socket", 12345, true},
		{"net:[4026531840]", "net", 4026531840, true},
		{"socket:[12345]", "net", 0, false},
		{"pipe:[12345]", "socket", 0, false},
		{"socket:[]", "socket", 0, false},
		{"socket:[0]", "socket", 0, false},
		{"socket:[12x]", "socket", 0, false},
		{"socket:[123", "socket", 0, false},
		{"/tmp/socket:[123]", "socket", 0, false},
		{"anon_inode:[eventpoll]", "socket", 0, false},
		{"", "socket", 0, false},
	} {
		t.Run(tc.target+"/"+tc.kind, func(t *testing.T) {
			got, ok := parseInodeLink(tc.target, tc.kind)
			if got != tc.want || ok != tc.ok {
				t.Errorf("parseInodeLink(%q, %q) = %d, %v; want %d, %v", tc.target, tc.kind, got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestFDSocket: what one fd names, in a /proc of links made here.
func TestFDSocket(t *testing.T) {
	fs := FS{Root: t.TempDir()}
	dir := filepath.Join(fs.Root, "100", "fd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for fd, target := range map[string]string{"3": "socket:[9001]", "4": "pipe:[9001]"} {
		if err := os.Symlink(target, filepath.Join(dir, fd)); err != nil {
			t.Fatal(err)
		}
	}
	if ino, err := fs.FDSocket(100, 3); ino != 9001 || err != nil {
		t.Errorf("socket fd: %d, %v; want 9001", ino, err)
	}
	if ino, err := fs.FDSocket(100, 4); ino != 0 || err != nil {
		t.Errorf("pipe fd: %d, %v; want 0 and no error", ino, err)
	}
	if _, err := fs.FDSocket(100, 5); err == nil || errors.Is(err, ErrNoProcess) {
		t.Errorf("closed fd: %v, want an error that is not ErrNoProcess", err)
	}
	if _, err := fs.FDSocket(101, 3); !errors.Is(err, ErrNoProcess) {
		t.Errorf("process gone: %v, want ErrNoProcess", err)
	}
}
