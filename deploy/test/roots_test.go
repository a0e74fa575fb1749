package deploytest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// debianRoot returns a root filesystem declared in test/roots/NAME.root, built (debootstrap) by
// test/roots/build.sh on first use and cached in .cache/roots. It needs root; when it cannot be
// built the test is skipped, or fails under CI=true.
func debianRoot(t *testing.T, name string) string {
	t.Helper()
	build, err := filepath.Abs(filepath.Join(repoRoot, "test/roots/build.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd := exec.Command("bash", build, name)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := fmt.Sprintf("the Debian root %q could not be built: %v\n%s", name, err, stderr.String())
		if os.Getenv("CI") == "true" {
			t.Fatal(msg + " (CI=true: this check may not be skipped)")
		}
		t.Skip(msg)
	}
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Log(s)
	}
	return strings.TrimSpace(string(out))
}

// rootVersion is the version dpkg found of a package in a root (build.sh records them).
func rootVersion(t *testing.T, root, pkg string) string {
	t.Helper()
	b, err := os.ReadFile(root + ".versions")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if name, version, ok := strings.Cut(line, " "); ok && name == pkg {
			return version
		}
	}
	t.Fatalf("%s is not installed in %s", pkg, root)
	return ""
}

// inRoot is a command that runs name from root (test/roots/run.sh: its own mount namespace, the
// host's network). Paths in args are the root's.
func inRoot(ctx context.Context, root, name string, args ...string) *exec.Cmd {
	run, _ := filepath.Abs(filepath.Join(repoRoot, "test/roots/run.sh"))
	return exec.CommandContext(ctx, "bash", append([]string{run, root, name}, args...)...)
}

// rootTempDir makes a directory under root's /tmp, removed at the end of the test, and returns
// its host path and its path inside the root.
func rootTempDir(t *testing.T, root string) (host, inside string) {
	t.Helper()
	host, err := os.MkdirTemp(filepath.Join(root, "tmp"), "gpe-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(host) })
	return host, "/tmp/" + filepath.Base(host)
}

var httpClient = &http.Client{Timeout: 10 * time.Second}

// freePort is a TCP port free on loopback now.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// waitHTTP waits until url answers 200, or fails the test after a minute.
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err := httpClient.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within a minute: %v", url, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
