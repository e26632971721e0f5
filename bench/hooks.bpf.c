// SPDX-License-Identifier: GPL-2.0
/*
 * Count-only programs on every hook set that could carry nstrace's syscall
 * layer (clone, clone3, unshare, setns: entry and exit), so that the
 * benchmark can price the hook itself, apart from anything nstrace does in
 * it. Compiled at bench time (bench/hooks.py) like probes/Makefile does,
 * loaded one set at a time through nstrace.bpf.loader.BpfObject with the other
 * sets' programs switched off (autoload), and attached one by one.
 *
 *   tp_*      syscalls:sys_{enter,exit}_{clone,clone3,unshare,setns}: the
 *             perf-event tracepoints nstrace uses today (BPF_PROG_TYPE_TRACEPOINT)
 *   raw_*     raw_syscalls:sys_enter/sys_exit as raw tracepoints
 *             (BPF_PROG_TYPE_RAW_TRACEPOINT): the program runs on every
 *             syscall of the machine and returns early on the number
 *   fentry_*, fexit_*  trampolines on __x64_sys_{clone,clone3,unshare,setns}
 *             (BPF_PROG_TYPE_TRACING): only those four functions pay
 *   btf_*     tp_btf/sys_enter and sys_exit (BPF_PROG_TYPE_TRACING too): the
 *             raw tracepoints with typed arguments
 *
 * Every program only bumps a per-CPU counter, as bpftrace's count() does, so
 * its cost is the least any tracer on that hook set can pay.
 */

/* No vmlinux.h and no kernel headers on our machines: the few types by hand. */
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef int __s32;
typedef long long __s64;
typedef unsigned short __u16;
typedef unsigned char __u8;
typedef __u32 __be32;
typedef __u16 __be16;
typedef __u32 __wsum;

enum bpf_map_type {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
};

#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/* Only orig_ax is read; CO-RE relocates it against the running kernel's BTF. */
struct pt_regs {
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

/* include/uapi/linux/bpf.h: a raw tracepoint's context, the tracepoint's arguments as u64 */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

/* arch/x86/entry/syscalls/syscall_64.tbl: the bench runs on x86_64 only (hooks.py checks) */
#define NR_clone	56
#define NR_setns	308
#define NR_unshare	272
#define NR_clone3	435

char LICENSE[] SEC("license") = "GPL";

/* One slot per hook; user space reads it to show that the programs fired. */
enum { SLOT_ENTER, SLOT_EXIT, NSLOTS };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NSLOTS);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

static __always_inline int bump(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&hits, &slot);

	if (n)
		*n += 1;
	return 0;
}

static __always_inline int ours(long nr)
{
	return nr == NR_clone || nr == NR_clone3 || nr == NR_unshare || nr == NR_setns;
}

/* (a) the per-syscall tracepoints */
#define TP(kind, call, slot)								\
SEC("tracepoint/syscalls/sys_" #kind "_" #call)						\
int tp_##kind##_##call(void *ctx) { return bump(slot); }
TP(enter, clone, SLOT_ENTER)
TP(enter, clone3, SLOT_ENTER)
TP(enter, unshare, SLOT_ENTER)
TP(enter, setns, SLOT_ENTER)
TP(exit, clone, SLOT_EXIT)
TP(exit, clone3, SLOT_EXIT)
TP(exit, unshare, SLOT_EXIT)
TP(exit, setns, SLOT_EXIT)

/*
 * (b) raw_syscalls. include/trace/events/syscalls.h: sys_enter(struct pt_regs
 * *regs, long id), sys_exit(struct pt_regs *regs, long ret). At exit the number
 * is regs->orig_ax, which is what the kernel's own syscall_get_nr() returns on
 * x86 (arch/x86/include/asm/syscall.h), read here with bpf_probe_read_kernel
 * because a raw tracepoint's pointers are untyped.
 */
SEC("raw_tp/sys_enter")
int raw_enter(struct bpf_raw_tracepoint_args *ctx)
{
	if (!ours((long)ctx->args[1]))
		return 0;
	return bump(SLOT_ENTER);
}

SEC("raw_tp/sys_exit")
int raw_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];

	if (!ours((long)BPF_CORE_READ(regs, orig_ax)))
		return 0;
	return bump(SLOT_EXIT);
}

/* (c) trampolines on the syscall functions themselves (arch/x86 syscall wrappers) */
#define FN(kind, call, slot)								\
SEC(#kind "/__x64_sys_" #call)								\
int kind##_##call(__u64 *ctx) { return bump(slot); }
FN(fentry, clone, SLOT_ENTER)
FN(fentry, clone3, SLOT_ENTER)
FN(fentry, unshare, SLOT_ENTER)
FN(fentry, setns, SLOT_ENTER)
FN(fexit, clone, SLOT_EXIT)
FN(fexit, clone3, SLOT_EXIT)
FN(fexit, unshare, SLOT_EXIT)
FN(fexit, setns, SLOT_EXIT)

/* (d) BTF-typed raw tracepoints: like (b), but regs is a typed pointer read directly */
SEC("tp_btf/sys_enter")
int btf_enter(__u64 *ctx)
{
	if (!ours((long)ctx[1]))
		return 0;
	return bump(SLOT_ENTER);
}

SEC("tp_btf/sys_exit")
int btf_exit(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];

	if (!ours((long)regs->orig_ax))
		return 0;
	return bump(SLOT_EXIT);
}
