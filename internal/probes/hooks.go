package probes

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
)

// Hook modes: how the kernel side sees a worker's socket calls (Config.Hooks). All emit the
// same records through the same state machine; the process hooks and the TCP hooks are the same
// in all.
const (
	// HooksAuto is the first of HooksSocket, HooksFentry, HooksKprobe and HooksSyscall that the
	// kernel has.
	HooksAuto = "auto"
	// HooksSocket attaches to tp_btf/sock_recv_length and sock_send_length (Linux 6.3+). Other
	// processes pay one memory read per socket call, and nothing on other syscalls.
	HooksSocket = "socket"
	// HooksFentry attaches fexit programs to the TCP and Unix stream sockets' send and receive
	// functions (bpf/hook_fentry.h), where the kernel lets fexit attach to kernel functions
	// (x86_64 5.5+; on arm64, Debian's 6.12 does and its 6.1 refuses): like HooksSocket,
	// nothing on other syscalls.
	HooksFentry = "fentry"
	// HooksKprobe attaches kprobes and kretprobes to the same functions, where the kernel has no
	// trampolines: nothing on other syscalls either.
	HooksKprobe = "kprobe"
	// HooksSyscall attaches to the syscalls/sys_exit_* tracepoints of recvfrom, recvmsg,
	// sendto, sendmsg and sendfile64 (Linux 5.10+). An enabled syscall tracepoint puts every
	// syscall of every task on the host on the kernel's slow path.
	HooksSyscall = "syscall"
)

// HookModes lists the values Config.Hooks accepts.
var HookModes = []string{HooksAuto, HooksSocket, HooksFentry, HooksKprobe, HooksSyscall}

// socketTracepoint is the BTF type a kernel with the sock_send_length tracepoint has (the
// one of sock_recv_length came in the same release, 6.3).
const socketTracepoint = "btf_trace_sock_send_length"

// ErrNoSocketHooks is wrapped when the socket hooks are asked for on a kernel without them.
var ErrNoSocketHooks = errors.New("the kernel has no socket tracepoints")

// ErrHooksRefused is wrapped when the kernel refuses the fentry or kprobe hooks asked for.
var ErrHooksRefused = errors.New("the kernel refused the hooks")

// ChooseHooks resolves want (one of HookModes; "" is auto) to the mode to load. kernelHas says
// whether the running kernel's BTF has a type of that name; attaches says whether the kernel
// lets a program of mode HooksFentry or HooksKprobe attach (kernelAttaches). An explicit mode
// the kernel lacks is an error, never a fallback.
func ChooseHooks(want string, kernelHas func(typeName string) (bool, error), attaches func(mode string) error) (string, error) {
	if want == "" {
		want = HooksAuto
	}
	if err := checkHooks(want); err != nil {
		return "", fmt.Errorf("unknown hook mode %w", err)
	}
	switch want {
	case HooksSyscall:
		return HooksSyscall, nil
	case HooksFentry, HooksKprobe:
		if err := attaches(want); err != nil {
			// The kernel's reason is text here: an EPERM from it is not a lack of privilege.
			return "", fmt.Errorf("%w (--hooks %s: %v): use --hooks syscall or auto", ErrHooksRefused, want, err)
		}
		return want, nil
	}
	ok, err := kernelHas(socketTracepoint)
	if err != nil {
		return "", fmt.Errorf("look for the socket tracepoints in the kernel's BTF: %w", err)
	}
	switch {
	case ok:
		return HooksSocket, nil
	case want == HooksSocket:
		return "", fmt.Errorf("%w (sock_send_length came in Linux 6.3): use --hooks fentry, kprobe, syscall or auto", ErrNoSocketHooks)
	}
	for _, mode := range []string{HooksFentry, HooksKprobe} {
		if attaches(mode) == nil {
			return mode, nil
		}
	}
	return HooksSyscall, nil
}

// kernelHasType looks a type up by name in the running kernel's BTF (a function too: its
// BTF Func type).
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

// probeTarget is the function the probes of kernelAttaches attach to: one fentry and kprobe
// modes hook.
const probeTarget = "inet_recvmsg"

