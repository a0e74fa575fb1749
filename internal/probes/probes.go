package probes

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
	"golang.org/x/sys/unix"

	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// Config sizes the kernel side.
type Config struct {
	// RingBufferBytes is the ring buffer's size, a power of two and a multiple of the page size.
	RingBufferBytes uint32
	// WakeupBytes > 0 batches: the kernel never wakes the reader, which drains the ring every
	// PollInterval, and again after PollInterval/10 when a drain read a quarter of the ring or
	// more (a burst). 0 wakes the reader for every record.
	WakeupBytes uint64
	// PollInterval is how often the reader looks at the ring buffer when wake-ups are batched.
	PollInterval time.Duration // also a bound on any missed wake-up
	// Hooks is how a worker's socket calls are seen: one of HookModes. HooksAuto takes the
	// first the kernel has of HooksSocket (Linux 6.3+), HooksFentry, HooksKprobe, HooksSyscall.
	Hooks string
	// QueueWait attaches the hook that times connections in the accept queue
	// (gunicorn_request_queue_seconds): it runs on every TCP state change of the host, about
	// ten a connection. Off, that histogram stays empty.
	QueueWait bool
	// TLS loads the libssl uprobe programs (tls.go), which AttachTLS attaches to a worker, and
	// makes the socket hooks skip the ciphertext of the connections they see the plaintext of.
	TLS bool
	// TLSPerfEvents attaches perf-event uprobes (ten a worker) even where the kernel has
	// uprobe_multi links (two a worker; used from Linux 6.10, tls.go).
	TLSPerfEvents bool
	// MaxConnections is how many connections of tracked workers the kernel tracks at once
	// (TableSizes): past it, a new connection's requests are counted as dropped
	// (Dropped), and nothing tracked is evicted. 0 means DefaultMaxConnections.
	MaxConnections uint32
	// RequestCPU measures each request's on-CPU time (events.FlagCPU, Event.CPUNS): the serving
	// thread's runtime read at the request's first read and at its response writes.
	RequestCPU bool
	// Downstream counts each request's calls on the worker's own client connections, per
	// peer (events.KindDownstream), for requests served alone on their thread.
	Downstream bool
	// Object is the object to load, ObjectModern or ObjectCompat; "" (the default) chooses by
	// probing the kernel (compat.go). The tests set it to run the compat object on a kernel
	// that has the modern one's helpers.
	Object string
}

// DefaultMaxConnections is the connection table's size by default: 8,192 slots and 16,384
// entries in conns, about 9.4 MiB of kernel memory (ConnBytes a connection).
const DefaultMaxConnections = 24576

// ConnBytes is about what one tracked connection's room costs in kernel memory (a slot or
// a conns entry: the connection's state with its request line, 352 bytes, plus the hash
// table's element header), for the README's sizing.
const ConnBytes = 400

// TableSizes splits max connections into the slots (a power of two, a third of max at most,
// from 1 to GPE_CONN_SLOTS) and the conns entries (the rest, at least 1).
func TableSizes(max uint32) (slots, conns uint32) {
	if max == 0 {
		max = DefaultMaxConnections
	}
	slots = 1
	for slots*2 <= max/3 && slots*2 <= connSlotsMax {
		slots *= 2
	}
	conns = max - slots
	if max <= slots {
		conns = 1
	}
	return slots, conns
}

// connSlotsMax is GPE_CONN_SLOTS (bpf/gpe.h), the slots map's size in the object.
const connSlotsMax = 8192

// DefaultConfig is what gpe-ebpf runs with. Wake-ups are batched by default: waking the reader
// for every record cost about 50 µs of CPU per request at saturation (BENCHMARKS.md); batched,
// a record waits at most PollInterval (100 ms: a 4 MiB ring then absorbs 40 MB/s, and 400 MB/s
// in bursts). Each look costs a wake-up of the Go runtime (≈ 60 µs of CPU in the test VMs,
// ≈ 180 µs around a 2 ms drain), whatever it reads: 100 ms instead of 50 took the observer's CPU
// per request at saturation from 1.5 to 1.2 µs, and halved its cost when idle.
func DefaultConfig() Config {
	return Config{RingBufferBytes: 4 << 20, WakeupBytes: 64 << 10, PollInterval: 100 * time.Millisecond, Hooks: HooksAuto, QueueWait: true, TLS: true, MaxConnections: DefaultMaxConnections, RequestCPU: true, Downstream: true}
}

// ErrClosed is returned by Read once Close has been called (events.ErrClosed).
var ErrClosed = events.ErrClosed

