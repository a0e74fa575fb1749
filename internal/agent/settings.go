package agent

import (
	"errors"
	"fmt"
	"time"

	"github.com/gpe-ebpf/gpe-ebpf/internal/aggregate"
	"github.com/gpe-ebpf/gpe-ebpf/internal/setting"
)

// Settings are the rows of c: the target, sampling, and the aggregate's.
func Settings(c *Config) []setting.Setting {
	pid := int(c.PID) // an int on the command line, so that -3 is refused by name
	rows := []setting.Setting{
		{Name: "pid", Group: setting.Attaching, Value: setting.Int(&pid),
			Help:  "PID of the Gunicorn master to observe",
			Check: func(string) error { return c.setTarget(pid) }},
		{Name: "pid-file", Group: setting.Attaching, Value: setting.String(&c.PIDFile),
			Help: "file holding the master's PID, re-read to follow a replaced master"},
		{Name: "discover", Group: setting.Attaching, Value: setting.Bool(&c.Discover),
			Help: "observe every Gunicorn master on the host (adds the master_pid label)"},
		{Name: "force", Group: setting.Attaching, Value: setting.Bool(&c.Force),
			Help: "attach even if the process does not look like a Gunicorn master"},
	}
	rows = append(rows, aggregate.Settings(&c.Aggregate)...)
	rows = append(rows, setting.Setting{Name: "worker-timeout", Group: setting.Metrics, Value: setting.Duration(&c.WorkerTimeout),
		Help: "the masters' worker timeout (Gunicorn's --timeout) where their command line does not say it (a config file); exported as gunicorn_master_timeout_seconds",
		Check: func(name string) error {
			return setting.Require(c.WorkerTimeout >= 0, "invalid %s: must not be negative", name)
		}})
	return append(rows, setting.Setting{Name: "sample-interval", Group: setting.Metrics, Value: setting.Duration(&c.SampleInterval),
		Help: "how often worker memory and CPU are sampled",
		Check: func(name string) error {
			return setting.Require(c.SampleInterval >= 100*time.Millisecond, "invalid %s: at least 100ms", name)
		}})
}

// setTarget checks that exactly one of --pid, --pid-file and --discover is given, and stores
// pid.
func (c *Config) setTarget(pid int) error {
	modes := 0
	for _, set := range []bool{pid != 0, c.PIDFile != "", c.Discover} {
		if set {
			modes++
		}
	}
	switch {
	case modes == 0:
		return errors.New("one of --pid, --pid-file or --discover is required (see --help)")
	case modes > 1:
		return errors.New("--pid, --pid-file and --discover are exclusive")
	case pid < 0 || pid > 1<<22:
		return fmt.Errorf("invalid --pid %d", pid)
	}
	c.PID = uint32(pid)
	return nil
}
