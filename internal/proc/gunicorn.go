package proc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// A master's Gunicorn settings that gpe-ebpf needs (how many requests a worker serves at once,
// the worker timeout), as its command line and GUNICORN_CMD_ARGS say them, and a worker's
// heartbeat file. Gunicorn applies its defaults, then a config file, then GUNICORN_CMD_ARGS,
// then the command line: what the last two say is certain, what they leave out is Gunicorn's
// default only when no config file can change it.

// Gunicorn's defaults of the settings below (gunicorn/config.py).
const (
	DefaultTimeout           = 30 * time.Second
	DefaultWorkerConnections = 1000
)

// GunicornSettings is what a master's command line and GUNICORN_CMD_ARGS say; a field the
// two leave out is -1 ("" for the worker class).
type GunicornSettings struct {
	WorkerClass       string // -k/--worker-class as given
	Threads           int    // --threads
	WorkerConnections int    // --worker-connections
	Timeout           int    // -t/--timeout, seconds (0: no timeout)
	// ConfigFile says that a config file may set what the two leave out: -c/--config names
	// one, or gunicorn.conf.py is in the master's working directory (Gunicorn reads it by
	// default), or the command line is a setproctitle title that hides the arguments.
	ConfigFile bool
}

// Capacity is how many requests a worker of this master serves at once: 1 for a sync worker,
// its threads for gthread (a sync worker with more than one thread is gthread, as Gunicorn
// makes it), its worker connections for the classes that multiplex requests on one thread
// (gevent, eventlet, tornado, ASGI). What is not said is Gunicorn's default (sync, one
// thread, 1000 connections), which is what a config file could change.
func (s GunicornSettings) Capacity() int {
	class := s.WorkerClass
	if class == "" {
		class = "sync"
	}
	sync := class == "sync" || strings.HasSuffix(class, "SyncWorker")
	threaded := class == "gthread" || strings.HasSuffix(class, "ThreadWorker") || class == "egg:gunicorn#gthread"
	switch {
	case (sync || threaded) && s.Threads > 1:
		return s.Threads
	case sync || threaded || class == "egg:gunicorn#sync":
		return 1
	case s.WorkerConnections > 0:
		return s.WorkerConnections
	default:
		return DefaultWorkerConnections
	}
}

// WorkerTimeout is the master's worker timeout and whether it is known: said by the command
// line or GUNICORN_CMD_ARGS, or Gunicorn's default when no config file can change it. A
// timeout of 0 (Gunicorn then kills no worker for silence) is known and 0.
func (s GunicornSettings) WorkerTimeout() (time.Duration, bool) {
	switch {
	case s.Timeout >= 0:
		return time.Duration(s.Timeout) * time.Second, true
	case !s.ConfigFile:
		return DefaultTimeout, true
	default:
		return 0, false
	}
}

// Gunicorn reads what a master says of its settings: its command line, GUNICORN_CMD_ARGS
// from its environment, and whether a config file may say more.
func (fs FS) Gunicorn(pid uint32) (GunicornSettings, error) {
	info, err := fs.Read(pid)
	if err != nil {
		return GunicornSettings{}, err
	}
	env, _ := fs.Environ(pid, "GUNICORN_CMD_ARGS")
	s := ParseGunicornArgs(info.Cmdline, env)
	if !s.ConfigFile {
		// Gunicorn's default config file, relative to the master's working directory (through
		// /proc, so a master in a container is looked at in its own file system).
		if _, err := os.Stat(filepath.Join(fs.pidDir(pid), "cwd", "gunicorn.conf.py")); !errors.Is(err, os.ErrNotExist) {
			s.ConfigFile = true // there, or cannot tell
		}
	}
	return s, nil
}

// Environ returns the value of the variable name in process pid's initial environment.
func (fs FS) Environ(pid uint32, name string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(fs.pidDir(pid), "environ"))
	if err != nil {
		return "", false
	}
	for _, kv := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(kv, name+"="); ok {
			return v, true
		}
	}
	return "", false
}

// ParseGunicornArgs reads the settings from a master's command line and the value of
// GUNICORN_CMD_ARGS (split as a shell would); the command line wins, as in Gunicorn.
func ParseGunicornArgs(cmdline []string, envArgs string) GunicornSettings {
	s := GunicornSettings{Threads: -1, WorkerConnections: -1, Timeout: -1}
	if len(cmdline) > 0 && cmdline[0] == "gunicorn:" {
		s.ConfigFile = true // a title: the arguments are not to be seen
	}
	s.parse(shellSplit(envArgs))
	s.parse(gunicornArgs(cmdline))
	return s
}

