/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What both BPF files share: the maps, the options user space sets before
 * load, and the readers that turn a task into a namespace snapshot.
 * syscalls.bpf.c defines the maps; kfuncs.bpf.c declares them extern and the
 * static linker (bpftool gen object) joins the two into one object.
 */
#ifndef NSTRACE_COMMON_BPF_H
#define NSTRACE_COMMON_BPF_H

#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "nstrace.h"

/* include/uapi/linux/magic.h */
#define NSFS_MAGIC		0x6e736673
#define PID_FS_MAGIC		0x50494446	/* pidfs, 6.9+ */
#define ANON_INODE_FS_MAGIC	0x09041934	/* pidfds before pidfs */

/* include/uapi/linux/sched.h */
#define CSIGNAL			0x000000ff
#define CLONE_NEWTIME		0x00000080
#define CLONE_NEWNS		0x00020000
#define CLONE_NEWCGROUP		0x02000000
#define CLONE_NEWUTS		0x04000000
#define CLONE_NEWIPC		0x08000000
#define CLONE_NEWUSER		0x10000000
#define CLONE_NEWPID		0x20000000
#define CLONE_NEWNET		0x40000000
#define CLONE_NEW_ANY_BUT_TIME	(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | \
				 CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)

#define MAX_ERRNO		4095

/* Options, set by user space between open and load (nstrace/loader.py). */
extern const volatile bool trace_all;		/* keep plain forks too */
extern const volatile __u32 filter_tgid;	/* 0: every process */
extern const volatile __u64 id_key;		/* secret for nsproxy ids */
extern const volatile bool raw_addresses;	/* show kernel addresses */
extern const volatile __u32 wakeup_bytes;	/* 0: wake the reader per record */
extern const volatile bool kernel_path;		/* function probes are loaded */

/* Counters user space reads live through the mmaped .bss. */
extern __u64 lost_events;	/* ring buffer full: record dropped */
extern __u64 lost_inflight;	/* in-flight table full: op not traced */
extern __u64 lost_tracked;	/* --pid descendant table full: that process not followed */

#define NSTRACE_HEAD_SIZE __builtin_offsetof(struct nstrace_event, steps)

/*
 * Records under construction, by tid, between syscall entry and exit: the
 * head of struct nstrace_event only, so that entering a syscall copies a
 * few hundred bytes, not the whole step array.
 */
struct inflight_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);	/* threads inside clone/unshare/setns at the same moment */
	__type(key, __u32);
	__uint(value_size, NSTRACE_HEAD_SIZE);
};
extern struct inflight_map inflight SEC(".maps");

/* The kernel path of an in-flight record, made by its first function step. */
struct nstrace_path {
	__u32 nsteps;
	__u32 dropped;
	struct nstrace_step steps[NSTRACE_MAX_STEPS];
};

struct paths_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct nstrace_path);
};
extern struct paths_map paths SEC(".maps");

/*
 * An nsproxy or namespace pointer as a short id: a keyed splitmix64
 * finalizer cut to 32 bits. Stable for the life of the object within one
 * nstrace run, equal for equal pointers, and not an address.
 */
static __always_inline __u64 ptr_id(const void *p)
{
	__u64 x = (__u64)p;

	if (!x)
		return 0;
	if (raw_addresses)
		return x;
	x ^= id_key;
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return (x >> 32) | 1;	/* never 0: 0 means "no nsproxy" */
}

static __always_inline void read_ns(struct nstrace_ns_set *s, int slot,
				    const struct ns_common *ns)
{
	s->inum[slot] = BPF_CORE_READ(ns, inum);
	if (bpf_core_field_exists(ns->ns_id))
		s->ns_id[slot] = BPF_CORE_READ(ns, ns_id);
}

/* The CLONE_NEW* type of a namespace: ns_common.ns_type since 6.18, else ops->type. */
static __always_inline __u32 ns_type(const struct ns_common *ns)
{
	if (bpf_core_field_exists(ns->ns_type))
		return BPF_CORE_READ(ns, ns_type);
	return BPF_CORE_READ(ns, ops, type);
}

/* nsproxy->count is atomic_t (<= 6.1) or refcount_t: both an int at offset 0. */
static __always_inline __u32 nsproxy_refs(const struct nsproxy *nsp)
{
	int refs = 0;

	bpf_core_read(&refs, sizeof(refs), &nsp->count);
	return refs;
}

/* task_active_pid_ns(): kernel/pid.c, the ns of the task's struct pid at its own level */
static __always_inline const struct pid_namespace *active_pid_ns(struct task_struct *t)
{
	struct pid *pid = BPF_CORE_READ(t, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);
	struct upid up = {};

	bpf_core_read(&up, sizeof(up), &pid->numbers[level]);
	return up.ns;
}

/* What /proc/<pid>/ns/ would show for task t, read from the kernel's own pointers. */
static __always_inline void snapshot(struct nstrace_ns_set *s, struct task_struct *t)
{
	struct nsproxy *nsp = BPF_CORE_READ(t, nsproxy);
	const struct pid_namespace *pidns;
	const struct user_namespace *userns;

	if (!nsp)	/* exiting task: exit_task_namespaces() already ran */
		return;
	read_ns(s, NS_MNT, &BPF_CORE_READ(nsp, mnt_ns)->ns);
	read_ns(s, NS_UTS, &BPF_CORE_READ(nsp, uts_ns)->ns);
	read_ns(s, NS_IPC, &BPF_CORE_READ(nsp, ipc_ns)->ns);
	pidns = active_pid_ns(t);
	read_ns(s, NS_PID, &pidns->ns);
	read_ns(s, NS_PID_FOR_CHILDREN, &BPF_CORE_READ(nsp, pid_ns_for_children)->ns);
	read_ns(s, NS_NET, &BPF_CORE_READ(nsp, net_ns)->ns);
	userns = BPF_CORE_READ(t, real_cred, user_ns);
	read_ns(s, NS_USER, &userns->ns);
	read_ns(s, NS_CGROUP, &BPF_CORE_READ(nsp, cgroup_ns)->ns);
	read_ns(s, NS_TIME, &BPF_CORE_READ(nsp, time_ns)->ns);
	read_ns(s, NS_TIME_FOR_CHILDREN, &BPF_CORE_READ(nsp, time_ns_for_children)->ns);
	s->nsproxy_id = ptr_id(nsp);
	s->nsproxy_refs = nsproxy_refs(nsp);
	s->valid = 1;
}

static __always_inline bool is_err_value(long v)
{
	return (unsigned long)v >= (unsigned long)-MAX_ERRNO;
}

#endif /* NSTRACE_COMMON_BPF_H */
