package proc

import (
	"path/filepath"
	"sort"
	"strings"
)

// Who is a Gunicorn master. Gunicorn forks its workers without exec, so without the
// setproctitle module (Debian's gunicorn runs without it: python3-setproctitle is only a
// suggestion) a worker has its master's very command line, "/usr/bin/python3 /usr/bin/gunicorn
// -w 2 app:app", and only the process tree tells them apart: a worker's parent is its master.
// Not after the master died (kill -9): its workers are re-parented to init or a subreaper and
// run on until they notice (a sync worker within its timeout). A worker never forks a Gunicorn
// process (Gunicorn 25+'s dirty arbiter, a child of the master, does: dirty.go; it exits within
// a second of its master's death), so an untitled Gunicorn process whose parent is not Gunicorn
// is a master only once it has a Gunicorn child; a master that has not forked its first worker yet (a --preload app
// still importing) is found at the next scan. With setproctitle the title says which it is.
// Whether a process is Gunicorn at all is decided by the interpreter that runs it and the
// script or module it runs, not by a name prefix: a launcher script named gunicorn-start that
// does not exec is not Gunicorn, and the master it starts is a master.

// Role is what a process's own command line or title says it is to Gunicorn.
type Role int

const (
	// NotGunicorn is any other program, a launcher named gunicorn-* among them.
	NotGunicorn Role = iota
	// Untitled is Gunicorn run by a Python interpreter without a title: a master or a worker,
	// which the process tree tells apart.
	Untitled
	// TitledMaster is the setproctitle title "gunicorn: master [app]".
	TitledMaster
	// TitledWorker is the setproctitle title "gunicorn: worker [app]".
	TitledWorker
)

// RoleOf says what p is to Gunicorn: its setproctitle title, or a Python interpreter (p.Exe,
// or the command line's first word when Exe is unknown) running the gunicorn script
// (gunicorn, or gunicorn3 as older Debians named it) or the gunicorn module (-m gunicorn).
func RoleOf(p Info) Role {
	c := p.Cmdline
	if len(c) == 0 {
		return NotGunicorn
	}
	if c[0] == "gunicorn:" {
		if len(c) > 1 {
			switch c[1] {
			case "master":
				return TitledMaster
			case "worker":
				return TitledWorker
			}
		}
		return Untitled
	}
	interp := strings.TrimSuffix(p.Exe, " (deleted)")
	if interp == "" {
		interp = c[0]
	}
	if !isPython(filepath.Base(interp)) {
		return NotGunicorn
	}
	if gunicornScript(c[0]) {
		return Untitled // the interpreter named by the script's name (exec -a)
	}
	for i := 1; i < len(c); i++ {
		a := c[i]
		switch {
		case a == "-m" && i+1 < len(c):
			return gunicornModule(c[i+1])
		case strings.HasPrefix(a, "-m") && len(a) > 2:
			return gunicornModule(a[2:])
		case strings.HasPrefix(a, "-c"):
			return NotGunicorn
		case a == "-W" || a == "-X":
			i++ // takes a value
		case strings.HasPrefix(a, "-"):
		default:
			// The script: the first argument that is not an interpreter option.
			if gunicornScript(a) {
				return Untitled
			}
			return NotGunicorn
		}
	}
	return NotGunicorn
}

// IsGunicorn says whether p is a Gunicorn process, master or worker.
func IsGunicorn(p Info) bool { return RoleOf(p) != NotGunicorn }

func isPython(base string) bool {
	return strings.HasPrefix(base, "python") || strings.HasPrefix(base, "pypy")
}

func gunicornScript(path string) bool {
	b := filepath.Base(path)
	return b == "gunicorn" || b == "gunicorn3"
}

func gunicornModule(m string) Role {
	if m == "gunicorn" || strings.HasPrefix(m, "gunicorn.") {
		return Untitled
	}
	return NotGunicorn
}

// Root is a Gunicorn process whose parent is not a Gunicorn process (or a titled master):
// a master, or a worker whose master died.
type Root struct {
	Info
	Role Role
	// Children is how many of its children are Gunicorn processes.
	Children int
}

// Master says whether r is a master: its title says so or, untitled, it has a Gunicorn child.
func (r Root) Master() bool {
	return r.Role == TitledMaster || r.Role == Untitled && r.Children > 0
}

// Roots lists the Gunicorn roots on the host, by PID: every master, and the workers whose
// master died, which Root.Master tells apart.
func (fs FS) Roots() ([]Root, error) {
	all, err := fs.All()
	if err != nil {
		return nil, err
	}
	role := make(map[uint32]Role, len(all))
	kids := make(map[uint32]int)
	for _, p := range all {
		if r := RoleOf(p); r != NotGunicorn {
			role[p.PID] = r
		}
	}
	for _, p := range all {
		if role[p.PID] != NotGunicorn {
			kids[p.PPID]++
		}
	}
	var out []Root
	for _, p := range all {
		r := role[p.PID]
		if r == NotGunicorn || r != TitledMaster && role[p.PPID] != NotGunicorn {
			continue
		}
		out = append(out, Root{Info: p, Role: r, Children: kids[p.PID]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out, nil
}

// Masters finds every Gunicorn master on the host (the Roots that are masters).
func (fs FS) Masters() ([]Info, error) {
	roots, err := fs.Roots()
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, r := range roots {
		if r.Master() {
			out = append(out, r.Info)
		}
	}
	return out, nil
}
