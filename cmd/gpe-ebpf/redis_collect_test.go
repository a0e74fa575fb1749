package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestRedisCollectTLS: redis-collect serves through the metrics server, so with a key pair or a
// web config it answers HTTPS only. Redis is not needed: the landing page does not read it.
func TestRedisCollectTLS(t *testing.T) {
	cert, key := selfSigned(t)
	web := writeFile(t, "web.yml", "tls_server_config:\n  cert_file: "+cert+"\n  key_file: "+key+"\n")
	for _, tc := range []struct {
		name  string
		flags []string
		env   []string
	}{
		{"key pair", []string{"--tls-cert-file", cert, "--tls-key-file", key}, nil},
		{"environment", nil, []string{"PROMETHEUS_SSL_CERTFILE", cert, "PROMETHEUS_SSL_KEYFILE", key}},
		{"web config", []string{"--web.config.file", web}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			addr := l.Addr().String()
			l.Close()
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			args := append([]string{"--listen-address", addr, "--redis-host", "127.0.0.1"}, tc.flags...)
			go func() { done <- runRedisCollect(ctx, args, env(tc.env...), io.Discard, io.Discard) }()

			client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
			var resp *http.Response
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
				if resp, err = client.Get("https://" + addr + "/"); err == nil || time.Now().After(deadline) {
					break
				}
			}
			if err != nil {
				t.Fatalf("GET https://%s/: %v", addr, err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "/metrics") {
				t.Errorf("GET / over HTTPS: %d %q, want the landing page", resp.StatusCode, body)
			}
			if resp, err := http.Get("http://" + addr + "/"); err == nil {
				if resp.StatusCode == http.StatusOK {
					t.Errorf("plain HTTP answered 200")
				}
				resp.Body.Close()
			}
			cancel()
			if err := <-done; err != nil {
				t.Errorf("redis-collect after cancel: %v", err)
			}
		})
	}
}

// TestRedisCollectBadInput: redis-collect's flags are refused as gpe-ebpf's are, exit 2.
func TestRedisCollectBadInput(t *testing.T) {
	cert, _ := selfSigned(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--bogus"}, "redis-collect: unknown flag: --bogus (see redis-collect --help)"},
		{[]string{"--redis-port", "0"}, "redis-collect: redis port must be in 1..65535, got 0"},
		{[]string{"--tls-cert-file", cert}, "go together"},
		{[]string{"--web.config.file", "/nonexistent/web.yml"}, "redis-collect: invalid --web.config.file"},
	} {
		var stdout, stderr bytes.Buffer
		code := realMain(append([]string{"redis-collect"}, tc.args...), env(), &stdout, &stderr)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr.String(), tc.want)
		}
	}
}
