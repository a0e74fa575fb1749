package proc

import (
	"os"
	"testing"
)

func TestRoleAndApp(t *testing.T) {
	tests := []struct {
		name    string
		exe     string
		cmdline []string
		role    Role
		app     string
	}{
		{"debian script", "/usr/bin/python3.11", []string{"/usr/bin/python3", "/usr/bin/gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "app:app"}, Untitled, "app:app"},
		{"exe unknown", "", []string{"/usr/bin/python3", "/usr/bin/gunicorn", "--workers=4", "--chdir", "/srv", "myproj.wsgi:application"}, Untitled, "myproj.wsgi:application"},
		{"interpreter options", "/usr/bin/python3.11", []string{"/usr/bin/python3", "-X", "dev", "/srv/venv/bin/gunicorn", "wsgi"}, Untitled, "wsgi"},
		{"older debian", "/usr/bin/python3.7", []string{"/usr/bin/python3", "/usr/bin/gunicorn3", "app:app"}, Untitled, "app:app"},
		{"module", "/usr/local/bin/python3.12", []string{"python3", "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "asgi:app"}, Untitled, "asgi:app"},
		{"module joined", "/usr/bin/python3.11", []string{"python3", "-mgunicorn.app.wsgiapp", "asgi:app"}, Untitled, "asgi:app"},
		{"upgraded interpreter", "/usr/bin/python3.11 (deleted)", []string{"/usr/bin/python3", "/usr/bin/gunicorn", "app:app"}, Untitled, "app:app"},
		{"master title", "/usr/bin/python3.11", []string{"gunicorn:", "master", "[myapp:create_app()]"}, TitledMaster, "myapp:create_app()"},
		{"worker title", "/usr/bin/python3.11", []string{"gunicorn:", "worker", "[myapp:create_app()]"}, TitledWorker, "myapp:create_app()"},
		{"preload reload", "", []string{"/usr/bin/python3", "/usr/bin/gunicorn", "--preload", "--reload", "wsgi"}, Untitled, "wsgi"},
		{"launcher script", "/usr/bin/bash", []string{"/bin/bash", "/usr/local/bin/gunicorn-start"}, NotGunicorn, ""},
		{"launcher, exe unknown", "", []string{"/bin/sh", "/usr/local/bin/gunicorn-start", "app:app"}, NotGunicorn, ""},
		{"python launcher", "/usr/bin/python3.11", []string{"/usr/bin/python3", "/opt/gunicorn-start.py"}, NotGunicorn, ""},
		{"gunicorn named by a shell", "/usr/bin/bash", []string{"/usr/bin/gunicorn", "app:app"}, NotGunicorn, ""},
		{"python -c", "/usr/bin/python3.11", []string{"python3", "-c", "import gunicorn", "/usr/bin/gunicorn"}, NotGunicorn, ""},
		{"http.server", "/usr/bin/python3.11", []string{"/usr/bin/python3", "-m", "http.server"}, NotGunicorn, ""},
		{"sleep", "/usr/bin/sleep", []string{"sleep", "60"}, NotGunicorn, ""},
		{"kernel thread", "", nil, NotGunicorn, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := Info{Exe: tt.exe, Cmdline: tt.cmdline}
			if got := RoleOf(p); got != tt.role {
				t.Errorf("RoleOf(%q, %q) = %v, want %v", tt.exe, tt.cmdline, got, tt.role)
			}
			if tt.role == NotGunicorn {
				return
			}
			if got := App(tt.cmdline); got != tt.app {
				t.Errorf("App(%q) = %q, want %q", tt.cmdline, got, tt.app)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	ppid, start, err := parseStat([]byte("1234 (gunicorn: worker [app] (x)) S 1200 1234 1200 0 -1 4194560 1 0 0 0 5 3 0 0 20 0 1 0 98765 0 0"))
	if err != nil || ppid != 1200 || start != 98765 {
		t.Errorf("parseStat = %d, %d, %v; want 1200, 98765", ppid, start, err)
	}
	if _, _, err := parseStat([]byte("garbage")); err == nil {
		t.Errorf("parseStat(garbage) succeeded")
	}
}

func TestReadSelf(t *testing.T) {
	info, err := Host.Read(uint32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if info.PPID != uint32(os.Getppid()) || len(info.Cmdline) == 0 || info.Started.IsZero() || info.Exe == "" {
		t.Errorf("Read(self) = %+v", info)
	}
	if _, err := Host.Read(1 << 30); err == nil {
		t.Errorf("Read of a missing pid succeeded")
	}
}
