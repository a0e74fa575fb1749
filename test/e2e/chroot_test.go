package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestTLSChroot: Gunicorn serving TLS under a plain chroot (same mount namespace, a bind mount
// of / as its root), where /proc/PID/maps names its libssl with the chroot's directory in
// front: the uprobes still find the library, and every request is counted.
func TestTLSChroot(t *testing.T) {
	requireE2E(t)
	cert, key, pool := selfSigned(t)
	// Not t.TempDir: its cleanup removes the tree, which would be the host's / through the bind
	// mount if the unmount failed. os.Remove takes only an empty directory.
	root, err := os.MkdirTemp("", "gpe-chroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(root) })
	// Not recursive, and private: its unmount cannot reach the host's own mounts.
	if out, err := exec.Command("mount", "--bind", "/", root).CombinedOutput(); err != nil {
		t.Fatalf("bind-mount / for the chroot: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", root).Run() })
	if out, err := exec.Command("mount", "--make-private", root).CombinedOutput(); err != nil {
		t.Fatalf("make the chroot's mount private: %v: %s", err, out)
	}
	port := freePort(t)
	cmd := exec.Command("chroot", root, "gunicorn", "-w", "2", "-k", "sync", "-b", fmt.Sprintf("127.0.0.1:%d", port),
		"--certfile", cert, "--keyfile", key, "--chdir", appDir(), "app:app")
	out := new(safeBuffer)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start gunicorn in the chroot: %v", err)
	}
	master := cmd.Process.Pid // chroot execs gunicorn
	t.Cleanup(func() {
		syscall.Kill(master, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-master, syscall.SIGKILL)
			<-done
		}
		if t.Failed() {
			t.Logf("gunicorn's output:\n%s", out.String())
		}
	})
	waitFor(t, 30*time.Second, "the chroot's Gunicorn and its 2 workers", func() bool { return len(children(master)) == 2 })
	workers := children(master)
	for _, w := range workers {
		if lib := mappedLibssl(t, w); !strings.HasPrefix(lib, root+"/") {
			t.Fatalf("worker %d maps libssl as %q, not under the chroot %s: the test would prove nothing", w, lib, root)
		}
	}
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
	base := fmt.Sprintf("https://127.0.0.1:%d", port)
	waitFor(t, 20*time.Second, "the chroot's Gunicorn to answer HTTPS", func() bool {
		st, _, err := fetch(client, base+"/", "", "")
		return err == nil && st != 0
	})
	p := startGPE(t, "--pid", strconv.Itoa(master))
	p.waitTLSAttached(t, workers)
	base0 := p.scrape(t).sum("gunicorn_worker_requests_total", nil)
	const nReq = 20
	for i := 0; i < nReq; i++ {
		if st, _, err := fetch(client, base+"/ok", "", ""); err != nil || st != 200 {
			t.Fatalf("GET /ok in the chroot: %d, %v", st, err)
		}
	}
	p.waitMetric(t, "gunicorn_worker_requests_total", nil, base0+nReq)
	ms := p.scrape(t)
	if got := ms.sum("gunicorn_http_requests_total", map[string]string{"endpoint": "/ok", "status": "200"}); got != nReq {
		t.Errorf("/ok counted %v, want %d", got, nReq)
	}
}

// mappedLibssl is the path /proc/PID/maps gives pid's libssl, as this process sees it.
func mappedLibssl(t *testing.T, pid int) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 6 && strings.Contains(fields[5], "/libssl.so") {
			return fields[5]
		}
	}
	return ""
}
