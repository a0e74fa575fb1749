package deploytest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const unitPath = "deploy/systemd/gpe-ebpf.service"

// parseUnit reads a systemd unit into section → key → values (a key may repeat).
func parseUnit(t *testing.T, text string) map[string]map[string][]string {
	t.Helper()
	unit := map[string]map[string][]string{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = strings.Trim(line, "[]")
			unit[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("line %d: not a key=value in a section: %q", n, line)
			}
			k = strings.TrimSpace(k)
			unit[section][k] = append(unit[section][k], strings.TrimSpace(v))
		}
	}
	return unit
}

func TestSystemdUnitKeys(t *testing.T) {
	unit := parseUnit(t, readRepoFile(t, unitPath))
	svc := unit["Service"]
	if svc == nil {
		t.Fatal("no [Service] section")
	}
	if len(unit["Install"]["WantedBy"]) == 0 {
		t.Error("no [Install] WantedBy")
	}
	exec := svc["ExecStart"]
	if len(exec) != 1 || !strings.HasPrefix(exec[0], "/usr/local/bin/gpe-ebpf --pid-file /run/gunicorn/gunicorn.pid") {
		t.Errorf("ExecStart %q", exec)
	}
	for k, want := range map[string]string{
		"ProtectSystem":           "strict",
		"ProtectHome":             "yes",
		"PrivateTmp":              "yes",
		"NoNewPrivileges":         "yes",
		"LockPersonality":         "yes",
		"MemoryDenyWriteExecute":  "yes",
		"Restart":                 "on-failure",
		"EnvironmentFile":         "-/etc/default/gpe-ebpf",
		"RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
	} {
		if got := svc[k]; len(got) != 1 || got[0] != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	caps := []string{"CAP_BPF", "CAP_DAC_READ_SEARCH", "CAP_PERFMON", "CAP_SYS_PTRACE"}
	for _, k := range []string{"CapabilityBoundingSet", "AmbientCapabilities"} {
		if len(svc[k]) != 1 {
			t.Errorf("%s set %d times, want once", k, len(svc[k]))
			continue
		}
		got := strings.Fields(svc[k][0])
		slices.Sort(got)
		if !slices.Equal(got, caps) {
			t.Errorf("%s = %v, want exactly %v", k, got, caps)
		}
	}
	if u := svc["User"]; len(u) > 0 && u[0] != "root" {
		t.Errorf("User=%s: tracefs and other users' /proc need uid 0", u[0])
	}
}

// TestSystemdAnalyzeVerify runs systemd-analyze verify on a copy of the unit
// whose ExecStart binary is replaced by one that exists (verify checks it).
// Any diagnostic, even one systemd calls a warning (an unknown key), fails.
func TestSystemdAnalyzeVerify(t *testing.T) {
	analyze := requireTool(t, "systemd-analyze", "systemd")
	stand, err := exec.LookPath("true")
	if err != nil {
		t.Fatalf("no true(1) to stand in for the binary: %v", err)
	}
	text := readRepoFile(t, unitPath)
	const bin = "ExecStart=/usr/local/bin/gpe-ebpf "
	if !strings.Contains(text, bin) {
		t.Fatalf("%s: no %q to replace", unitPath, bin)
	}
	dir := t.TempDir()
	copyPath := filepath.Join(dir, filepath.Base(unitPath))
	if err := os.WriteFile(copyPath, []byte(strings.Replace(text, bin, "ExecStart="+stand+" ", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", copyPath)
	out, err := cmd.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
