package proc

import (
	"net"
	"os"
	"slices"
	"testing"
)

func TestParseListeners(t *testing.T) {
	table := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 999 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4243 1 0000000000000000 20 4 30 10 -1
garbage
`
	got := parseListeners([]byte(table), map[string]bool{"4242": true, "4243": true})
	if !slices.Equal(got, []uint16{8000}) {
		t.Errorf("parseListeners = %v, want [8000] (the listener of ours; not the other process's, not an established one)", got)
	}
}

// TestListenPorts reads this test process's own listeners from the host's /proc.
func TestListenPorts(t *testing.T) {
	l4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l4.Close()
	want := []uint16{uint16(l4.Addr().(*net.TCPAddr).Port)}
	if l6, err := net.Listen("tcp6", "[::1]:0"); err == nil {
		defer l6.Close()
		want = append(want, uint16(l6.Addr().(*net.TCPAddr).Port))
	}
	slices.Sort(want)
	got, err := Host.ListenPorts(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range want {
		if !slices.Contains(got, p) {
			t.Errorf("ListenPorts = %v, missing %d", got, p)
		}
	}
}
