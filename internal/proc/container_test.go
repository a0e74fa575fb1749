package proc

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	hexID = "3f1c2d4e5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f"
	uid   = "1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"
)

func TestParseCgroup(t *testing.T) {
	under := strings.ReplaceAll(uid, "-", "_")
	tests := []struct {
		name, file, id, pod string
	}{
		{"host, v2", "0::/user.slice/user-0.slice/session-1.scope\n", "", ""},
		{"docker, systemd driver", "0::/system.slice/docker-" + hexID + ".scope\n", hexID, ""},
		{"docker, cgroupfs driver, v1", "12:pids:/docker/" + hexID + "\n1:name=systemd:/docker/" + hexID + "\n", hexID, ""},
		{"kubernetes, containerd, systemd driver", "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + under + ".slice/cri-containerd-" + hexID + ".scope\n", hexID, uid},
		{"kubernetes, cgroupfs driver", "0::/kubepods/burstable/pod" + uid + "/" + hexID + "\n", hexID, uid},
		{"cri-o, conmon is not the container", "0::/kubepods.slice/kubepods-pod" + under + ".slice/crio-conmon-" + hexID + ".scope\n", "", uid},
		{"cri-o", "0::/kubepods.slice/kubepods-pod" + under + ".slice/crio-" + hexID + ".scope\n", hexID, uid},
		{"podman", "0::/machine.slice/libpod-" + hexID + ".scope/container\n", hexID, ""},
		{"too short to be an ID", "0::/docker/abc123\n", "", ""},
		{"garbage", "not a cgroup file\n::\n", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, pod := ParseCgroup([]byte(tt.file))
			if id != tt.id || pod != tt.pod {
				t.Errorf("ParseCgroup = %q, %q; want %q, %q", id, pod, tt.id, tt.pod)
			}
		})
	}
}

func TestContainer(t *testing.T) {
	root := t.TempDir()
	write := func(pid, name, body string) {
		dir := filepath.Join(root, pid)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("4242", "status", "Name:\tgunicorn\nPid:\t4242\nNSpid:\t4242\t7\nNStgid:\t4242\t7\n")
	write("4242", "cgroup", "0::/system.slice/docker-"+hexID+".scope\n")
	write("100", "status", "Name:\tgunicorn\nNSpid:\t100\n")
	write("100", "cgroup", "0::/user.slice\n")
	write("200", "status", "Name:\told kernel\n") // no NSpid line (before 4.1)
	fs := FS{Root: root}
	for _, tt := range []struct {
		pid  uint32
		want Container
	}{
		{4242, Container{PID: 7, ID: hexID}},
		{100, Container{PID: 100}},
		{200, Container{PID: 200}},
		{300, Container{PID: 300}}, // gone: the host's view
	} {
		if got := fs.Container(tt.pid); got != tt.want {
			t.Errorf("Container(%d) = %+v, want %+v", tt.pid, got, tt.want)
		}
	}
}
