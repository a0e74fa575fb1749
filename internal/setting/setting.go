package setting

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/spf13/pflag"
)

// Group is a section of --help; the sections print in the order of these constants.
type Group int

// The sections of --help.
const (
	Attaching Group = iota
	Endpoint
	Metrics
	Redis
	OTLP
	Kernel
	Other
)

var groupTitles = [...]string{"Attaching", "Metrics endpoint", "Metrics", "Redis forwarding", "OpenTelemetry push", "Kernel side", "Logging and other"}

func (g Group) String() string { return groupTitles[g] }

// Setting is one row. Its default is what Value holds when the row is built: the owning
// package's DefaultConfig.
type Setting struct {
	Name  string // the flag, without "--"
	Short string // a one-letter alias, or ""
	Env   string // read when the flag is not given and the variable is not empty; "" for none
	Group Group
	Help  string
	// Value is the target, a field of the owner's Config (String, Int, ...).
	Value pflag.Value
	// Check, when not nil, runs once every value is in, in --help order; it returns why the
	// value cannot work, naming the setting as name does ("--flag (ENV)"). A setting whose
	// flag type is not its field's (--pid is an int, Config.PID a uint32) stores it here.
	Check func(name string) error
}

// Label names the setting in messages: "--flag", or "--flag (ENV)".
func (s Setting) Label() string {
	if s.Env == "" {
		return "--" + s.Name
	}
	return "--" + s.Name + " (" + s.Env + ")"
}

// Require is a Check's test: nil when ok, else the message.
func Require(ok bool, format string, a ...any) error {
	if ok {
		return nil
	}
	return fmt.Errorf(format, a...)
}

// Sort orders rows as --help lists them: by Group, in the order given within a group.
func Sort(rows []Setting) []Setting {
	slices.SortStableFunc(rows, func(a, b Setting) int { return int(a.Group) - int(b.Group) })
	return rows
}

// Define adds every row's flag to fs.
func Define(fs *pflag.FlagSet, rows []Setting) {
	for _, s := range rows {
		f := fs.VarPF(s.Value, s.Name, s.Short, s.Help)
		if b, ok := s.Value.(interface{ IsBoolFlag() bool }); ok && b.IsBoolFlag() {
			f.NoOptDefVal = "true" // --force alone means true, as pflag's BoolVar does
		}
	}
}

// FromEnv sets every row that fs's command line did not give from its environment variable
// (lookup), when that is set and not empty.
func FromEnv(fs *pflag.FlagSet, rows []Setting, lookup func(string) (string, bool)) error {
	for _, s := range rows {
		if s.Env == "" || fs.Changed(s.Name) {
			continue
		}
		if v, ok := lookup(s.Env); ok && v != "" {
			if err := fs.Set(s.Name, v); err != nil {
				return fmt.Errorf("invalid value %q for environment variable %s: %v", v, s.Env, err)
			}
		}
	}
	return nil
}

// Check runs the rows' checks in order and returns the first failure.
func Check(rows []Setting) error {
	for _, s := range rows {
		if s.Check != nil {
			if err := s.Check(s.Label()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Usage prints rows as --help lists them: a section per Group, each flag with its type, help,
// default (when not zero) and environment variable. fs is where rows are defined.
func Usage(out io.Writer, fs *pflag.FlagSet, rows []Setting) {
	for i, s := range rows {
		if i == 0 || s.Group != rows[i-1].Group {
			fmt.Fprintf(out, "\n%s:\n", s.Group)
		}
		f := fs.Lookup(s.Name)
		left := "  --" + f.Name
		if f.Shorthand != "" {
			left = "  -" + f.Shorthand + ", --" + f.Name
		}
		if f.Value.Type() != "bool" {
			left += " " + f.Value.Type()
		}
		usage := f.Usage
		if f.DefValue != "" && f.DefValue != "0" && f.DefValue != "false" && f.DefValue != "[]" {
			usage += " (default " + strconv.Quote(f.DefValue) + ")"
		}
		if s.Env != "" {
			usage += " [env " + s.Env + "]"
		}
		fmt.Fprintf(out, "%-34s %s\n", left, usage)
	}
}

// pflagValue is pflag's own Value for *p, so flags parse and print as pflag's typed flags do.
func pflagValue[T any](p *T, define func(fs *pflag.FlagSet, p *T, name string, value T, usage string)) pflag.Value {
	fs := pflag.NewFlagSet("", pflag.ContinueOnError)
	define(fs, p, "v", *p, "")
	return fs.Lookup("v").Value
}

// String is a Value over *p.
func String(p *string) pflag.Value { return pflagValue(p, (*pflag.FlagSet).StringVar) }

// Int is a Value over *p.
func Int(p *int) pflag.Value { return pflagValue(p, (*pflag.FlagSet).IntVar) }

// Bool is a Value over *p; the flag alone means true.
func Bool(p *bool) pflag.Value { return pflagValue(p, (*pflag.FlagSet).BoolVar) }

// Duration is a Value over *p ("1m30s").
func Duration(p *time.Duration) pflag.Value { return pflagValue(p, (*pflag.FlagSet).DurationVar) }

// Uint32 is a Value over *p.
func Uint32(p *uint32) pflag.Value { return pflagValue(p, (*pflag.FlagSet).Uint32Var) }

// Uint64 is a Value over *p.
func Uint64(p *uint64) pflag.Value { return pflagValue(p, (*pflag.FlagSet).Uint64Var) }

// Strings is a repeatable Value over *p: each flag adds one string.
func Strings(p *[]string) pflag.Value { return pflagValue(p, (*pflag.FlagSet).StringArrayVar) }

// Exists is a Check's test of a path: nil when it is empty or names something.
func Exists(name, path string) error {
	if path == "" {
		return nil
	}
	if _, err := os.Stat(path); err != nil {
		return fmt.Errorf("%s: %v", name, err)
	}
	return nil
}
