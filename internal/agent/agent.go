package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/events"
	"github.com/gpe-ebpf/gpe-ebpf/internal/h2"
	"github.com/gpe-ebpf/gpe-ebpf/internal/proc"
)

// Kernel is what the agent needs of the kernel side: *probes.Probes, or a fake in tests.
type Kernel interface {
	// Track adds a process to the kernel's table, as a master or as a worker of master.
	Track(tgid, master uint32, kind events.ProcKind) error
	// Untrack removes a process from the kernel's table.
	Untrack(tgid uint32) error
	// SetListenPorts sets the TCP ports whose connections are timed in the accept queue.
	SetListenPorts(ports []uint16) error
	// Occupancy is a tracked worker's requests in flight and busy time, as the kernel
	// counts them; false if it is not tracked.
	Occupancy(tgid uint32) (events.Occupancy, bool)
	// Read blocks until the next event; it returns events.ErrClosed after Close.
	Read(ev *events.Event) error
	// Close releases the kernel side and makes a blocked Read return.
	Close() error
}

// Config is what the agent observes and how often it looks at /proc.
type Config struct {
	// PID is the master to observe (--pid); 0 when another mode is used.
	PID uint32
	// PIDFile holds the master's PID (--pid-file); it is re-read every RescanInterval to
	// follow a replaced master.
	PIDFile string
	// Discover observes every Gunicorn master on the host (--discover).
	Discover bool
	// Force attaches to a process that does not look like a Gunicorn master (--force).
	Force bool
	// SampleInterval is how often workers' memory and CPU are sampled (--sample-interval).
	SampleInterval time.Duration
	// RescanInterval is how often the pid file is re-read, the host scanned for masters
	// (--discover) and masters whose exit was not seen are dropped.
	RescanInterval time.Duration
	// WorkerTimeout is the masters' worker timeout where their command line does not say it
	// (--worker-timeout; 0: not known then).
	WorkerTimeout time.Duration
	// ProcRoot is where /proc is mounted: "/proc", or a fixture in tests.
	ProcRoot string
	// Aggregate configures the aggregator the agent feeds.
	Aggregate aggregate.Config
}

// DefaultConfig returns the defaults of README "Configuration", with no target.
func DefaultConfig() Config {
	return Config{
		SampleInterval: 5 * time.Second,
		RescanInterval: 2 * time.Second,
		ProcRoot:       proc.Host.Root,
		Aggregate:      aggregate.DefaultConfig(),
	}
}

// TargetError is a target gpe-ebpf cannot observe: a PID that names no process, a process
// that is not a Gunicorn master, a pid file without a PID. main exits 2 on it.
type TargetError struct{ Err error }

func (e *TargetError) Error() string { return e.Err.Error() }
func (e *TargetError) Unwrap() error { return e.Err }

func targetf(format string, a ...any) error { return &TargetError{fmt.Errorf(format, a...)} }

// Agent tracks the masters Config names through a Kernel and feeds their events to an
// aggregate.Aggregator. Build it with New, then Attach, then Run.
type Agent struct {
	cfg        Config
	log        *slog.Logger
	proc       proc.FS
	agg        *aggregate.Aggregator
	k          Kernel
	first      []proc.Info     // the masters New checked, attached by Attach
	portsOf    []uint32        // the masters whose listening ports the kernel was last given (watchListeners)
	portsKnown bool            // portsOf is set
	orphans    map[uint32]bool // workers whose master exited, seen by discover (logged once)
	tls        tlsPolicy       // which masters serve TLS (tls.go)
	heartbeats *heartbeats     // where the workers' heartbeats are read (heartbeat.go)
	children   newChildren     // children of masters that may turn out to be dirty arbiters (dirty.go)
	h2         *h2.Decoder     // HTTP/2 connections' records, decoded into request ends (read's loop only)

	// masterGone carries masters that exited, to Run's loop, which decides what follows.
	masterGone chan uint32
}

