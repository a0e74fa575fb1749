package probes

import (
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
)

// TestRequestCPU: a request's on-CPU time is the serving thread's runtime from its first read
// to its last response write (se.sum_exec_runtime, which lags a running thread by less than a
// scheduler tick): a request that spins for 50 ms shows about that, one that sleeps 50 ms shows
// almost nothing, and two requests begun on one thread before either is answered (an event
// loop's) show none, the next one alone on the thread shows its time again.
func TestRequestCPU(t *testing.T) { forEachMode(t, testRequestCPU) }

func testRequestCPU(t *testing.T, mode string) {
	runtime.LockOSThread() // the test's reads and writes: one thread, as a sync worker's
	defer runtime.UnlockOSThread()
	p := loadAsWorker(t, mode)
	io := ioFor(mode)
	rec := record(p)
	ln := tcpListen(t)
	buf := make([]byte, 4096)
	begin := func() (cl, srv int) {
		cl, srv = tcpConnect(t, ln)
		unix.Write(cl, []byte("GET /cpu HTTP/1.1\r\n\r\n"))
		if _, err := io.recv(srv, buf); err != nil {
			t.Fatal(err)
		}
		return cl, srv
	}
	answer := func(cl, srv int) {
		io.send(srv, []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"))
		io.send(srv, []byte("ok"))
		unix.Close(srv)
		unix.Close(cl)
	}
	end := func(what string) events.Event {
		t.Helper()
		got := rec.requests(t, 3*time.Second)
		if len(got) != 1 || got[0].Kind != events.KindReqEnd || got[0].Status != 200 {
			t.Fatalf("%s: %d records %+v, want one end with status 200", what, len(got), got)
		}
		return got[0]
	}
	// The spin is 50 ms of this thread's own CPU time, not of the wall clock: on a busy machine a
	// wall-clock spin gets less CPU than it lasts, and the kernel's figure rightly says so.
	spin := func(d time.Duration) {
		for start := threadCPU(t); threadCPU(t)-start < d; {
		}
	}

	before := threadCPU(t)
	cl, srv := begin()
	spin(50 * time.Millisecond)
	answer(cl, srv)
	spent := threadCPU(t) - before // what the thread ran from before the read to after the close
	// sum_exec_runtime lags a running thread by less than a scheduler tick (at most 10 ms).
	if ev := end("spinning"); ev.Flags&events.FlagCPU == 0 || ev.CPUNS < 40e6 || time.Duration(ev.CPUNS) > spent+10*time.Millisecond {
		t.Errorf("a request spinning 50 ms of CPU: flags %#x, cpu %v, want 40 ms to %v (the thread's own clock)", ev.Flags, time.Duration(ev.CPUNS), spent+10*time.Millisecond)
	} else {
		t.Logf("spinning 50 ms of CPU: cpu %v (the thread's clock: %v)", time.Duration(ev.CPUNS), spent)
	}

	cl, srv = begin()
	time.Sleep(50 * time.Millisecond)
	answer(cl, srv)
	if ev := end("sleeping"); ev.Flags&events.FlagCPU == 0 || ev.CPUNS > 10e6 {
		t.Errorf("a request sleeping 50 ms: flags %#x, cpu %v, want under 10 ms", ev.Flags, time.Duration(ev.CPUNS))
	} else {
		t.Logf("sleeping 50 ms: cpu %v", time.Duration(ev.CPUNS))
	}

	cl1, srv1 := begin()
	cl2, srv2 := begin()
	answer(cl1, srv1)
	answer(cl2, srv2)
	got := append(rec.requests(t, 3*time.Second), rec.requests(t, 3*time.Second)...)
	if len(got) != 2 {
		t.Fatalf("two requests on one thread: %d records %+v", len(got), got)
	}
	for _, ev := range got {
		if ev.Flags&events.FlagCPU != 0 {
			t.Errorf("two requests sharing a thread: one has its CPU time (%v)", time.Duration(ev.CPUNS))
		}
	}

	cl, srv = begin()
	answer(cl, srv)
	if ev := end("alone again"); ev.Flags&events.FlagCPU == 0 {
		t.Errorf("a request alone on its thread after two shared ones: flags %#x, no CPU time", ev.Flags)
	}
}

// TestRequestCPUOff: with --request-cpu=false no request carries a CPU time.
func TestRequestCPUOff(t *testing.T) {
	requireRoot(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cfg := DefaultConfig()
	cfg.Hooks = HooksSocket
	cfg.RequestCPU = false
	p := loadWorkerWith(t, cfg)
	rec := record(p)
	ln := tcpListen(t)
	cl, srv := tcpConnect(t, ln)
	unix.Write(cl, []byte("GET /cpu HTTP/1.1\r\n\r\n"))
	buf := make([]byte, 4096)
	if _, err := unix.Read(srv, buf); err != nil {
		t.Fatal(err)
	}
	unix.Write(srv, []byte("HTTP/1.1 200 OK\r\n\r\n"))
	unix.Close(srv)
	unix.Close(cl)
	got := rec.requests(t, 3*time.Second)
	if len(got) != 1 || got[0].Status != 200 {
		t.Fatalf("%d records %+v, want one end with status 200", len(got), got)
	}
	if got[0].Flags&events.FlagCPU != 0 {
		t.Errorf("request-cpu off: the request has a CPU time (%v)", time.Duration(got[0].CPUNS))
	}
}

// threadCPU is the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID).
func threadCPU(t *testing.T) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ts.Nano())
}
