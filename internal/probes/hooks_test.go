package probes

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

// TestChooseHooks: auto picks the socket hooks exactly when the kernel's BTF has the
// sock_send_length tracepoint's type, else the first of fentry and kprobe the kernel lets
// attach, else syscall; an explicit mode is kept, and one the kernel lacks is refused with a
// message naming the way out, never replaced.
func TestChooseHooks(t *testing.T) {
	lookupErr := errors.New("no BTF")
	refused := fmt.Errorf("load: %w", unix.EPERM) // what this machine's kernel answers to fexit
	both := map[string]error{}
	onlyKprobe := map[string]error{HooksFentry: refused}
	neither := map[string]error{HooksFentry: refused, HooksKprobe: refused}
	for _, tc := range []struct {
		name, want string
		has        bool
		err        error
		refuse     map[string]error // what attaches answers, by mode (absent: nil)
		mode       string
		wantErr    error // nil: no error
		asked      []string
	}{
		{name: "auto with the tracepoint", want: HooksAuto, has: true, mode: HooksSocket},
		{name: "auto without it, fentry", want: HooksAuto, refuse: both, mode: HooksFentry, asked: []string{HooksFentry}},
		{name: "auto without fentry, kprobe", want: HooksAuto, refuse: onlyKprobe, mode: HooksKprobe, asked: []string{HooksFentry, HooksKprobe}},
		{name: "auto without either", want: HooksAuto, refuse: neither, mode: HooksSyscall, asked: []string{HooksFentry, HooksKprobe}},
		{name: "empty is auto", want: "", refuse: neither, mode: HooksSyscall, asked: []string{HooksFentry, HooksKprobe}},
		{name: "socket with the tracepoint", want: HooksSocket, has: true, mode: HooksSocket},
		{name: "socket without it", want: HooksSocket, refuse: both, wantErr: ErrNoSocketHooks},
		{name: "fentry allowed", want: HooksFentry, has: true, mode: HooksFentry, asked: []string{HooksFentry}},
		{name: "fentry refused", want: HooksFentry, has: true, refuse: onlyKprobe, wantErr: ErrHooksRefused, asked: []string{HooksFentry}},
		{name: "kprobe allowed", want: HooksKprobe, has: true, refuse: onlyKprobe, mode: HooksKprobe, asked: []string{HooksKprobe}},
		{name: "kprobe refused", want: HooksKprobe, refuse: neither, wantErr: ErrHooksRefused, asked: []string{HooksKprobe}},
		{name: "syscall with the tracepoint", want: HooksSyscall, has: true, mode: HooksSyscall},
		{name: "syscall without BTF", want: HooksSyscall, err: lookupErr, mode: HooksSyscall},
		{name: "auto without BTF", want: HooksAuto, err: lookupErr, wantErr: lookupErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var looked, asked []string
			got, err := ChooseHooks(tc.want, func(name string) (bool, error) {
				looked = append(looked, name)
				return tc.has, tc.err
			}, func(mode string) error {
				asked = append(asked, mode)
				return tc.refuse[mode]
			})
			if !slices.Equal(asked, tc.asked) {
				t.Errorf("asked to attach %v, want %v", asked, tc.asked)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ChooseHooks(%q) = %q, %v; want an error with %v", tc.want, got, err, tc.wantErr)
				}
				if errors.Is(err, os.ErrPermission) { // gpe-ebpf would call it a lack of privilege
					t.Errorf("ChooseHooks(%q): %v is a permission error", tc.want, err)
				}
				return
			}
			if err != nil || got != tc.mode {
				t.Fatalf("ChooseHooks(%q) = %q, %v; want %q", tc.want, got, err, tc.mode)
			}
			lookup := tc.want == HooksAuto || tc.want == "" || tc.want == HooksSocket
			if lookup != (len(looked) == 1) || lookup && looked[0] != "btf_trace_sock_send_length" {
				t.Errorf("asked the kernel's BTF for %v", looked)
			}
		})
	}
	if _, err := ChooseHooks("tracepoint", func(string) (bool, error) { return true, nil }, func(string) error { return nil }); err == nil {
		t.Error("an unknown mode was accepted")
	}
}

// TestHooksOf: the optional sock_sendpage hooks are kept only where the kernel has the
// function, and every hook of a mode names a program of the object.
func TestHooksOf(t *testing.T) {
	spec, err := loadGpe()
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range HookModes[1:] {
		for _, has := range []bool{false, true} {
			hooks, err := hooksOf(mode, func(name string) (bool, error) {
				if name != sendpage {
					t.Errorf("%s: looked for %s", mode, name)
				}
				return has, nil
			})
			if err != nil {
				t.Fatal(err)
			}
			n := 0
			for _, h := range hooks {
				if spec.Programs[h.prog] == nil {
					t.Errorf("%s: hook %s names no program %s", mode, h.name, h.prog)
				}
				if h.name == sendpage {
					n++
				}
			}
			want := 0
			if has && (mode == HooksFentry || mode == HooksKprobe) {
				want = map[string]int{HooksFentry: 1, HooksKprobe: 2}[mode]
			}
			if n != want {
				t.Errorf("%s with sock_sendpage %v: %d hooks on it, want %d", mode, has, n, want)
			}
		}
	}
}

// TestKernelHasType: the real lookup finds a type every kernel with BTF has and not a made-up
// one (it reads /sys/kernel/btf/vmlinux, which needs no privilege).
func TestKernelHasType(t *testing.T) {
	ok, err := kernelHasType("task_struct")
	if err == nil && !ok {
		err = errors.New("no task_struct in it")
	}
	need(t, "this test reads the kernel's BTF", err)
	if ok, err := kernelHasType("btf_trace_no_such_tracepoint_gpe"); err != nil || ok {
		t.Errorf("a made-up type: %v, %v", ok, err)
	}
}
