package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// env is a lookup over a fixed environment, so tests never see the real one.
func env(kv ...string) func(string) (string, bool) {
	m := make(map[string]string)
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// selfSigned writes a self-signed certificate for 127.0.0.1 and its key, and returns the paths.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "gpe-ebpf test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, "cert.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeFile(t, "key.pem", string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})))
	return certFile, keyFile
}

// missingPID returns a PID that names no process right now.
func missingPID(t *testing.T) int {
	t.Helper()
	for pid := 4194000; pid > 4000000; pid-- {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); os.IsNotExist(err) {
			return pid
		}
	}
	t.Fatal("no free PID found")
	return 0
}

// startSleep starts a process that is not Gunicorn and returns its PID.
func startSleep(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sleep: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd.Process.Pid
}

// TestBadInput runs realMain on inputs that must be refused before anything touches the
// kernel: each must exit 2 with one line on stderr naming what is wrong, and print nothing on
// stdout. None of these needs root: the refusal comes first.
func TestBadInput(t *testing.T) {
	sleepPID := strconv.Itoa(startSleep(t))
	noPID := strconv.Itoa(missingPID(t))
	garbage := writeFile(t, "garbage.pid", "garbage\n")
	empty := writeFile(t, "empty.pid", "")
	badYAML := writeFile(t, "web.yml", "tls_server_config: [\n")
	noCert := writeFile(t, "web.yml", "tls_server_config:\n  cert_file: /nonexistent/cert.pem\n  key_file: /nonexistent/key.pem\n")
	badHash := writeFile(t, "web.yml", "basic_auth_users:\n  alice: not-a-bcrypt-hash\n")
	notPEM := writeFile(t, "cert.pem", "not a certificate\n")
	cert, key := selfSigned(t)

	cases := []struct {
		name string
		args []string
		env  []string
		want []string // substrings of stderr
	}{
		{"unknown flag", []string{"--bogus"}, nil, []string{"unknown flag: --bogus"}},
		{"stray argument", []string{"--pid", "1", "extra"}, nil, []string{`unexpected argument "extra"`}},
		{"no mode", nil, nil, []string{"one of --pid, --pid-file or --discover is required"}},
		{"two modes", []string{"--pid", "1", "--discover"}, nil, []string{"exclusive"}},
		{"negative pid", []string{"--pid", "-3"}, nil, []string{"invalid --pid -3"}},
		{"port not a number", []string{"--pid", "1"}, []string{"PROMETHEUS_METRICS_PORT", "abc"}, []string{`invalid value "abc" for environment variable PROMETHEUS_METRICS_PORT`}},
		{"port out of range", []string{"--pid", "1"}, []string{"PROMETHEUS_METRICS_PORT", "70000"}, []string{"invalid --metrics-port (PROMETHEUS_METRICS_PORT) 70000"}},
		{"port flag not a number", []string{"--pid", "1", "--metrics-port", "abc"}, nil, []string{`invalid argument "abc" for "--metrics-port"`}},
		{"redis enabled maybe", []string{"--pid", "1"}, []string{"REDIS_ENABLED", "maybe"}, []string{`invalid value "maybe" for --redis-enabled (REDIS_ENABLED)`}},
		{"workers negative", []string{"--pid", "1"}, []string{"GUNICORN_WORKERS", "-1"}, []string{"invalid --workers (GUNICORN_WORKERS) -1"}},
		{"workers not a number", []string{"--pid", "1"}, []string{"GUNICORN_WORKERS", "two"}, []string{`invalid value "two" for environment variable GUNICORN_WORKERS`}},
		{"redis port", []string{"--pid", "1"}, []string{"REDIS_ENABLED", "yes", "REDIS_PORT", "0"}, []string{"invalid Redis settings"}},
		{"redis interval", []string{"--pid", "1"}, []string{"REDIS_FORWARD_INTERVAL", "0"}, []string{"invalid --redis-forward-interval (REDIS_FORWARD_INTERVAL) 0"}},
		{"bind address", []string{"--pid", "1"}, []string{"PROMETHEUS_BIND_ADDRESS", "nowhere"}, []string{`invalid --bind-address (PROMETHEUS_BIND_ADDRESS) "nowhere"`}},
		{"log format", []string{"--pid", "1", "--log-format", "xml"}, nil, []string{`invalid --log-format "xml"`}},
		{"stale-after", []string{"--pid", "1", "--stale-after", "0s"}, nil, []string{"invalid --stale-after"}},
		{"hooks", []string{"--pid", "1", "--hooks", "uprobe"}, nil, []string{`invalid --hooks "uprobe": auto, socket, fentry, kprobe, syscall`}},
		{"ignore-route not a path", []string{"--pid", "1", "--ignore-route", "healthz"}, nil, []string{`invalid --ignore-route "healthz": must start with /`}},
		{"no such process", []string{"--pid", noPID}, nil, []string{"pid " + noPID + ": no such process"}},
		{"not gunicorn", []string{"--pid", sleepPID}, nil, []string{"pid " + sleepPID + " (sleep 60) is not a Gunicorn master", "--force"}},
		{"pid file missing", []string{"--pid-file", "/nonexistent/gunicorn.pid"}, nil, []string{"--pid-file: open /nonexistent/gunicorn.pid: no such file or directory"}},
		{"pid file unreadable", []string{"--pid-file", t.TempDir()}, nil, []string{"--pid-file: read ", "is a directory"}},
		{"pid file garbage", []string{"--pid-file", garbage}, nil, []string{"--pid-file " + garbage + `: no PID in it ("garbage")`}},
		{"pid file empty", []string{"--pid-file", empty}, nil, []string{"--pid-file " + empty + `: no PID in it ("")`}},
		{"pid file names no process", []string{"--pid-file", writeFile(t, "gone.pid", noPID+"\n")}, nil, []string{"pid " + noPID + ": no such process"}},
		{"pid file names sleep", []string{"--pid-file", writeFile(t, "sleep.pid", sleepPID)}, nil, []string{"is not a Gunicorn master"}},
		{"web config bad yaml", []string{"--pid", "1", "--web.config.file", badYAML}, nil, []string{"invalid --web.config.file", badYAML, "yaml"}},
		{"web config missing cert", []string{"--pid", "1", "--web.config.file", noCert}, nil, []string{"invalid --web.config.file", "/nonexistent/cert.pem", "no such file or directory"}},
		{"web config bad hash", []string{"--pid", "1", "--web.config.file", badHash}, nil, []string{"invalid --web.config.file", "bcrypt"}},
		{"web config missing", []string{"--pid", "1", "--web.config.file", "/nonexistent/web.yml"}, nil, []string{"invalid --web.config.file", "no such file or directory"}},
		{"tls cert without key", []string{"--pid", "1", "--tls-cert-file", cert}, nil, []string{"--tls-cert-file (PROMETHEUS_SSL_CERTFILE) and --tls-key-file (PROMETHEUS_SSL_KEYFILE) go together"}},
		{"tls cert missing", []string{"--pid", "1"}, []string{"PROMETHEUS_SSL_CERTFILE", "/nonexistent/c.pem", "PROMETHEUS_SSL_KEYFILE", key}, []string{"--tls-cert-file (PROMETHEUS_SSL_CERTFILE): stat /nonexistent/c.pem"}},
		{"tls cert not PEM", []string{"--pid", "1", "--tls-cert-file", notPEM, "--tls-key-file", key}, nil, []string{"invalid --tls-cert-file/--tls-key-file", "certificate"}},
		{"tls and web config", []string{"--pid", "1", "--tls-cert-file", cert, "--tls-key-file", key, "--web.config.file", noCert}, nil, []string{"exclusive"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := realMain(c.args, env(c.env...), &stdout, &stderr)
			msg := stderr.String()
			t.Logf("exit %d: %s", code, strings.TrimSpace(msg))
			if code != 2 {
				t.Errorf("exit code %d, want 2", code)
			}
			if !strings.HasPrefix(msg, "gpe-ebpf: ") || strings.Count(msg, "\n") != 1 {
				t.Errorf("stderr %q: want one line starting gpe-ebpf: ", msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("stderr %q does not contain %q", msg, w)
				}
			}
			if stdout.Len() != 0 {
				t.Errorf("stdout not empty: %q", stdout.String())
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, arg := range []string{"--help", "-h"} {
		t.Run(arg, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			if code := realMain([]string{arg}, env(), &stdout, &stderr); code != 0 {
				t.Errorf("exit code %d, want 0", code)
			}
			if stderr.Len() != 0 {
				t.Errorf("stderr: %q", stderr.String())
			}
			out := stdout.String()
			for _, g := range flagGroups {
				if !strings.Contains(out, "\n"+g.title+":\n") {
					t.Errorf("help lacks the group %q", g.title)
				}
				for _, f := range g.flags {
					if !strings.Contains(out, "--"+f) {
						t.Errorf("help lacks --%s", f)
					}
				}
			}
			for _, ef := range envFlags {
				if !strings.Contains(out, "[env "+ef.env+"]") {
					t.Errorf("help lacks the environment variable %s", ef.env)
				}
			}
		})
	}
}

func TestVersion(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := realMain([]string{"--version"}, env(), &stdout, &stderr); code != 0 {
		t.Errorf("exit code %d, want 0", code)
	}
	want := fmt.Sprintf("gpe-ebpf %s (commit %s, %s %s/%s)\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	if got := stdout.String(); got != want {
		t.Errorf("--version printed %q, want %q", got, want)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr: %q", stderr.String())
	}
	// --version needs no target, but a bad flag is still refused.
	stdout.Reset()
	if code := realMain([]string{"--version", "--bogus"}, env(), &stdout, &stderr); code != 2 {
		t.Errorf("--version --bogus: exit %d, want 2", code)
	}
}
