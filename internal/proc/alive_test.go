package proc

import (
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestAlive(t *testing.T) {
	if !Host.Alive(uint32(os.Getpid())) {
		t.Errorf("this process is not alive")
	}
	// A child that exited and is not reaped yet is a zombie: its exit has happened.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	deadline := time.Now().Add(5 * time.Second)
	for {
		// Not reaped: a zombie, or still running; poll until it is a zombie.
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err == nil && zombie(b) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d never became a zombie", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if Host.Alive(pid) {
		t.Errorf("zombie %d reported alive", pid)
	}
	cmd.Wait()
	if Host.Alive(pid) {
		t.Errorf("reaped %d reported alive", pid)
	}
}

func zombie(stat []byte) bool {
	for i := len(stat) - 1; i >= 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == 'Z'
		}
	}
	return false
}
