package probes

import (
	"errors"
	"fmt"
	"os"
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
// a record waits at most PollInterval.
func DefaultConfig() Config {
	return Config{RingBufferBytes: 4 << 20, WakeupBytes: 64 << 10, PollInterval: 100 * time.Millisecond}
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
	p := &Probes{cfg: cfg}
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
		{"syscalls", "sys_enter_accept4", o.EnterAccept4},
		{"syscalls", "sys_exit_accept4", o.ExitAccept4},
		{"syscalls", "sys_enter_recvfrom", o.EnterRecvfrom},
		{"syscalls", "sys_exit_recvfrom", o.ExitRecvfrom},
		{"syscalls", "sys_enter_recvmsg", o.EnterRecvmsg},
		{"syscalls", "sys_exit_recvmsg", o.ExitRecvmsg},
		{"syscalls", "sys_enter_sendto", o.EnterSendto},
		{"syscalls", "sys_exit_sendto", o.ExitSendto},
		{"syscalls", "sys_enter_sendmsg", o.EnterSendmsg},
		{"syscalls", "sys_exit_sendmsg", o.ExitSendmsg},
		{"syscalls", "sys_enter_sendfile64", o.EnterSendfile},
		{"syscalls", "sys_exit_sendfile64", o.ExitSendfile},
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
func (p *Probes) Read(ev *Event) error {
	for {
		// Always poll as well: with batched wake-ups that is how records get read, and
		// without them it guarantees no record waits for a wake-up that never comes.
		p.reader.SetDeadline(time.Now().Add(p.cfg.PollInterval))
		err := p.reader.ReadInto(&p.rec)
		if errors.Is(err, os.ErrDeadlineExceeded) {
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