// kernelAttaches loads a program that does nothing as an fexit (HooksFentry) or a kprobe
// (HooksKprobe) on probeTarget, attaches it and closes both: nil if the kernel allowed it.
func kernelAttaches(mode string) error {
	spec := &ebpf.ProgramSpec{
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()},
		License:      "GPL",
	}
	if mode == HooksFentry {
		spec.Type, spec.AttachType, spec.AttachTo = ebpf.Tracing, ebpf.AttachTraceFExit, probeTarget
	} else {
		spec.Type = ebpf.Kprobe
	}
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		return fmt.Errorf("load: %w", err)
	}
	defer prog.Close()
	var l link.Link
	if mode == HooksFentry {
		l, err = link.AttachTracing(link.TracingOptions{Program: prog})
	} else {
		// A kretprobe as kprobe mode attaches them (kretprobeOptions): through tracefs.
		l, err = link.Kretprobe(probeTarget, prog, kretprobeOptions)
	}
	if err != nil {
		return fmt.Errorf("attach: %w", err)
	}
	return l.Close()
}

// kretprobeMaxActive is how many calls of one kretprobe'd function, over every task on the host,
// can be inside it at once with their return seen. The kernel's default is the number of
// possible CPUs on kernels built without CONFIG_PREEMPTION (Debian's), else max(10, 2×CPUs); a
// call entered while that many are inside is not seen returning ("missed"). Any task blocked in
// a TCP or Unix receive holds one of inet_recvmsg's or unix_stream_recvmsg's, and a task
// descheduled inside a send one of the send function's: with the default, a worker's response
// went unseen whenever its client was still inside its own send (Debian 11's arm64 kernel, one
// CPU: 54 of 60 fast responses). 4096 is the most every kernel from 5.10 accepts
// (KRETPROBE_MAXACTIVE_MAX, kernel/trace/trace_kprobe.c); it costs the kernel an instance of a
// few dozen bytes each per kretprobe.
const kretprobeMaxActive = 4096

// kretprobeOptions are the kretprobes' options. A maxactive is given through tracefs's
// kprobe_events only (the perf kprobe PMU has no field for it): cilium/ebpf creates the event
// there, and removes it when the link is closed.
var kretprobeOptions = &link.KprobeOptions{RetprobeMaxActive: kretprobeMaxActive}

// hookKind is how a hook attaches.
type hookKind int

const (
	hookTracing    hookKind = iota // tp_btf or fexit: the target is the program's own (AttachTracing)
	hookTracepoint                 // group/name
	hookKprobe
	hookKretprobe
)

// hook is one attachment: prog (the program's name in bpf/gpe.bpf.c) on name (a tracepoint's,
// or a kernel function's). optional: loaded only where the kernel's BTF has the function name.
type hook struct {
	kind        hookKind
	group, name string
	prog        string
	optional    bool
}

func tpBTF(name, prog string) hook { return hook{kind: hookTracing, name: name, prog: prog} }
func tp(group, name, prog string) hook {
	return hook{kind: hookTracepoint, group: group, name: name, prog: prog}
}
func kprobe(name, prog string) hook    { return hook{kind: hookKprobe, name: name, prog: prog} }
func kretprobe(name, prog string) hook { return hook{kind: hookKretprobe, name: name, prog: prog} }
func optional(h hook) hook             { h.optional = true; return h }

// commonHooks are attached in every mode: the process tree, and the TCP hooks: tcp_destroy_sock
// (a connection's end) and, with QueueWait only, inet_sock_set_state (its establishment, for
// the accept-queue wait, and its end, seen first).
var commonHooks = []hook{
	tpBTF("sched_process_fork", gpeProgOnFork),
	tpBTF("sched_process_exec", gpeProgOnExec),
	tpBTF("sched_process_exit", gpeProgOnExit),
	tpBTF("signal_generate", gpeProgOnSignal),
	tp("oom", "mark_victim", gpeProgOnOom),
	tpBTF("tcp_destroy_sock", gpeProgOnTcpDestroy),
	tpBTF("inet_sock_set_state", gpeProgOnTcpState),
}

