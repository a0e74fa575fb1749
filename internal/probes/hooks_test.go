package probes

import (
	"errors"
	"testing"
)

// TestChooseHooks: auto picks the socket hooks exactly when the kernel's BTF has the
// sock_send_length tracepoint's type; an explicit mode is kept, and socket on a kernel
// without it is refused with a message naming the way out.
func TestChooseHooks(t *testing.T) {
	lookupErr := errors.New("no BTF")
	for _, tc := range []struct {
		name, want string
		has        bool
		err        error
		mode       string
		wantErr    error // nil: no error
	}{
		{name: "auto with the tracepoint", want: HooksAuto, has: true, mode: HooksSocket},
		{name: "auto without it", want: HooksAuto, has: false, mode: HooksSyscall},
		{name: "empty is auto", want: "", has: false, mode: HooksSyscall},
		{name: "socket with the tracepoint", want: HooksSocket, has: true, mode: HooksSocket},
		{name: "socket without it", want: HooksSocket, has: false, wantErr: ErrNoSocketHooks},
		{name: "syscall with the tracepoint", want: HooksSyscall, has: true, mode: HooksSyscall},
		{name: "syscall without BTF", want: HooksSyscall, err: lookupErr, mode: HooksSyscall},
		{name: "auto without BTF", want: HooksAuto, err: lookupErr, wantErr: lookupErr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var asked []string
			got, err := ChooseHooks(tc.want, func(name string) (bool, error) {
				asked = append(asked, name)
				return tc.has, tc.err
			})
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("ChooseHooks(%q) = %q, %v; want an error wrapping %v", tc.want, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.mode {
				t.Fatalf("ChooseHooks(%q) = %q, %v; want %q", tc.want, got, err, tc.mode)
			}
			if tc.want != HooksSyscall && (len(asked) != 1 || asked[0] != "btf_trace_sock_send_length") {
				t.Errorf("asked the kernel's BTF for %v, want [btf_trace_sock_send_length]", asked)
			}
		})
	}
	if _, err := ChooseHooks("kprobe", func(string) (bool, error) { return true, nil }); err == nil {
		t.Error("an unknown mode was accepted")
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