// Probes owns the loaded BPF objects, their links and the ring-buffer reader. Close releases
// all of them; nothing stays loaded in the kernel after it.
type Probes struct {
	objs   gpeMaps
	coll   *ebpf.Collection         // the loaded programs (and the .bss and .rodata maps)
	progs  map[string]*ebpf.Program // coll's programs, by name
	hooks  string                   // the mode loaded: HooksSocket, HooksFentry, HooksKprobe or HooksSyscall
	object string                   // the object loaded: ObjectModern or ObjectCompat
	links  []link.Link
	cfg    Config
	rd     reader // the ring buffer's records and the Unix sweep's ends (reader.go)
	filter []byte // the kernel's tracked-process filter, mapped here (filterAdd)

	tlsMu      sync.Mutex
	tlsLinks   map[uint32][]link.Link // the TLS uprobes of each process (tls.go)
	tlsLibs    map[string]tlsLib      // what each libssl file exports, read once (tls.go)
	tlsClosing sync.WaitGroup         // DetachTLS's closes in the background
	tlsMulti   bool                   // the TLS uprobes are uprobe_multi links (tls.go)

}

// Load chooses the hook mode (cfg.Hooks, ChooseHooks), loads that mode's programs, attaches
// every hook and opens the ring-buffer reader. It fails with a wrapped error naming the hook
// that could not be attached; what was attached is released.
func Load(cfg Config) (_ *Probes, err error) {
	mode, err := ChooseHooks(cfg.Hooks, kernelHasType, kernelAttaches)
	if err != nil {
		return nil, err
	}
	if err := EnsureTracefs(); err != nil {
		return nil, err
	}
	// Before 5.11 the kernel charges BPF maps to RLIMIT_MEMLOCK (64 KiB by default): lift it
	// there. rlimit probes for the memory-cgroup accounting and changes nothing where it exists.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("lift RLIMIT_MEMLOCK for the BPF maps: %w", err)
	}
	// The object: the modern one where the kernel has every helper it calls, else the compat
	// one (compat.go), chosen by probing, not by the kernel's version.
	object := cfg.Object
	switch object {
	case "":
		if object, err = chooseObject(features.HaveProgramHelper); err != nil {
			return nil, err
		}
	case ObjectModern, ObjectCompat:
	default:
		return nil, fmt.Errorf("unknown BPF object %q (want %s or %s)", object, ObjectModern, ObjectCompat)
	}
	if cfg.TLS {
		ok, err := haveAttachCookie()
		if err != nil {
			return nil, fmt.Errorf("probe the kernel for bpf_get_attach_cookie: %w", err)
		}
		// The TLS uprobes need it (before 5.15): without, TLS is off, as --tls-uprobes=false.
		cfg.TLS = ok
	}
	spec, err := loadObject(object)
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	if err := configure(spec, cfg, object); err != nil {
		return nil, err
	}
	// Only this mode's programs are loaded (the other mode's may name a tracepoint this
	// kernel does not have); every map serves both.
	hooks, err := hooksOf(mode, kernelHasType)
	if err != nil {
		return nil, err
	}
	// on_tcp_destroy (once a socket) sees every connection's end. With QueueWait, on_tcp_state
	// (every TCP state change) stamps the accept queue and sees the end first, at CLOSE; the
	// kernel skips a run of it that would nest in another on the same CPU (a softirq's CLOSE
	// during a process's state change), and on_tcp_destroy then ends the request instead.
	if !cfg.QueueWait {
		hooks = slices.DeleteFunc(hooks, func(h hook) bool { return h.prog == gpeProgOnTcpState })
	}
	keep := make(map[string]bool)
	for _, h := range hooks {
		keep[h.prog] = true
	}
	multi := cfg.TLS && !cfg.TLSPerfEvents && haveUprobeMulti()
	if cfg.TLS {
		for _, name := range tlsPrograms(multi) {
			keep[name] = true
		}
	}
	for name := range spec.Programs {
		if !keep[name] {
			delete(spec.Programs, name)
		}
	}
	p := &Probes{cfg: cfg, hooks: mode, object: object, tlsLinks: map[uint32][]link.Link{}, tlsMulti: multi}
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		var verr *ebpf.VerifierError
		if errors.As(err, &verr) {
			return nil, fmt.Errorf("load bpf objects (%s hooks): %+v", mode, verr)
		}
		return nil, fmt.Errorf("load bpf objects (%s hooks): %w", mode, err)
	}
	p.coll, p.progs = coll, coll.Programs
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if err := coll.Assign(&p.objs); err != nil {
		return nil, fmt.Errorf("load bpf maps: %w", err)
	}

	p.filter, err = unix.Mmap(p.objs.Filter.FD(), 0, int(unsafe.Sizeof(gpeFilter{})), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map the process filter: %w", err)
	}
	for _, h := range hooks {
		l, err := h.attach(p.progs[h.prog])
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", h.name, err)
		}
		p.links = append(p.links, l)
	}
	rd, err := ringbuf.NewReader(p.objs.Events)
	if err != nil {
		return nil, fmt.Errorf("create ring buffer reader: %w", err)
	}
	p.rd = reader{
		ring:  newRing(rd, cfg, spec.Maps["events"].MaxEntries),
		sweep: unixSweep{conns: connMap{p.objs.Conns}, proc: proc.Host, clock: events.MonotonicNow},
	}
	return p, nil
}

