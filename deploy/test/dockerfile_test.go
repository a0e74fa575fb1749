package deploytest

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	cmd  string // upper case: FROM, RUN, ...
	args string
}

// stage is the instructions from one FROM up to the next.
type stage struct {
	from  string // the image, without AS name and without --platform
	name  string
	instr []instruction
}

// parseDockerfile splits a Dockerfile into stages. It understands comments,
// blank lines and backslash continuations, which is all this repository uses
// (no heredocs, no escape directive).
func parseDockerfile(t *testing.T, text string) []stage {
	t.Helper()
	var stages []stage
	var cur strings.Builder
	flush := func() {
		line := strings.TrimSpace(cur.String())
		cur.Reset()
		if line == "" {
			return
		}
		cmd, args, _ := strings.Cut(line, " ")
		in := instruction{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args)}
		if in.cmd == "FROM" {
			var st stage
			f := strings.Fields(in.args)
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				f = f[1:]
			}
			if len(f) == 0 {
				t.Fatalf("FROM without an image: %q", line)
			}
			st.from = f[0]
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				st.name = f[2]
			}
			stages = append(stages, st)
		}
		if len(stages) == 0 {
			if in.cmd != "ARG" {
				t.Fatalf("%s before the first FROM", in.cmd)
			}
			return
		}
		stages[len(stages)-1].instr = append(stages[len(stages)-1].instr, in)
	}
	for _, raw := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(raw)
		if strings.HasPrefix(trimmed, "#") {
			continue // comments, including inside a continued instruction
		}
		if strings.HasSuffix(trimmed, "\\") {
			cur.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		cur.WriteString(trimmed)
		flush()
	}
	flush()
	return stages
}

