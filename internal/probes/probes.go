package probes

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
)

// Config sizes the kernel side.
type Config struct {
	// RingBufferBytes is the ring buffer's size, a power of two and a multiple of the page size.
	RingBufferBytes uint32
	// WakeupBytes batches wake-ups: the reader is woken only once this many bytes wait, and
	// PollInterval bounds how long a record can wait. 0 wakes the reader for every record.
	WakeupBytes uint64
	// PollInterval is how often the reader looks at the ring buffer when wake-ups are batched.
	PollInterval time.Duration // also a bound on any missed wake-up
}

// DefaultConfig is what gpe-ebpf runs with. Wake-ups are batched by default: waking the reader
// for every record cost about 50 µs of CPU per request at saturation (BENCHMARKS.md); batched,
// a record waits at most PollInterval (50 ms: a 4 MiB ring then absorbs 80 MB/s).
func DefaultConfig() Config {
	return Config{RingBufferBytes: 4 << 20, WakeupBytes: 64 << 10, PollInterval: 50 * time.Millisecond}
}

// ErrClosed is returned by Read once Close has been called.
var ErrClosed = errors.New("probes closed")

// Probes owns the loaded BPF objects, their links and the ring-buffer reader. Close releases
// all of them; nothing stays loaded in the kernel after it.
type Probes struct {
	objs   gpeObjects
	links  []link.Link
	reader *ringbuf.Reader
	rec    ringbuf.Record
	cfg    Config
	tick   *time.Ticker  // batched mode: when to look at the ring again
	closed chan struct{} // closed by Close, so a Read sleeping on tick returns
	once   sync.Once
}

type attachment struct {
	group, name string // a tracepoint, or a BTF tracepoint when group is ""
	prog        *ebpf.Program
}

// Load loads the programs, attaches every hook and opens the ring-buffer reader. It fails with a
// wrapped error naming the hook that could not be attached; what was attached is released.
func Load(cfg Config) (_ *Probes, err error) {
	if err := EnsureTracefs(); err != nil {
		return nil, err
	}
	spec, err := loadGpe()
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	if cfg.RingBufferBytes != 0 {
		spec.Maps["events"].MaxEntries = cfg.RingBufferBytes
	}
	if err := spec.Variables["wakeup_bytes"].Set(cfg.WakeupBytes); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	p := &Probes{cfg: cfg, closed: make(chan struct{})}
	if err := spec.LoadAndAssign(&p.objs, nil); err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load bpf objects: %+v", verr)
		}
		return nil, fmt.Errorf("load bpf objects: %w", err)
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()

	o := &p.objs
	hooks := []attachment{
		{"", "sched_process_fork", o.OnFork},
		{"", "sched_process_exec", o.OnExec},
		{"", "sched_process_exit", o.OnExit},
		{"", "signal_generate", o.OnSignal},
		{"oom", "mark_victim", o.OnOom},
		{"syscalls", "sys_enter_accept", o.EnterAccept},
		{"syscalls", "sys_exit_accept", o.ExitAccept},
		{"syscalls", "sys_enter_accept4", o.EnterAccept},
		{"syscalls", "sys_exit_accept4", o.ExitAccept},
		{"syscalls", "sys_enter_recvfrom", o.EnterRecvfrom},
		{"syscalls", "sys_exit_recvfrom", o.ExitIo},
		{"syscalls", "sys_enter_recvmsg", o.EnterRecvmsg},
		{"syscalls", "sys_exit_recvmsg", o.ExitIo},
		{"syscalls", "sys_enter_sendto", o.EnterSendto},
		{"syscalls", "sys_exit_sendto", o.ExitIo},
		{"syscalls", "sys_enter_sendmsg", o.EnterSendmsg},
		{"syscalls", "sys_exit_sendmsg", o.ExitIo},
		{"syscalls", "sys_enter_sendfile64", o.EnterSendfile},
		{"syscalls", "sys_exit_sendfile64", o.ExitIo},
		{"syscalls", "sys_enter_close", o.EnterClose},
		{"syscalls", "sys_enter_shutdown", o.EnterShutdown},
	}
	for _, h := range hooks {
		var l link.Link
		if h.group == "" {
			l, err = link.AttachTracing(link.TracingOptions{Program: h.prog})
		} else {
			l, err = link.Tracepoint(h.group, h.name, h.prog, nil)
		}
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", h.name, err)
		}
		p.links = append(p.links, l)
	}
	p.reader, err = ringbuf.NewReader(o.Events)
	if err != nil {
		return nil, fmt.Errorf("create ring buffer reader: %w", err)
	}
	if cfg.WakeupBytes > 0 {
		// A deadline in the past makes every wait a non-blocking poll (see Read).
		p.reader.SetDeadline(time.Unix(1, 0))
		p.tick = time.NewTicker(cfg.PollInterval)
	}
	return p, nil
}

