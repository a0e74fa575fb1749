package setting

import (
	"bytes"
	"io"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

type testConfig struct {
	Port    int
	Name    string
	On      bool
	Every   time.Duration
	Routes  []string
	checked []string
}

func (c *testConfig) rows() []Setting {
	check := func(name string) error { c.checked = append(c.checked, name); return nil }
	return Sort([]Setting{
		{Name: "on", Group: Other, Value: Bool(&c.On), Help: "switch", Check: check},
		{Name: "port", Env: "PORT", Group: Endpoint, Value: Int(&c.Port), Help: "port",
			Check: func(name string) error { check(name); return Require(c.Port > 0, "invalid %s %d", name, c.Port) }},
		{Name: "name", Env: "NAME", Group: Endpoint, Value: String(&c.Name), Help: "name", Check: check},
		{Name: "every", Group: Metrics, Value: Duration(&c.Every), Help: "period"},
		{Name: "route", Group: Metrics, Value: Strings(&c.Routes), Help: "route"},
	})
}

func parse(t *testing.T, args []string, env map[string]string) (*testConfig, []Setting, *pflag.FlagSet, error) {
	t.Helper()
	c := &testConfig{Port: 80, Every: time.Second}
	rows := c.rows()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	Define(fs, rows)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	err := FromEnv(fs, rows, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err == nil {
		err = Check(rows)
	}
	return c, rows, fs, err
}

// TestRows: a flag beats its variable, which beats the default (the field's value); a bool
// flag alone is true; checks run in --help order and name the setting with its variable.
func TestRows(t *testing.T) {
	c, _, _, err := parse(t, []string{"--on", "--name", "flag", "--route", "/a", "--route", "/b"}, map[string]string{"NAME": "env", "PORT": "8080"})
	if err != nil {
		t.Fatal(err)
	}
	if !c.On || c.Name != "flag" || c.Port != 8080 || c.Every != time.Second || len(c.Routes) != 2 {
		t.Errorf("got %+v", *c)
	}
	if want := []string{"--port (PORT)", "--name (NAME)", "--on"}; !slices.Equal(c.checked, want) {
		t.Errorf("checked %q, want %q", c.checked, want)
	}

	_, _, _, err = parse(t, nil, map[string]string{"PORT": "x"})
	if err == nil || !strings.HasPrefix(err.Error(), `invalid value "x" for environment variable PORT: invalid argument "x" for "--port" flag`) {
		t.Errorf("bad variable: %v", err)
	}
	if _, _, _, err = parse(t, []string{"--port", "-1"}, nil); err == nil || err.Error() != "invalid --port (PORT) -1" {
		t.Errorf("failed check: %v", err)
	}
	if err := Exists("--dir", "/nonexistent"); err == nil || !strings.HasPrefix(err.Error(), "--dir: stat /nonexistent") {
		t.Errorf("Exists: %v", err)
	}
}

func TestUsage(t *testing.T) {
	_, rows, fs, err := parse(t, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	Usage(&out, fs, rows)
	want := `
Metrics endpoint:
  --port int                       port (default "80") [env PORT]
  --name string                    name [env NAME]

Metrics:
  --every duration                 period (default "1s")
  --route stringArray              route

Logging and other:
  --on                             switch
`
	if out.String() != want {
		t.Errorf("usage:\n%s\nwant:\n%s", out.String(), want)
	}
}
