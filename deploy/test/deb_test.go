package deploytest

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// debFiles are what the package installs, each checked present after dpkg -i and gone after
// dpkg -r (the conffile in /etc/default only after dpkg -P, as Debian keeps settings on remove).
var debFiles = []string{
	"/usr/bin/gpe-ebpf",
	"/usr/lib/systemd/system/gpe-ebpf.service",
	"/usr/share/gpe-ebpf/grafana/gpe-ebpf.json",
	"/usr/share/gpe-ebpf/prometheus/gpe-ebpf-rules.yml",
	"/usr/share/gpe-ebpf/prometheus/gpe-ebpf-migration-rules.yml",
}

const debConffile = "/etc/default/gpe-ebpf"

// TestDeb builds the package with `make deb`, installs it in a clean bookworm root (dpkg -i),
// verifies its unit there with that root's systemd (`systemd-analyze verify`, which also checks
// that ExecStart names an executable), runs the installed binary, and removes and purges it.
func TestDeb(t *testing.T) {
	requireTool(t, "dpkg-deb", "dpkg")
	requireTool(t, "make", "make")
	root := debianRoot(t, "bookworm")
	t.Logf("bookworm root: systemd %s, dpkg %s", rootVersion(t, root, "systemd"), rootVersion(t, root, "dpkg"))
	out := t.TempDir()
	mk := exec.Command("make", "-C", repoRoot, "deb", "DEB_DIR="+out)
	if b, err := mk.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, b)
	}
	debs, _ := filepath.Glob(filepath.Join(out, "gpe-ebpf_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v, want one gpe-ebpf_*.deb", debs)
	}
	host, inside := rootTempDir(t, root)
	deb, err := os.ReadFile(debs[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(host, "gpe-ebpf.deb"), deb, 0o644); err != nil {
		t.Fatal(err)
	}
	run := func(name string, args ...string) string {
		t.Helper()
		b, err := inRoot(context.Background(), root, name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	exists := func(path string) bool {
		_, err := os.Lstat(filepath.Join(root, path))
		return err == nil
	}
	// A run that failed half way may have left it installed.
	_ = inRoot(context.Background(), root, "dpkg", "--purge", "gpe-ebpf").Run()

	run("dpkg", "-i", inside+"/gpe-ebpf.deb")
	t.Log(strings.TrimSpace(run("dpkg-query", "-W", "gpe-ebpf")))
	for _, f := range append(debFiles, debConffile) {
		if !exists(f) {
			t.Errorf("after dpkg -i: %s is missing", f)
		}
	}
	unit := parseUnit(t, readFileIn(t, root, "/usr/lib/systemd/system/gpe-ebpf.service"))
	if exec := unit["Service"]["ExecStart"]; len(exec) != 1 || !strings.HasPrefix(exec[0], "/usr/bin/gpe-ebpf ") {
		t.Errorf("installed unit: ExecStart %q, want /usr/bin/gpe-ebpf ...", exec)
	}
	if env := unit["Service"]["EnvironmentFile"]; len(env) != 1 || env[0] != "-"+debConffile {
		t.Errorf("installed unit: EnvironmentFile %q, want -%s", env, debConffile)
	}
	if !strings.Contains(readFileIn(t, root, "/var/lib/dpkg/info/gpe-ebpf.conffiles"), debConffile) {
		t.Errorf("%s is not a conffile", debConffile)
	}
	if b, err := inRoot(context.Background(), root, "systemd-analyze", "verify", "/usr/lib/systemd/system/gpe-ebpf.service").CombinedOutput(); err != nil || len(strings.TrimSpace(string(b))) > 0 {
		t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, b)
	}
	if v := run("/usr/bin/gpe-ebpf", "--version"); !strings.Contains(v, "gpe-ebpf") {
		t.Errorf("the installed gpe-ebpf --version: %q", v)
	}

	run("dpkg", "-r", "gpe-ebpf")
	for _, f := range debFiles {
		if exists(f) {
			t.Errorf("after dpkg -r: %s is still there", f)
		}
	}
	if !exists(debConffile) {
		t.Errorf("dpkg -r removed the settings %s (only a purge should)", debConffile)
	}
	run("dpkg", "-P", "gpe-ebpf")
	if exists(debConffile) {
		t.Errorf("after dpkg -P: %s is still there", debConffile)
	}
	if exists("/usr/share/gpe-ebpf") {
		t.Error("after dpkg -P: /usr/share/gpe-ebpf is still there")
	}
}

// readFileIn reads a file of a root.
func readFileIn(t *testing.T, root, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
