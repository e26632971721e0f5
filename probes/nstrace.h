/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The record nstrace emits, one per namespace operation. Defined once, here:
 * the BPF programs fill it, native/batch.c reads it, and
 * nstrace/record/layout.py mirrors it with ctypes (tests/test_layout.py
 * checks that mirror against the object's BTF, field by field).
 *
 * Sent variable-length: the fixed head plus only the kernel-path steps used.
 * Includers bring the __u32 family of types (probes/core.h, <linux/types.h>).
 */
#ifndef NSTRACE_H
#define NSTRACE_H

/*
 * The record's codes are rows of record.def, and the hooked functions rows
 * of functions.def: these enums are made from them, and user space reads
 * the same rows (nstrace/kernel/defs.py).
 */
enum nstrace_ns_slot {
#define NSTRACE_NS_SLOT(name) NS_##name,
#include "record.def"
	NS_SLOTS,
};

enum nstrace_op {
#define NSTRACE_OP(name, value) OP_##name = value,
#include "record.def"
	OP_MAX,
};

enum nstrace_target_kind {
#define NSTRACE_TARGET(name, value) TARGET_##name = value,
#include "record.def"
};

enum nstrace_step_kind {
#define NSTRACE_STEP_KIND(name, value) STEP_##name = value,
#include "record.def"
};

enum nstrace_step_value {
#define NSTRACE_STEP_VALUE(name, value) VAL_##name = value,
#include "record.def"
};

enum nstrace_context {
#define NSTRACE_CONTEXT(name, value) CTX_##name = value,
#include "record.def"
};

enum nstrace_holder {
#define NSTRACE_HOLDER(name, value) HOLDER_##name = value,
#include "record.def"
};

/* NSTRACE_MAX_STEPS */
enum {
#define NSTRACE_SIZE(name, value) NSTRACE_##name = value,
#include "record.def"
};

/*
 * The in-flight table (probes/inflight.bpf.h): a thread's record under
 * construction is in the first of INFLIGHT_PROBES slots from
 * tid % INFLIGHT_SLOTS whose tid is its own. native/batch.c looks there too.
 */
#define INFLIGHT_SLOTS 1024	/* a power of two */
#define INFLIGHT_PROBES 4

/* A function's position in functions.def, from 0 */
enum {
#define HOOK(kind, fn, ...) FN_ROW_##fn,
#include "functions.def"
};

/* The hooked kernel functions, by their row in functions.def from 1 (0: none) */
enum nstrace_func {
#define HOOK(kind, fn, ...) FN_##fn = FN_ROW_##fn + 1,
#include "functions.def"
	FN_MAX,
};

/* One kernel function on the way in or out (fentry/fexit or kprobe/kretprobe). */
struct nstrace_step {
	__u64 ts_ns;
	__s64 ret;		/* VAL_INT, or -errno of an ERR_PTR */
	__u64 arg;		/* VAL_FLAGS, VAL_SWITCH */
	__u64 nsproxy_id;	/* VAL_NSPROXY, VAL_SWITCH */
	enum nstrace_func func;
	enum nstrace_step_kind kind;
	enum nstrace_step_value what;
	__u32 inum;		/* VAL_NS, VAL_NS_ARG */
	__u32 refs;		/* the nsproxy's or namespace's count, where readable (0: not) */
	__u32 old_refs;		/* VAL_SWITCH: the old nsproxy's count (1: the switch frees it) */
};

struct nstrace_ns_set {
	__u32 inum[NS_SLOTS];
	__u64 ns_id[NS_SLOTS];	/* 0 where the kernel has no ns_common.ns_id */
	__u64 nsproxy_id;	/* keyed hash of task->nsproxy, not an address */
	__u32 nsproxy_refs;
	__u32 valid;
};

struct nstrace_event {
	__u64 enter_ns;		/* bpf_ktime_get_ns() at syscall entry */
	__u64 exit_ns;		/* ... and at syscall exit */
	__u64 start_time_ns;	/* the caller's task->start_boottime: tells pid reuse apart */
	__u64 child_start_ns;	/* clone: the child's task->start_boottime */
	__u64 raw_flags;	/* clone/clone3/unshare flags, setns nstype */
	__s64 ret;
	__u64 cgroup_id;	/* the caller's cgroup v2 id at the call (bpf_get_current_cgroup_id()) */
	__u64 lived_ns;		/* free: since its birth was seen (0: born before, or unseen) */
	enum nstrace_op op;
	__u32 pid;		/* tgid */
	__u32 tid;
	__u32 ppid;
	__u32 uid;		/* real uid, as in the init user ns */
	__u32 child_pid;	/* clone: the child's tgid in the init pid ns */
	__u32 child_tid;
	__s32 exit_signal;	/* clone: low byte of flags; clone3: args.exit_signal */
	__s32 setns_fd;
	enum nstrace_target_kind target_kind;
	__u32 target_nstype;	/* nsfs: CLONE_NEW* of the namespace behind the fd */
	__u32 target_inum;
	__u64 target_ns_id;
	__u32 target_pid;	/* pidfd: the pid it refers to, init pid ns */
	__u32 nsteps;
	__u32 steps_dropped;	/* steps beyond NSTRACE_MAX_STEPS */
	char comm[16];
	__u16 context;		/* free: enum nstrace_context (fills the hole before the sets) */
	__u16 holder;		/* free: enum nstrace_holder */
	struct nstrace_ns_set before;
	struct nstrace_ns_set after;	/* clone: the child's */
	struct nstrace_step steps[NSTRACE_MAX_STEPS];
};

/* A record's head: what every record carries, the steps after it only as many as used */
#define NSTRACE_HEAD_SIZE __builtin_offsetof(struct nstrace_event, steps)

#endif /* NSTRACE_H */
