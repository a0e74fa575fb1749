package listeners

import (
	"reflect"
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

// TestSocketInodesFixture reads testdata/proc/4242: two distinct sockets (one of them open
// twice) among a pipe, files, an epoll descriptor and a malformed link.
func TestSocketInodesFixture(t *testing.T) {
	got, fds, err := socketInodes("testdata/proc", 4242)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[uint64]bool{90001: true, 90002: true}; !reflect.DeepEqual(got, want) {
		t.Errorf("socket inodes = %v, want %v", got, want)
	}
	if fds != 8 {
		t.Errorf("fds = %d, want 8", fds)
	}
	ns, err := netnsInode("testdata/proc", 4242)
	if err != nil || ns != 4026532999 {
		t.Errorf("netns inode = %d, %v; want 4026532999", ns, err)
	}
	if _, _, err := socketInodes("testdata/proc", 4243); err == nil {
		t.Error("socket inodes of a process that is not there: no error")
	}
	if _, err := netnsInode("testdata/proc", 4243); err == nil {
		t.Error("netns of a process that is not there: no error")
	}
}
