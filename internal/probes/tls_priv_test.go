package probes

import (
	"bufio"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// startHelper starts a process that prints "ready" once it has set up, and sleeps.
func startHelper(t *testing.T, name string, args ...string) int {
	t.Helper()
	cmd := exec.Command(name, args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		need(t, "this test runs "+name, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	line, _ := bufio.NewReader(out).ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		t.Fatalf("%s: %q, want ready", name, line)
	}
	return cmd.Process.Pid
}

// TestAttachTLS: the uprobes go on the libssl a process has mapped (Debian's Python with its
// ssl module imported, as a Gunicorn worker has), all ten of them, once; a process without
// libssl gets none and no error; DetachTLS takes them off.
// It runs with the uprobe_multi links where the kernel has them, and with perf-event uprobes.
func TestAttachTLS(t *testing.T) {
	for _, perf := range []bool{false, true} {
		t.Run(fmt.Sprintf("perf=%v", perf), func(t *testing.T) { testAttachTLS(t, perf) })
	}
}

func testAttachTLS(t *testing.T, perf bool) {
	requireRoot(t)
	cfg := DefaultConfig()
	cfg.Hooks = HooksSocket
	cfg.TLSPerfEvents = perf
	p, err := Load(cfg)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer p.Close()
	if perf && p.tlsMulti {
		t.Fatal("TLSPerfEvents loaded the uprobe_multi programs")
	}
	py := startHelper(t, "/usr/bin/python3", "-c", "import ssl, sys, time; print('ready', flush=True); time.sleep(60)")
	sh := startHelper(t, "/bin/sh", "-c", "echo ready; exec sleep 60")

	a, err := p.AttachTLS(uint32(py))
	if err != nil {
		t.Fatalf("attach to python: %v", err)
	}
	// OpenSSL 3 has all six functions: six entries and four returns.
	if !strings.HasPrefix(filepath.Base(a.Lib), "libssl.so") || a.Probes != 10 {
		t.Errorf("python: %+v, want 10 probes on a libssl.so", a)
	}
	t.Logf("python: %d probes on %s in %v (uprobe_multi: %v)", a.Probes, a.Lib, a.Took, p.tlsMulti)
	if again, err := p.AttachTLS(uint32(py)); err != nil || again.Probes != 0 || !again.Already {
		t.Errorf("second attach: %+v, %v; want nothing done", again, err)
	}
	if none, err := p.AttachTLS(uint32(sh)); err != nil || none.Lib != "" || none.Probes != 0 || none.Already {
		t.Errorf("sleep: %+v, %v; want no libssl and no error", none, err)
	}
	if got := p.TLSAttached(); !slices.Equal(got, []uint32{uint32(py)}) {
		t.Errorf("attached %v, want [%d]", got, py)
	}
	if err := p.DetachTLS(uint32(py)); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	p.tlsClosing.Wait()
	t.Logf("detached in %v", time.Since(start))
	if got := p.TLSAttached(); len(got) != 0 {
		t.Errorf("attached after detach: %v", got)
	}
}

// TestTLSOff: with TLS off (--tls-uprobes off) no TLS program is loaded and AttachTLS says so.
func TestTLSOff(t *testing.T) {
	p := loadSocketWith(t, func(c *Config) { c.TLS = false })
	if _, err := p.AttachTLS(1); !errors.Is(err, ErrTLSOff) {
		t.Errorf("AttachTLS with TLS off: %v, want ErrTLSOff", err)
	}
	for _, id := range p.ProgramIDs() {
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatal(err)
		}
		info, err := prog.Info()
		prog.Close()
		if err == nil && strings.HasPrefix(info.Name, "on_ssl_") {
			t.Errorf("program %s loaded with TLS off", info.Name)
		}
	}
	if len(p.ProgramIDs()) == 0 {
		t.Error("no program loaded at all: the check proves nothing")
	}
}
