package proc

import (
	"os"
	"testing"
)

func TestLooksLikeGunicornAndApp(t *testing.T) {
	tests := []struct {
		cmdline []string
		gun     bool
		app     string
	}{
		{[]string{"/usr/bin/python3", "/usr/bin/gunicorn", "-w", "2", "-b", "127.0.0.1:8000", "app:app"}, true, "app:app"},
		{[]string{"/usr/bin/python3", "/usr/bin/gunicorn", "--workers=4", "--chdir", "/srv", "myproj.wsgi:application"}, true, "myproj.wsgi:application"},
		{[]string{"python3", "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "asgi:app"}, true, "asgi:app"},
		{[]string{"gunicorn:", "master", "[myapp:create_app()]"}, true, "myapp:create_app()"},
		{[]string{"/usr/bin/python3", "/usr/bin/gunicorn", "--preload", "--reload", "wsgi"}, true, "wsgi"},
		{[]string{"/usr/bin/python3", "-m", "http.server"}, false, ""},
		{[]string{"sleep", "60"}, false, ""},
		{nil, false, ""},
	}
	for _, tt := range tests {
		if got := LooksLikeGunicorn(tt.cmdline); got != tt.gun {
			t.Errorf("LooksLikeGunicorn(%q) = %v, want %v", tt.cmdline, got, tt.gun)
		}
		if !tt.gun {
			continue
		}
		if got := App(tt.cmdline); got != tt.app {
			t.Errorf("App(%q) = %q, want %q", tt.cmdline, got, tt.app)
		}
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
	if info.PPID != uint32(os.Getppid()) || len(info.Cmdline) == 0 || info.Started.IsZero() {
		t.Errorf("Read(self) = %+v", info)
	}
	if _, err := Host.Read(1 << 30); err == nil {
		t.Errorf("Read of a missing pid succeeded")
	}
}
