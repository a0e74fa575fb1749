package main

import (
	"context"
	"fmt"
	"io"
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

// tcpPair is a connected loopback TCP pair (client, server), Nagle off.
func tcpPair() (a, b int, err error) {
	lfd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("socket: %w", err)
	}
	defer syscall.Close(lfd)
	if err := syscall.Bind(lfd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return -1, -1, fmt.Errorf("bind: %w", err)
	}
	if err := syscall.Listen(lfd, 1); err != nil {
		return -1, -1, fmt.Errorf("listen: %w", err)
	}
	sa, err := syscall.Getsockname(lfd)
	if err != nil {
		return -1, -1, fmt.Errorf("getsockname: %w", err)
	}
	if a, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0); err != nil {
		return -1, -1, fmt.Errorf("socket: %w", err)
	}
	if err := syscall.Connect(a, sa); err != nil {
		syscall.Close(a)
		return -1, -1, fmt.Errorf("connect: %w", err)
	}
	if b, _, err = syscall.Accept(lfd); err != nil {
		syscall.Close(a)
		return -1, -1, fmt.Errorf("accept: %w", err)
	}
	for _, fd := range []int{a, b} {
		_ = syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1)
	}
	return a, b, nil
}

// unixPair is a connected Unix stream pair.
func unixPair() (a, b int, err error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, -1, fmt.Errorf("socketpair: %w", err)
	}
	return fds[0], fds[1], nil
}