// configure sizes spec's maps and sets its load-time constants from cfg. The compat object
// claims no slot (it has no compare-and-swap): conns holds every connection there.
func configure(spec *ebpf.CollectionSpec, cfg Config, object string) error {
	if cfg.RingBufferBytes != 0 {
		spec.Maps["events"].MaxEntries = cfg.RingBufferBytes
	}
	slots, conns := TableSizes(cfg.MaxConnections)
	if object == ObjectCompat {
		slots, conns = 1, slots+conns
	}
	spec.Maps["slots"].MaxEntries = slots
	spec.Maps["conns"].MaxEntries = conns
	for name, v := range map[string]any{
		"wakeup_bytes": cfg.WakeupBytes,
		"tls_on":       boolU32(cfg.TLS),
		"slot_mask":    slots - 1,
		"queue_wait":   boolU32(cfg.QueueWait),
		"request_cpu":  boolU32(cfg.RequestCPU),
		"downstream":   boolU32(cfg.Downstream),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return fmt.Errorf("set %s: %w", name, err)
		}
	}
	return nil
}

// Track adds a process to the kernel's table so that its forks, signals, exit and (for a
// worker) connections are observed.
func (p *Probes) Track(tgid, master uint32, kind events.ProcKind) error {
	v := gpeProcInfo{Master: master, Kind: uint32(kind)}
	// As in the kernel (track in gpe.bpf.c): the filter counts the process before the table
	// holds it, and the count is given back if it was there already.
	p.filterAdd(tgid, 1)
	for {
		err := p.objs.Procs.Update(tgid, v, ebpf.UpdateNoExist)
		if err == nil {
			return nil
		}
		if errors.Is(err, ebpf.ErrKeyExist) {
			// Keep what the kernel counted of it (a worker its master's fork already added).
			var had gpeProcInfo
			if p.objs.Procs.Lookup(tgid, &had) == nil {
				v.Inflight, v.BusySince, v.BusyNs = had.Inflight, had.BusySince, had.BusyNs
			}
			if err = p.objs.Procs.Update(tgid, v, ebpf.UpdateExist); err == nil {
				p.filterAdd(tgid, -1)
				return nil
			}
			if errors.Is(err, ebpf.ErrKeyNotExist) {
				continue // it exited between the two updates
			}
		}
		p.filterAdd(tgid, -1)
		return fmt.Errorf("track %d: %w", tgid, err)
	}
}

// Occupancy reads tgid's figures; false if the kernel does not track it (any more).
func (p *Probes) Occupancy(tgid uint32) (events.Occupancy, bool) {
	var v gpeProcInfo
	if err := p.objs.Procs.Lookup(tgid, &v); err != nil {
		return events.Occupancy{}, false
	}
	return events.Occupancy{InFlight: v.Inflight, BusyNS: v.BusyNs, BusySince: v.BusySince}, true
}

// Untrack removes a process from the kernel's table; a process that is not there is no error.
func (p *Probes) Untrack(tgid uint32) error {
	err := p.objs.Procs.Delete(tgid)
	if err == nil {
		p.filterAdd(tgid, -1)
		return nil
	}
	if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("untrack %d: %w", tgid, err)
	}
	return nil
}

// SetListenPorts makes ports the TCP ports of the tracked masters' listeners: a connection
// established to one of them is timed until a worker's first read of it, the wait in the
// accept queue (KindReqStart's EstablishedNS). Any other port is not.
func (p *Probes) SetListenPorts(ports []uint16) error {
	var v gpeListenPorts
	for _, port := range ports {
		v.On[port] = 1
	}
	if err := p.objs.ListenPorts.Update(uint32(0), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("set listening ports: %w", err)
	}
	return nil
}

// filterAdd changes the count of tracked processes in tgid's slot of the kernel's filter, with
// the same atomic add the BPF programs use on it.
func (p *Probes) filterAdd(tgid uint32, d int32) {
	slot := (*uint32)(unsafe.Pointer(&p.filter[4*(tgid%uint32(len(gpeFilter{}.N)))]))
	atomic.AddUint32(slot, uint32(d))
}

