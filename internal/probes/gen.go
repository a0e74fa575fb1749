package probes

// bpf2go compiles bpf/gpe.bpf.c (which includes a header per concern, see its head) for both little-endian targets and writes gpe_{x86,arm64}_bpfel.go
// and .o beside this file; both are committed so that `go build` needs no clang. Regenerate with
// `make generate` (Debian's clang, llvm and libbpf-dev). -Wpadded keeps the shared records free
// of implicit padding so the Go types line up with the C ones. -mcpu=v3 (kernel 5.1+) for the
// atomic fetch-and-add of the request ids.
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type gpe_hdr -type gpe_proc_event -type gpe_req_event -type gpe_req_start -type gpe_ds_event -type gpe_peer -type gpe_event_kind -type gpe_proc_kind -type gpe_end_reason -type gpe_req_flag -type conn_state -type gpe_drop_reason -type gpe_h2_event -type gpe_h2_kind gpe ../../bpf/gpe.bpf.c -- -mcpu=v3 -I../../bpf -I/usr/include/x86_64-linux-gnu -Wall -Werror -Wpadded

// The compat object: the same sources with -DGPE_COMPAT, for kernels from 5.10 that lack the
// helpers and instructions the object above uses (bpf_loop, bpf_for_each_map_elem,
// bpf_get_current_task_btf, bpf_task_pt_regs, atomic fetch-and-add and compare-and-swap; the
// sources say what each is replaced with). Load chooses it by probing (compat.go). Its types are
// the object's above: no Go types of its own.
//go:generate go tool bpf2go -tags linux -target amd64,arm64 -no-global-types gpeCompat ../../bpf/gpe.bpf.c -- -DGPE_COMPAT -mcpu=v3 -I../../bpf -I/usr/include/x86_64-linux-gnu -Wall -Werror -Wpadded
