package redisfwd

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisServer is a real redis-server owned by one test: loopback only, no
// persistence, its files in t.TempDir(), stopped in t.Cleanup.
type redisServer struct {
	t        *testing.T
	bin      string
	port     int
	dir      string
	password string
	cmd      *exec.Cmd
	exited   chan struct{}
}

// startRedis starts a redis-server on a free loopback port. The test is
// skipped when redis-server is not installed, and fails instead under
// CI=true, where a missing server is a broken image, not a choice.
func startRedis(t *testing.T, password string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		bin = "/usr/bin/redis-server"
		if _, serr := os.Stat(bin); serr != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("redis-server is required under CI=true: %v", err)
			}
			t.Skipf("redis-server not installed (apt-get install redis-server): %v", err)
		}
	}
	s := &redisServer{t: t, bin: bin, port: freePort(t), dir: t.TempDir(), password: password}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("pick a free port: %v", err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if err := ln.Close(); err != nil {
		t.Fatalf("release port %d: %v", port, err)
	}
	return port
}

func (s *redisServer) start() {
	s.t.Helper()
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
	}
	if s.password != "" {
		args = append(args, "--requirepass", s.password)
	}
	logf, err := os.OpenFile(filepath.Join(s.dir, "redis.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		s.t.Fatalf("open redis log: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start redis-server: %v", err)
	}
	s.cmd = cmd
	s.exited = make(chan struct{})
	go func(exited chan struct{}) {
		_ = cmd.Wait()
		close(exited)
	}(s.exited)

	// Wait for the port with plain dials (go-redis would log each refusal),
	// then check that the server answers.
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			conn.Close()
			c := s.client(0)
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			err = c.Ping(ctx).Err()
			cancel()
			c.Close()
			if err == nil {
				return
			}
		}
		select {
		case <-s.exited:
			s.t.Fatalf("redis-server exited at start: %s", s.log())
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d not ready: %v\n%s", s.port, err, s.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill stops the server with SIGKILL, as a crash or an OOM kill would.
func (s *redisServer) kill() {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	if err := s.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		s.t.Fatalf("kill redis-server: %v", err)
	}
	select {
	case <-s.exited:
	case <-time.After(5 * time.Second):
		s.t.Fatal("redis-server did not die after SIGKILL")
	}
	s.cmd = nil
}

func (s *redisServer) stop() { s.kill() }

func (s *redisServer) log() string {
	b, _ := os.ReadFile(filepath.Join(s.dir, "redis.log"))
	return string(b)
}

// client returns a test-side client to inspect what was written.
func (s *redisServer) client(db int) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:            net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)),
		Password:        s.password,
		DB:              db,
		Protocol:        2,
		DisableIdentity: true,
		MaxRetries:      -1,
	})
}