// sendpage is the function sendfile to a socket goes through before Linux 6.5 (fentry and
// kprobe modes hook it where the kernel's BTF has it; from 6.5, sendfile goes through sendmsg).
const sendpage = "sock_sendpage"

// modeHooks are the socket-call hooks of each mode. Only the chosen mode's programs are
// loaded: a kernel without sock_send_length would refuse on_sock_send's attach target.
// fentry and kprobe modes hook the same functions (bpf/hook_fentry.h says why these).
var modeHooks = map[string][]hook{
	HooksSocket: {
		tpBTF("sock_recv_length", gpeProgOnSockRecv),
		tpBTF("sock_send_length", gpeProgOnSockSend),
	},
	HooksFentry: {
		tpBTF("inet_recvmsg", gpeProgOnFexitInetRecv),
		tpBTF("inet6_recvmsg", gpeProgOnFexitInet6Recv),
		tpBTF("unix_stream_recvmsg", gpeProgOnFexitUnixRecv),
		tpBTF("inet_sendmsg", gpeProgOnFexitInetSend),
		tpBTF("inet6_sendmsg", gpeProgOnFexitInet6Send),
		tpBTF("unix_stream_sendmsg", gpeProgOnFexitUnixSend),
		optional(tpBTF(sendpage, gpeProgOnFexitSendpage)),
	},
	HooksKprobe: {
		kretprobe("inet_recvmsg", gpeProgOnKretprobeRecv),
		kretprobe("inet6_recvmsg", gpeProgOnKretprobeRecv),
		kretprobe("unix_stream_recvmsg", gpeProgOnKretprobeRecv),
		kprobe("inet_recvmsg", gpeProgOnKprobeRecv),
		kprobe("inet6_recvmsg", gpeProgOnKprobeRecv),
		kprobe("unix_stream_recvmsg", gpeProgOnKprobeRecv),
		kretprobe("inet_sendmsg", gpeProgOnKretprobeSend),
		kretprobe("inet6_sendmsg", gpeProgOnKretprobeSend),
		kretprobe("unix_stream_sendmsg", gpeProgOnKretprobeSend),
		kprobe("inet_sendmsg", gpeProgOnKprobeSend),
		kprobe("inet6_sendmsg", gpeProgOnKprobeSend),
		kprobe("unix_stream_sendmsg", gpeProgOnKprobeSend),
		optional(kretprobe(sendpage, gpeProgOnKretprobeSend)),
		optional(kprobe(sendpage, gpeProgOnKprobeSendpage)),
	},
	HooksSyscall: {
		tp("syscalls", "sys_exit_recvfrom", gpeProgOnSysRecv),
		tp("syscalls", "sys_exit_recvmsg", gpeProgOnSysRecv),
		tp("syscalls", "sys_exit_sendto", gpeProgOnSysSend),
		tp("syscalls", "sys_exit_sendmsg", gpeProgOnSysSend),
		tp("syscalls", "sys_exit_sendfile64", gpeProgOnSysSend),
	},
}

// hooksOf is every attachment of a mode, without the optional ones the kernel lacks
// (kernelHas, as kernelHasType).
func hooksOf(mode string, kernelHas func(name string) (bool, error)) ([]hook, error) {
	out := append([]hook(nil), commonHooks...)
	for _, h := range modeHooks[mode] {
		if h.optional {
			ok, err := kernelHas(h.name)
			if err != nil {
				return nil, fmt.Errorf("look for %s in the kernel's BTF: %w", h.name, err)
			}
			if !ok {
				continue
			}
		}
		out = append(out, h)
	}
	return out, nil
}

// attach attaches prog as h says.
func (h hook) attach(prog *ebpf.Program) (link.Link, error) {
	switch h.kind {
	case hookTracepoint:
		return link.Tracepoint(h.group, h.name, prog, nil)
	case hookKprobe:
		return link.Kprobe(h.name, prog, nil)
	case hookKretprobe:
		return link.Kretprobe(h.name, prog, kretprobeOptions)
	}
	return link.AttachTracing(link.TracingOptions{Program: prog})
}