// Track adds a process to the kernel's table so that its forks, signals, exit and (for a
// worker) connections are observed.
func (p *Probes) Track(tgid, master uint32, kind ProcKind) error {
	v := gpeProcInfo{Master: master, Kind: uint32(kind)}
	if err := p.objs.Procs.Put(tgid, v); err != nil {
		return fmt.Errorf("track %d: %w", tgid, err)
	}
	return nil
}

// Untrack removes a process from the kernel's table; a process that is not there is no error.
func (p *Probes) Untrack(tgid uint32) error {
	if err := p.objs.Procs.Delete(tgid); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untrack %d: %w", tgid, err)
	}
	return nil
}

// Read blocks until the next record and decodes it into ev. It returns ErrClosed after Close.
//
// With batched wake-ups (WakeupBytes > 0) the reader never waits in a blocking syscall: it
// drains what the ring holds with a non-blocking poll, then sleeps on a Go timer for
// PollInterval. A thread parked in epoll_wait holding a P kept Go's sysmon waking every
// 20 µs after each long wait (about a third of gpe-ebpf's CPU at saturation, perf); a timer
// sleep releases the P. Without batching, Read waits for the kernel's wake-up, polling every
// PollInterval so that no record can wait for a wake-up that never comes.
func (p *Probes) Read(ev *Event) error {
	for {
		if p.cfg.WakeupBytes == 0 {
			p.reader.SetDeadline(time.Now().Add(p.cfg.PollInterval))
		}
		err := p.reader.ReadInto(&p.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			if p.cfg.WakeupBytes > 0 {
				select {
				case <-p.closed:
					return ErrClosed
				case <-p.tick.C:
				}
			}
			continue
		}
		if errors.Is(err, ringbuf.ErrClosed) {
			return ErrClosed
		}
		if err != nil {
			return fmt.Errorf("read ring buffer: %w", err)
		}
		return Decode(p.rec.RawSample, ev)
	}
}

// Lost is the number of records the kernel side could not submit, summed over CPUs.
func (p *Probes) Lost() (uint64, error) {
	var perCPU []uint64
	if err := p.objs.Lost.Lookup(uint32(0), &perCPU); err != nil {
		return 0, fmt.Errorf("read lost counter: %w", err)
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// ProgramIDs lists the IDs of the loaded programs, so a test can check none outlives Close.
func (p *Probes) ProgramIDs() []ebpf.ProgramID {
	var ids []ebpf.ProgramID
	for _, prog := range []*ebpf.Program{p.objs.OnFork, p.objs.OnExit, p.objs.EnterRecvfrom} {
		if info, err := prog.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// Close closes the reader first (so a blocked Read returns), then detaches every link and
// closes every program and map.
func (p *Probes) Close() error {
	var errs []error
	p.once.Do(func() {
		close(p.closed)
		if p.tick != nil {
			p.tick.Stop()
		}
	})
	if p.reader != nil {
		errs = append(errs, p.reader.Close())
	}
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}