// pingPong times n one-byte round trips over a socket pair made by mk, between two OS threads
// of this process (not Gunicorn), with sendto(2) and recvfrom(2) on raw fds, the calls a
// worker makes (Go's net package would use read/write). It returns the wall time and the CPU
// time of both threads.
func pingPong(mk func() (int, int, error), n int) (wall, cpu time.Duration, err error) {
	cfd, sfd, err := mk()
	if err != nil {
		return 0, 0, err
	}
	defer syscall.Close(cfd)
	defer syscall.Close(sfd)
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

// othersPhase measures what processes that are not Gunicorn pay while gpe-ebpf watches an idle
// Gunicorn: a dd bs=1 (file I/O only) and one-byte ping-pongs over TCP and a Unix socket, in
// rounds of the arms unobserved, observed in each hook mode, and a bare syscall trace event
// with no BPF program (the floor of syscall mode: what enabling any syscall tracepoint costs).
// The ratios are of CPU time (rusage), which other load disturbs less than wall time.
func (s *session) othersPhase(ctx context.Context, g *gunicorn) error {
	o := s.o
	arms := append(append([]string{"off"}, s.modes...), "bare-tracepoint")
	fmt.Printf("\n[other processes] %d rounds of %v: dd bs=1 count=%d, %d TCP and %d Unix sendto/recvfrom round trips\n",
		o.otherPairs, arms, o.ddBytes, o.pingPongs, o.pingPongs)
	type series struct{ dd, tcp, unix []float64 }
	cpu := map[string]*series{}
	ddRuns := map[string][]float64{}
	for _, a := range arms {
		cpu[a] = &series{}
	}
	err := eachRound(ctx, o.otherPairs, arms, func(pair int, arm string) error {
		r, err := s.othersRun(g, arm)
		if err != nil {
			return err
		}
		c := cpu[arm]
		c.dd = append(c.dd, r.dd)
		c.tcp = append(c.tcp, r.tcp)
		c.unix = append(c.unix, r.unix)
		if r.observed {
			ddRuns[arm] = append(ddRuns[arm], r.ddRuns)
		}
		s.res.Runs = append(s.res.Runs,
			run{Phase: "dd", Arm: arm, Pair: pair, Seconds: r.dd},
			run{Phase: "ping-pong-tcp", Arm: arm, Pair: pair, Seconds: r.tcp},
			run{Phase: "ping-pong-unix", Arm: arm, Pair: pair, Seconds: r.unix})
		fmt.Printf("  round %2d %-16s CPU: dd %6.3fs (%.0f ns/byte)  TCP ping-pong %6.3fs  Unix ping-pong %6.3fs\n",
			pair, arm, r.dd, r.dd*1e9/float64(o.ddBytes), r.tcp, r.unix)
		return nil
	})
	if err != nil {
		return err
	}
	off := cpu["off"]
	s.res.add(
		newFigure("dd CPU time, unobserved", "ns/byte", scale(off.dd, 1e9/float64(o.ddBytes)), "", nil),
		newFigure("bare syscall trace event (no BPF): dd CPU ratio", "ratio", ratios(cpu["bare-tracepoint"].dd, off.dd), "", nil),
		newFigure("bare syscall trace event: TCP ping-pong CPU ratio", "ratio", ratios(cpu["bare-tracepoint"].tcp, off.tcp), "", nil),
	)
	for _, m := range s.modes {
		t := targetsFor(m)
		c := cpu[m]
		s.res.add(
			newFigure(m+": dd CPU ratio (observed ÷ unobserved)", "ratio", ratios(c.dd, off.dd), t.dd.text, t.dd.ok),
			newFigure(fmt.Sprintf("%s:   gpe-ebpf program runs during a dd (%d syscalls)", m, 2*o.ddBytes), "runs", ddRuns[m], "", nil),
			newFigure(m+": TCP ping-pong CPU ratio, not Gunicorn", "ratio", ratios(c.tcp, off.tcp), t.pingPong.text, t.pingPong.ok),
			newFigure(m+": Unix ping-pong CPU ratio, not Gunicorn", "ratio", ratios(c.unix, off.unix), t.pingPong.text, t.pingPong.ok),
		)
	}
	return nil
}

type othersResult struct {
	dd, tcp, unix float64 // CPU seconds
	ddRuns        float64 // gpe-ebpf's program runs during the dd
	observed      bool
}

// othersRun runs dd and both ping-pongs once in one arm. With gpe-ebpf, the kernel's run
// statistics are on only around the dd, to count how often gpe-ebpf's programs ran while dd
// made its syscalls; they would add two clock reads to every program run of the ping-pongs.
func (s *session) othersRun(g *gunicorn, arm string) (othersResult, error) {
	var r othersResult
	var ob *observer
	switch arm {
	case "off":
	case "bare-tracepoint":
		undo, err := bareTracepoint()
		if err != nil {
			return r, fmt.Errorf("enable a bare tracepoint: %w", err)
		}
		defer undo()
	default:
		var err error
		if ob, err = s.observe(g.pid(), arm); err != nil {
			return r, err
		}
		defer ob.stop()
		r.observed = true
		time.Sleep(200 * time.Millisecond)
	}
	var runs0 uint64
	var stats io.Closer
	if ob != nil {
		var err error
		if stats, err = enableRunStats(); err != nil {
			return r, fmt.Errorf("enable BPF run statistics: %w", err)
		}
		st, err := programStats(ob.cmd.Process.Pid)
		if err != nil {
			stats.Close()
			return r, err
		}
		runs0 = totalRuns(st)
	}
	dd, _, err := runDD(s.o.ddBytes)
	if ob != nil {
		st, serr := programStats(ob.cmd.Process.Pid)
		stats.Close()
		if serr != nil {
			return r, serr
		}
		r.ddRuns = float64(totalRuns(st) - runs0)
	}
	if err != nil {
		return r, err
	}
	_, tcp, err := pingPong(tcpPair, s.o.pingPongs)
	if err != nil {
		return r, fmt.Errorf("TCP ping-pong: %w", err)
	}
	_, unix, err := pingPong(unixPair, s.o.pingPongs)
	if err != nil {
		return r, fmt.Errorf("Unix ping-pong: %w", err)
	}
	r.dd, r.tcp, r.unix = dd.Seconds(), tcp.Seconds(), unix.Seconds()
	return r, nil
}