// gunicornArgs are the arguments Gunicorn parses: those after the gunicorn script or after
// -m gunicorn.
func gunicornArgs(c []string) []string {
	for i, a := range c {
		switch {
		case gunicornScript(a):
			return c[i+1:]
		case a == "-m" && i+1 < len(c) && gunicornModule(c[i+1]) != NotGunicorn:
			return c[i+2:]
		case strings.HasPrefix(a, "-m") && gunicornModule(a[2:]) != NotGunicorn:
			return c[i+1:]
		}
	}
	return nil
}

// parse applies the options of args that it knows, the last one winning as with argparse.
func (s *GunicornSettings) parse(args []string) {
	for i := 0; i < len(args); i++ {
		opt, val, joined := splitOption(args[i])
		if opt == "" {
			continue // a positional argument
		}
		if !joined {
			if !takesValue(opt) || i+1 >= len(args) {
				continue
			}
			i++
			val = args[i]
		}
		n, err := strconv.Atoi(val)
		switch opt {
		case "-k", "--worker-class":
			s.WorkerClass = val
		case "-c", "--config":
			s.ConfigFile = true
		case "-t", "--timeout":
			if err == nil && n >= 0 {
				s.Timeout = n
			}
		case "--threads":
			if err == nil && n > 0 {
				s.Threads = n
			}
		case "--worker-connections":
			if err == nil && n > 0 {
				s.WorkerConnections = n
			}
		}
	}
}

// splitOption splits "--opt=value" and "-ovalue"; opt is "" for an argument that is no
// option.
func splitOption(a string) (opt, val string, joined bool) {
	switch {
	case strings.HasPrefix(a, "--"):
		if o, v, ok := strings.Cut(a, "="); ok {
			return o, v, true
		}
		return a, "", false
	case strings.HasPrefix(a, "-") && len(a) > 2:
		return a[:2], a[2:], true
	case strings.HasPrefix(a, "-") && len(a) == 2:
		return a, "", false
	}
	return "", "", false
}

// shellSplit splits a GUNICORN_CMD_ARGS value into words as Gunicorn's shlex.split does, for
// the quoting a value needs: single and double quotes, and backslash outside single quotes.
func shellSplit(s string) []string {
	var words []string
	var w strings.Builder
	in := false // inside a word
	var quote rune
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			w.WriteRune(r)
			escaped = false
		case r == '\\' && quote != '\'':
			escaped, in = true, true
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if in {
				words = append(words, w.String())
				w.Reset()
				in = false
			}
		default:
			w.WriteRune(r)
			in = true
		}
	}
	if in {
		words = append(words, w.String())
	}
	return words
}

// HeartbeatPrefix begins the name of a worker's heartbeat file: Gunicorn's WorkerTmp, a
// temporary file made by the master before it forks the worker and unlinked at once, which
// the worker touches (fchmod in Gunicorn 20.1, utime in later versions) and whose change
// time the master checks against its timeout.
const HeartbeatPrefix = "wgunicorn-"

// ErrNoHeartbeat is returned when a process holds no heartbeat file open.
var ErrNoHeartbeat = errors.New("no heartbeat file open")

// HeartbeatFD finds the fd of process pid's heartbeat file among its open fds. A worker
// closes its siblings' files right after its fork; should it hold several, its own is the
// newest, made just before the fork: the highest fd.
func (fs FS) HeartbeatFD(pid uint32) (int, error) {
	dir := filepath.Join(fs.pidDir(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return -1, fmt.Errorf("read fds: %w", err)
	}
	best := -1
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= best {
			continue
		}
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "/") {
			continue // closed since it was listed, or a socket, pipe, anon inode
		}
		if strings.HasPrefix(filepath.Base(strings.TrimSuffix(target, " (deleted)")), HeartbeatPrefix) {
			best = fd
		}
	}
	if best < 0 {
		return -1, fmt.Errorf("pid %d: %w", pid, ErrNoHeartbeat)
	}
	return best, nil
}

// FDChangeTime stats the file that fd of process pid names (through /proc/PID/fd/N, which
// reaches an unlinked file, and a file in a container's mount namespace): its change time,
// and its device and inode, which tell whether the fd still names the same file.
func (fs FS) FDChangeTime(pid uint32, fd int) (ctime time.Time, dev, ino uint64, err error) {
	fi, err := os.Stat(filepath.Join(fs.pidDir(pid), "fd", strconv.Itoa(fd)))
	if err != nil {
		return time.Time{}, 0, 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return time.Time{}, 0, 0, errors.New("no stat_t")
	}
	return time.Unix(int64(st.Ctim.Sec), int64(st.Ctim.Nsec)), uint64(st.Dev), st.Ino, nil
}