// New checks the target Config names, before anything touches the kernel: a *TargetError
// when it is not a Gunicorn master (unless Force) or the pid file names none.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = proc.Host.Root
	}
	a := &Agent{
		cfg: cfg, log: log, proc: proc.FS{Root: cfg.ProcRoot}, agg: aggregate.New(cfg.Aggregate),
		masterGone: make(chan uint32, 16),
	}
	a.heartbeats = newHeartbeats(a.proc)
	a.h2 = h2.New(a.agg.Handle)
	pid := cfg.PID
	if cfg.PIDFile != "" {
		var err error
		if pid, err = readPIDFile(cfg.PIDFile); err != nil {
			return nil, &TargetError{err}
		}
	}
	if pid != 0 {
		info, err := a.checkTarget(pid)
		if err != nil {
			return nil, err
		}
		a.first = append(a.first, info)
	}
	return a, nil
}

// Aggregator is the state the agent feeds, for the exporter.
func (a *Agent) Aggregator() *aggregate.Aggregator { return a.agg }

// Masters lists the PIDs of the observed masters (the Redis metadata's masters).
func (a *Agent) Masters() []int {
	var out []int
	for _, m := range a.agg.Masters() {
		out = append(out, int(m))
	}
	return out
}

// Attach tracks the target New checked, with the workers it already has, and with
// Discover every Gunicorn master on the host. It returns before Run so that metrics are
// served only once the first master is observed (README "Attaching").
func (a *Agent) Attach(k Kernel) error {
	a.k = k
	a.agg.SetOccupancy(k.Occupancy)
	a.agg.SetHeartbeat(a.heartbeats.read)
	a.agg.SetUnixPaths(a.proc.UnixPaths)
	for _, info := range a.first {
		if err := a.attach(info); err != nil {
			return err
		}
	}
	if a.cfg.Discover {
		a.discover()
	}
	a.watchListeners()
	return nil
}

// Run turns the kernel's events into aggregate updates, samples the workers and follows
// the masters until ctx is done (nil), the last master exited with nothing to wait for
// (nil: --pid; --pid-file waits for a new master and --discover keeps scanning), or the
// kernel's reader stopped (an error). It closes the Kernel before it returns.
func (a *Agent) Run(ctx context.Context) error {
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		a.read()
	}()
	// Close the reader first so a blocked Read returns, then wait for it.
	defer func() {
		a.k.Close()
		<-readerDone
	}()

	sampler := proc.NewSampler()
	a.sample(sampler)
	sample := time.NewTicker(a.cfg.SampleInterval)
	defer sample.Stop()
	rescan := time.NewTicker(a.cfg.RescanInterval)
	defer rescan.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-readerDone:
			return errors.New("ring buffer reader stopped")
		case <-sample.C:
			a.sample(sampler)
			a.agg.Expire()
		case <-rescan.C:
			a.dropGoneMasters()
			a.findDirtyArbiters()
			if a.cfg.Discover {
				a.discover()
			}
			if a.cfg.PIDFile != "" {
				a.followPIDFile()
			}
			a.watchListeners()
		case pid := <-a.masterGone:
			a.log.Info("master exited", "master_pid", pid)
			if len(a.agg.Masters()) > 0 || a.cfg.Discover {
				continue
			}
			if a.cfg.PIDFile != "" {
				a.log.Info("waiting for the pid file to name a new master", "pid_file", a.cfg.PIDFile)
				continue
			}
			a.log.Info("no master left to observe, exiting")
			return nil
		}
	}
}

// checkTarget refuses a PID that is not a Gunicorn master (unless Force).
func (a *Agent) checkTarget(pid uint32) (proc.Info, error) {
	info, err := a.proc.Read(pid)
	if errors.Is(err, proc.ErrNoProcess) {
		return info, targetf("pid %d: no such process", pid)
	}
	if err != nil {
		return info, targetf("pid %d: %v", pid, err)
	}
	if a.cfg.Force {
		return info, nil
	}
	return info, a.checkMaster(info)
}

func shortCmd(c []string) string {
	s := strings.Join(c, " ")
	if len(s) > 60 {
		s = s[:60] + "…"
	}
	if s == "" {
		s = "no command line"
	}
	return s
}

// readPIDFile reads a Gunicorn pid file.
func readPIDFile(path string) (uint32, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("--pid-file: %w", err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("--pid-file %s: no PID in it (%q)", path, strings.TrimSpace(string(b)))
	}
	return uint32(n), nil
}
