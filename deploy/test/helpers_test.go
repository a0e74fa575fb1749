package deploytest

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// repoRoot is the main module's root, two levels up from this package.
const repoRoot = "../.."

// readRepoFile returns the content of a file given relative to the repository root.
func readRepoFile(t *testing.T, rel string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, rel))
	if err != nil {
		t.Fatalf("read %s: %v", rel, err)
	}
	return string(b)
}

// requireTool returns the path of an external tool. When it is missing the
// test is skipped, or fails under CI=true, where every check must run.
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := name + " not found: install the Debian package " + pkg
	if os.Getenv("CI") == "true" {
		t.Fatal(msg + " (CI=true: this check may not be skipped)")
	}
	t.Skip(msg)
	return ""
}