// Read blocks until the next event and decodes it into ev. It returns ErrClosed after Close.
// The events are the ring buffer's records, read at the pace ring describes (ring.go), and
// the ends of requests on Unix connections that were closed (unixsweep.go).
func (p *Probes) Read(ev *events.Event) error { return p.rd.read(ev) }

// Lost is the number of records the kernel side could not submit, summed over CPUs.
func (p *Probes) Lost() (uint64, error) {
	n, err := sumPerCPU(p.objs.Lost, 0)
	if err != nil {
		return 0, fmt.Errorf("read lost counter: %w", err)
	}
	return n, nil
}

// sumPerCPU is entry key of a per-CPU array of counters, summed over CPUs.
func sumPerCPU(m *ebpf.Map, key uint32) (uint64, error) {
	var perCPU []uint64
	if err := m.Lookup(key, &perCPU); err != nil {
		return 0, err
	}
	var n uint64
	for _, v := range perCPU {
		n += v
	}
	return n, nil
}

// DropReasons names the kernel's drop counters (enum gpe_drop_reason), for
// gpe_ebpf_connections_dropped_total{reason}.
var DropReasons = [...]string{gpeGpeDropReasonGPE_DROP_TABLE_FULL: "table_full", gpeGpeDropReasonGPE_DROP_TLS_UNTIED: "tls_untied", gpeGpeDropReasonGPE_DROP_PEERS: "peers"}

// Dropped is what the kernel side dropped, by reason (DropReasons), summed over CPUs.
func (p *Probes) Dropped() (map[string]uint64, error) {
	out := make(map[string]uint64, len(DropReasons))
	for i, name := range DropReasons {
		n, err := sumPerCPU(p.objs.Drops, uint32(i))
		if err != nil {
			return nil, fmt.Errorf("read drop counter %s: %w", name, err)
		}
		out[name] = n
	}
	return out, nil
}

// Hooks is the hook mode that was loaded: HooksSocket, HooksFentry, HooksKprobe or HooksSyscall.
func (p *Probes) Hooks() string { return p.hooks }

// Object is the object loaded: ObjectModern or ObjectCompat (compat.go).
func (p *Probes) Object() string { return p.object }

// ProgramIDs lists the IDs of the loaded programs, so a test can check none outlives Close.
func (p *Probes) ProgramIDs() []ebpf.ProgramID {
	var ids []ebpf.ProgramID
	for _, prog := range p.progs {
		if info, err := prog.Info(); err == nil {
			if id, ok := info.ID(); ok {
				ids = append(ids, id)
			}
		}
	}
	return ids
}

// ProgramStat is a loaded program's counters, as the kernel keeps them: Runs and Runtime while
// kernel.bpf_stats_enabled is 1, Misses always.
type ProgramStat struct {
	Name    string        // the program's name in bpf/gpe.bpf.c
	Runs    uint64        // times it ran
	Runtime time.Duration // CPU time it ran for
	Misses  uint64        // runs the kernel skipped: one would have nested in another on its CPU
}

// ProgramStats returns the counters of every loaded program, sorted by name, and on: whether
// the kernel counts runs now. While kernel.bpf_stats_enabled is 0 (the default: counting costs
// two clock reads per run) Runs and Runtime stand still at 0; Misses are counted always.
func (p *Probes) ProgramStats() (stats []ProgramStat, on bool, err error) {
	on, err = proc.Host.BPFStatsEnabled()
	if err != nil {
		return nil, false, err
	}
	names := make([]string, 0, len(p.progs))
	for name := range p.progs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		st, err := p.progs[name].Stats()
		if err != nil {
			return nil, true, fmt.Errorf("program %s: %w", name, err)
		}
		s := ProgramStat{Name: name, Misses: st.RecursionMisses}
		if on {
			s.Runs, s.Runtime = st.RunCount, st.Runtime
		}
		stats = append(stats, s)
	}
	return stats, on, nil
}

// Close closes the reader first (so a blocked Read returns), then detaches every link and
// closes every program and map.
func (p *Probes) Close() error {
	var errs []error
	if p.rd.ring != nil {
		errs = append(errs, p.rd.ring.close())
	}
	errs = append(errs, p.closeTLS())
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	p.links = nil
	if p.filter != nil {
		errs = append(errs, unix.Munmap(p.filter))
		p.filter = nil
	}
	errs = append(errs, p.objs.Close())
	if p.coll != nil {
		p.coll.Close()
		p.coll = nil
	}
	return errors.Join(errs...)
}

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}
