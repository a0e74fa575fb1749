package probes

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf/btf"
)

// Hook modes: how the kernel side sees a worker's socket calls (Config.Hooks). Both emit the
// same records; the process hooks and the TCP hooks are the same in both.
const (
	// HooksAuto is HooksSocket where the kernel has the socket tracepoints, else HooksSyscall.
	HooksAuto = "auto"
	// HooksSocket attaches to tp_btf/sock_recv_length and sock_send_length (Linux 6.3+). Other
	// processes pay one memory read per socket call, and nothing on other syscalls.
	HooksSocket = "socket"
	// HooksSyscall attaches to the syscalls/sys_exit_* tracepoints of recvfrom, recvmsg,
	// sendto, sendmsg and sendfile64 (Linux 5.17+). An enabled syscall tracepoint puts every
	// syscall of every task on the host on the kernel's slow path.
	HooksSyscall = "syscall"
)

// HookModes lists the values Config.Hooks accepts.
var HookModes = []string{HooksAuto, HooksSocket, HooksSyscall}

// socketTracepoint is the BTF type a kernel with the sock_send_length tracepoint has (the
// one of sock_recv_length came in the same release, 6.3).
const socketTracepoint = "btf_trace_sock_send_length"

// ErrNoSocketHooks is wrapped when the socket hooks are asked for on a kernel without them.
var ErrNoSocketHooks = errors.New("the kernel has no socket tracepoints")

// ChooseHooks resolves want (HooksAuto, HooksSocket or HooksSyscall; "" is auto) to the mode
// to load. kernelHas says whether the running kernel's BTF has a type of that name; it is
// asked unless want is HooksSyscall.
func ChooseHooks(want string, kernelHas func(typeName string) (bool, error)) (string, error) {
	if want == "" {
		want = HooksAuto
	}
	if err := checkHooks(want); err != nil {
		return "", fmt.Errorf("unknown hook mode %w", err)
	}
	if want == HooksSyscall {
		return HooksSyscall, nil
	}
	ok, err := kernelHas(socketTracepoint)
	if err != nil {
		return "", fmt.Errorf("look for the socket tracepoints in the kernel's BTF: %w", err)
	}
	switch {
	case ok:
		return HooksSocket, nil
	case want == HooksSocket:
		return "", fmt.Errorf("%w (sock_send_length came in Linux 6.3): use --hooks syscall or auto", ErrNoSocketHooks)
	}
	return HooksSyscall, nil
}

// kernelHasType looks a type up by name in the running kernel's BTF.
func kernelHasType(name string) (bool, error) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false, err
	}
	_, err = spec.AnyTypeByName(name)
	if errors.Is(err, btf.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// hook is one attachment: a BTF tracepoint when group is "", else a tracepoint; prog is the
// program's name in bpf/gpe.bpf.c.
type hook struct {
	group, name, prog string
}

// commonHooks are attached in both modes: the process tree, and the TCP hooks. Of those two,
// Load keeps one: inet_sock_set_state (a connection's establishment, for the accept-queue wait,
// and its end) with QueueWait, else tcp_destroy_sock (its end).
var commonHooks = []hook{
	{"", "sched_process_fork", gpeProgOnFork},
	{"", "sched_process_exec", gpeProgOnExec},
	{"", "sched_process_exit", gpeProgOnExit},
	{"", "signal_generate", gpeProgOnSignal},
	{"oom", "mark_victim", gpeProgOnOom},
	{"", "tcp_destroy_sock", gpeProgOnTcpDestroy},
	{"", "inet_sock_set_state", gpeProgOnTcpState},
}

// modeHooks are the socket-call hooks of each mode. Only the chosen mode's programs are
// loaded: a kernel without sock_send_length would refuse on_sock_send's attach target.
var modeHooks = map[string][]hook{
	HooksSocket: {
		{"", "sock_recv_length", gpeProgOnSockRecv},
		{"", "sock_send_length", gpeProgOnSockSend},
	},
	HooksSyscall: {
		{"syscalls", "sys_exit_recvfrom", gpeProgOnSysRecv},
		{"syscalls", "sys_exit_recvmsg", gpeProgOnSysRecv},
		{"syscalls", "sys_exit_sendto", gpeProgOnSysSend},
		{"syscalls", "sys_exit_sendmsg", gpeProgOnSysSend},
		{"syscalls", "sys_exit_sendfile64", gpeProgOnSysSend},
	},
}

// hooksOf is every attachment of a mode.
func hooksOf(mode string) []hook {
	return append(append([]hook(nil), commonHooks...), modeHooks[mode]...)
}
