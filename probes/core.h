/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The few kernel types nstrace reads, declared by hand for CO-RE.
 *
 * Why not a vmlinux.h generated from BTF: it is 130k lines tied to the build
 * machine's kernel, and nstrace needs about twenty fields. Every record below
 * carries preserve_access_index, so libbpf relocates each access against the
 * running kernel's BTF at load time: layouts, offsets and member order here
 * do not matter, only member names and types. Fields that exist only on some
 * kernels (ns_common.ns_id, ns_common.ns_type) are read behind
 * bpf_core_field_exists(), never behind a version check.
 *
 * Checked against the BTF of 6.1 (Debian 12), 6.12 (Debian 13) and 6.18.
 */
#ifndef NSTRACE_CORE_H
#define NSTRACE_CORE_H

/* bpf_tracing.h reads kernel pt_regs member names (di, si, ax) when this is set, as with a generated vmlinux.h. */
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
#define true 1
#define false 0
typedef __u64 u64;
typedef __u32 u32;

/* bpf_helper_defs.h names these; they are the BPF map types we use. */
enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PROG_ARRAY = 3,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};
/*
 * include/uapi/linux/bpf.h: only for bpf_core_enum_value_exists(), which asks
 * the running kernel's BTF whether it has the helper (the value is relocated).
 */
enum bpf_func_id {
	BPF_FUNC_get_current_task_btf = 158,	/* 5.11 */
};
enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
};
enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};
enum {
	BPF_RB_AVAIL_DATA = 0,
};
enum {
	BPF_F_NO_PREALLOC = 1,
};

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

typedef struct { int counter; } atomic_t;
typedef struct { atomic_t refs; } refcount_t;
typedef struct { unsigned int val; } kuid_t;

struct pt_regs {
	unsigned long di, si, dx, cx, r8, r9, ax, sp, ip;
};

struct trace_entry {
	unsigned short type;
};

/* include/trace/events/syscalls.h: the context of syscalls:sys_{enter,exit}_* */
struct trace_event_raw_sys_enter {
	struct trace_entry ent;
	long id;
	unsigned long args[6];
};

struct trace_event_raw_sys_exit {
	struct trace_entry ent;
	long id;
	long ret;
};

struct ns_common;

/* include/linux/proc_ns.h; .type is gone in 6.18 (moved to ns_common.ns_type) */
struct proc_ns_operations {
	const char *name;
	int type;
};

/*
 * include/linux/ns_common.h. The count of every type's namespace is here
 * from 6.1 (count), renamed __ns_ref in 6.18; 5.10 keeps it in each type's
 * own struct (a kref or a refcount_t of its own name), not read.
 */
struct ns_common {
	const struct proc_ns_operations *ops;
	unsigned int inum;
	refcount_t count;	/* 6.1 - 6.17 */
	refcount_t __ns_ref;	/* 6.18+ (7.x: inside an anonymous struct) */
	u32 ns_type;	/* 6.18+ */
	u64 ns_id;	/* 6.18+: never reused, unlike inum */
};

struct kref { refcount_t refcount; };
struct rcu_head { void *next; };

/* kref: uts and time namespaces kept their count there up to 5.10 (free_*_ns() got the kref) */
struct user_namespace { struct ns_common ns; };
struct uts_namespace { struct kref kref; struct ns_common ns; };
struct ipc_namespace { struct ns_common ns; };
struct mnt_namespace { struct ns_common ns; };
struct net { struct ns_common ns; };
struct cgroup_namespace { struct ns_common ns; };
struct time_namespace { struct kref kref; struct ns_common ns; };

struct pid_namespace {
	unsigned int level;
	struct rcu_head rcu;	/* delayed_free_pidns() is handed this */
	struct ns_common ns;
};

/* include/linux/nsproxy.h; count is atomic_t up to 6.1, refcount_t later */
struct nsproxy {
	refcount_t count;
	struct uts_namespace *uts_ns;
	struct ipc_namespace *ipc_ns;
	struct mnt_namespace *mnt_ns;
	struct pid_namespace *pid_ns_for_children;
	struct net *net_ns;
	struct time_namespace *time_ns;
	struct time_namespace *time_ns_for_children;
	struct cgroup_namespace *cgroup_ns;
};

struct nsproxy___atomic {
	atomic_t count;
};

struct upid {
	int nr;
	struct pid_namespace *ns;
};

/* include/linux/pid.h: numbers[level] is the pid as seen from its own ns */
struct pid {
	unsigned int level;
	struct upid numbers[1];
};

struct cred {
	kuid_t uid;
	struct user_namespace *user_ns;
};

struct super_block {
	unsigned long s_magic;
};

struct inode {
	struct super_block *i_sb;
	void *i_private;
};

struct qstr {
	const unsigned char *name;
};

struct dentry {
	struct qstr d_name;
};

struct path {
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	const void *f_op;	/* const struct file_operations *: only compared */
	struct inode *f_inode;
	void *private_data;
};

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
};

struct files_struct {
	struct fdtable *fdt;
};

/* the caller's cgroup v2 directory: kernel/cgroup/cgroup.c task_dfl_cgroup() and cgroup_id() */
struct kernfs_node { u64 id; };
struct cgroup { struct kernfs_node *kn; };
struct css_set { struct cgroup *dfl_cgrp; };

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	u64 start_boottime;	/* ns since boot, CLOCK_BOOTTIME: what /proc/<pid>/stat shows */
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct pid *thread_pid;
	const struct cred *real_cred;
	struct files_struct *files;
	struct nsproxy *nsproxy;
	struct css_set *cgroups;
	int exit_signal;	/* what the parent is sent when it exits: SIGCHLD for fork and vfork */
};

#pragma clang attribute pop

#endif /* NSTRACE_CORE_H */
