package main

import (
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"syscall"
	"time"
)

// runDD runs `dd if=/dev/zero of=/dev/null bs=1 count=n`: two syscalls per byte, on no
// socket, so no gpe-ebpf hook fires for them; what it could lose is a global cost, such as the
// one syscall tracepoints put on every syscall (the bare-tracepoint arm shows it). It
// returns dd's CPU time (user+system, from its rusage), which other load on the machine
// disturbs far less than the wall time, and the wall time.
func runDD(n int) (cpu, wall time.Duration, err error) {
	cmd := exec.Command("dd", "if=/dev/zero", "of=/dev/null", "bs=1", "count="+strconv.Itoa(n), "status=none")
	t := time.Now()
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, 0, fmt.Errorf("dd: %w: %s", err, out)
	}
	wall = time.Since(t)
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), wall, nil
}

// threadCPU is the calling OS thread's user+system time (getrusage RUSAGE_THREAD).
func threadCPU() time.Duration {
	const rusageThread = 1
	var ru syscall.Rusage
	_ = syscall.Getrusage(rusageThread, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// pingPong times n one-byte round trips over loopback TCP between two OS threads of this
// process (not Gunicorn), with sendto(2) and recvfrom(2) on raw fds so that the syscalls
// gpe-ebpf traces are the ones exercised (Go's net package would use read/write). It returns
// the wall time and the CPU time of both threads.
func pingPong(n int) (wall, cpu time.Duration, err error) {
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("socket: %w", err)
	}
	defer syscall.Close(lfd)
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return 0, 0, fmt.Errorf("bind: %w", err)
	}
	if err := syscall.Listen(lfd, 1); err != nil {
		return 0, 0, fmt.Errorf("listen: %w", err)
	}
	sa, err := syscall.Getsockname(lfd)
	if err != nil {
		return 0, 0, fmt.Errorf("getsockname: %w", err)
	}
	cfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("socket: %w", err)
	}
	defer syscall.Close(cfd)
	if err := syscall.Connect(cfd, sa); err != nil {
		return 0, 0, fmt.Errorf("connect: %w", err)
	}
	sfd, _, err := syscall.Accept(lfd)
	if err != nil {
		return 0, 0, fmt.Errorf("accept: %w", err)
	}
	defer syscall.Close(sfd)
	for _, fd := range []int{cfd, sfd} {
		_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}

	type echoResult struct {
		cpu time.Duration
		err error
	}
	echo := make(chan echoResult, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		c0 := threadCPU()
		buf := make([]byte, 1)
		for i := 0; i < n; i++ {
			if _, _, err := syscall.Recvfrom(sfd, buf, 0); err != nil {
				echo <- echoResult{err: fmt.Errorf("recvfrom: %w", err)}
				return
			}
			if err := syscall.Sendto(sfd, buf, 0, nil); err != nil {
				echo <- echoResult{err: fmt.Errorf("sendto: %w", err)}
				return
			}
		}
		echo <- echoResult{cpu: threadCPU() - c0}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	buf := []byte{'x'}
	c0 := threadCPU()
	t := time.Now()
	for i := 0; i < n; i++ {
		if err := syscall.Sendto(cfd, buf, 0, nil); err != nil {
			return 0, 0, fmt.Errorf("sendto: %w", err)
		}
		if _, _, err := syscall.Recvfrom(cfd, buf, 0); err != nil {
			return 0, 0, fmt.Errorf("recvfrom: %w", err)
		}
	}
	wall = time.Since(t)
	cpu = threadCPU() - c0
	r := <-echo
	return wall, cpu + r.cpu, r.err
}

// bareTracepoint enables one syscall trace event through tracefs, with no BPF program, on a
// syscall the measured processes never make. It shows the cost every task pays once any
// syscall tracepoint is on. The returned function turns it off again.
func bareTracepoint() (func(), error) {
	const p = "/sys/kernel/tracing/events/syscalls/sys_enter_pivot_root/enable"
	if err := os.WriteFile(p, []byte("1"), 0); err != nil {
		return nil, err
	}
	return func() { _ = os.WriteFile(p, []byte("0"), 0) }, nil
}