func TestDockerfile(t *testing.T) {
	stages := parseDockerfile(t, readRepoFile(t, "Dockerfile"))
	if len(stages) < 2 {
		t.Fatalf("want a multi-stage build, got %d stage(s)", len(stages))
	}

	t.Run("build stage", func(t *testing.T) {
		b := stages[0]
		if !regexp.MustCompile(`^golang:1\.26(\.\d+)?-(bookworm|trixie)$`).MatchString(b.from) {
			t.Errorf("build stage FROM %q: want a Debian based golang:1.26 image", b.from)
		}
		if b.name == "" {
			t.Errorf("build stage has no name (FROM ... AS build)")
		}
		var build string
		cgoEnv := false
		args := map[string]bool{} // ARGs declared in this stage before the go build
		for _, in := range b.instr {
			if in.cmd == "ENV" && strings.Contains(in.args, "CGO_ENABLED=0") {
				cgoEnv = true
			}
			if in.cmd == "ARG" && build == "" {
				name, _, _ := strings.Cut(in.args, "=")
				args[strings.TrimSpace(name)] = true
			}
			if in.cmd == "RUN" && strings.Contains(in.args, "go build") {
				build = in.args
			}
		}
		if build == "" {
			t.Fatal("no RUN go build in the build stage")
		}
		if !cgoEnv && !strings.Contains(build, "CGO_ENABLED=0") {
			t.Errorf("go build without CGO_ENABLED=0: %q", build)
		}
		for _, want := range []string{"-trimpath", `-ldflags "-s -w `, "-o /gpe-ebpf", "./cmd/gpe-ebpf"} {
			if !strings.Contains(build, want) {
				t.Errorf("go build lacks %s: %q", want, build)
			}
		}
		// The image's binary is stamped like `make build`'s: the build args VERSION
		// and REVISION go into the same -X flags as the Makefile's LDFLAGS.
		for arg, flag := range map[string]string{"VERSION": "-X main.version=${VERSION}", "REVISION": "-X main.commit=${REVISION}"} {
			if !args[arg] {
				t.Errorf("no ARG %s in the build stage before go build (an ARG before FROM is not seen inside a stage)", arg)
			}
			if !strings.Contains(build, flag) {
				t.Errorf("go build lacks %s: %q", flag, build)
			}
		}
		ldflags := regexp.MustCompile(`(?m)^LDFLAGS\s*:=(.*)$`).FindStringSubmatch(readRepoFile(t, "Makefile"))
		if ldflags == nil {
			t.Fatal("no LDFLAGS := in the Makefile")
		}
		for _, x := range []string{"-X main.version=$(VERSION)", "-X main.commit=$(COMMIT)"} {
			if !strings.Contains(ldflags[1], x) {
				t.Errorf("Makefile LDFLAGS %q lack %s: the Dockerfile's -X flags no longer match make build's", ldflags[1], x)
			}
		}
	})

	t.Run("make image", func(t *testing.T) {
		// The Makefile's image target passes what make build stamps as the build args.
		recipe := makeRecipe(t, readRepoFile(t, "Makefile"), "image")
		if !strings.Contains(recipe, "docker build") {
			t.Fatalf("make image does not run docker build: %q", recipe)
		}
		for _, want := range []string{"--build-arg VERSION=$(VERSION)", "--build-arg REVISION=$(COMMIT)"} {
			if !strings.Contains(recipe, want) {
				t.Errorf("make image lacks %s: %q", want, recipe)
			}
		}
	})

	t.Run("final stage", func(t *testing.T) {
		f := stages[len(stages)-1]
		minimal := f.from == "scratch" || strings.HasPrefix(f.from, "gcr.io/distroless/static")
		if !minimal {
			t.Errorf("final stage FROM %q: want scratch or gcr.io/distroless/static", f.from)
		}
		if strings.Contains(f.from, "nonroot") {
			t.Errorf("final stage FROM %q: BPF needs uid 0, not the nonroot image", f.from)
		}
		var entry, copied, user string
		exposed := false
		for _, in := range f.instr {
			switch in.cmd {
			case "ENTRYPOINT":
				entry = in.args
			case "COPY":
				if strings.Contains(in.args, "--from="+stages[0].name) && strings.Contains(in.args, "/gpe-ebpf") {
					copied = in.args
				}
			case "USER":
				user = in.args
			case "EXPOSE":
				for _, port := range strings.Fields(in.args) {
					exposed = exposed || port == "9090" || port == "9090/tcp"
				}
			}
		}
		if copied == "" {
			t.Errorf("final stage does not COPY --from=%s the binary", stages[0].name)
		}
		if user != "" && user != "0" && user != "0:0" && user != "root" {
			t.Errorf("USER %s: BPF needs uid 0", user)
		}
		if !exposed {
			t.Errorf("no EXPOSE 9090")
		}
		var argv []string
		if err := json.Unmarshal([]byte(entry), &argv); err != nil || len(argv) == 0 {
			t.Fatalf("ENTRYPOINT %q: want the exec (JSON) form, so signals reach gpe-ebpf", entry)
		}
		if !strings.HasSuffix(argv[0], "/gpe-ebpf") {
			t.Errorf("ENTRYPOINT runs %q, want the gpe-ebpf binary", argv[0])
		}
		dst := strings.Fields(copied)
		if len(dst) > 0 && dst[len(dst)-1] != argv[0] {
			t.Errorf("ENTRYPOINT %q is not where the binary was copied (%q)", argv[0], dst[len(dst)-1])
		}
	})

	t.Run("dockerignore", func(t *testing.T) {
		ignore := strings.Fields(readRepoFile(t, ".dockerignore"))
		for _, want := range []string{".git", "bin"} {
			found := false
			for _, l := range ignore {
				found = found || l == want
			}
			if !found {
				t.Errorf(".dockerignore does not exclude %s", want)
			}
		}
		for _, l := range ignore {
			for _, needed := range []string{"go.mod", "go.sum", "cmd", "internal", "*.go", "*.o"} {
				if l == needed {
					t.Errorf(".dockerignore excludes %s, which the build needs", l)
				}
			}
		}
	})
}

// makeRecipe returns the recipe lines of a Makefile target, joined by newlines.
func makeRecipe(t *testing.T, makefile, target string) string {
	t.Helper()
	var recipe []string
	in := false
	for _, line := range strings.Split(makefile, "\n") {
		switch {
		case strings.HasPrefix(line, target+":"):
			in = true
		case in && strings.HasPrefix(line, "\t"):
			recipe = append(recipe, strings.TrimSpace(line))
		case in:
			in = false
		}
	}
	if len(recipe) == 0 {
		t.Fatalf("Makefile: no recipe for %s", target)
	}
	return strings.Join(recipe, "\n")
}
