package listeners

import (
	"reflect"
	"testing"

	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// TestSocketInodesFixture reads testdata/proc/4242: two distinct sockets (one of them open
// twice) among a pipe, files, an epoll descriptor and a malformed link.
func TestSocketInodesFixture(t *testing.T) {
	fixture := proc.FS{Root: "testdata/proc"}
	got, fds, err := fixture.SocketInodes(4242)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[uint64]bool{90001: true, 90002: true}; !reflect.DeepEqual(got, want) {
		t.Errorf("socket inodes = %v, want %v", got, want)
	}
	if fds != 8 {
		t.Errorf("fds = %d, want 8", fds)
	}
	ns, err := fixture.NetNS(4242)
	if err != nil || ns != 4026532999 {
		t.Errorf("netns inode = %d, %v; want 4026532999", ns, err)
	}
	if _, _, err := fixture.SocketInodes(4243); err == nil {
		t.Error("socket inodes of a process that is not there: no error")
	}
	if _, err := fixture.NetNS(4243); err == nil {
		t.Error("netns of a process that is not there: no error")
	}
}
