/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The record nstrace emits, one per namespace operation. Defined once, here:
 * the BPF programs fill it, and nstrace/events.py mirrors it with ctypes (a
 * test checks that mirror against this object's BTF, field by field).
 *
 * Sent variable-length: the fixed head plus only the kernel-path steps used.
 */
#ifndef NSTRACE_H
#define NSTRACE_H

/* Slots of a namespace snapshot, in the order of /proc/<pid>/ns entries. */
enum nstrace_ns_slot {
	NS_MNT,
	NS_UTS,
	NS_IPC,
	NS_PID,			/* the task's active pid ns: fixed for life */
	NS_PID_FOR_CHILDREN,	/* nsproxy->pid_ns_for_children */
	NS_NET,
	NS_USER,		/* cred->user_ns */
	NS_CGROUP,
	NS_TIME,		/* nsproxy->time_ns */
	NS_TIME_FOR_CHILDREN,	/* nsproxy->time_ns_for_children */
	NS_SLOTS,
};

enum nstrace_op {
	OP_CLONE = 1,
	OP_CLONE3 = 2,
	OP_UNSHARE = 3,
	OP_SETNS = 4,
	OP_EXEC = 5,		/* an execve that moved its caller (time_for_children becomes time, 6.12+) */
	OP_OPEN_TREE = 6,	/* open_tree(_attr)(OPEN_TREE_NAMESPACE): a new mount ns behind an fd (7.x) */
	OP_FSMOUNT = 7,		/* fsmount(FSMOUNT_NAMESPACE): likewise (7.x) */
	OP_FREE = 8,		/* a namespace freed: target_* say which, lived_ns for how long it lived */
	OP_FORK = 9,		/* fork(2) whose child entered a namespace: seen from task_newtask alone */
	OP_VFORK = 10,		/* vfork(2), likewise (dash, Python's subprocess) */
	OP_MAX,
};

/*
 * What the fd handed to setns() turned out to be; for open_tree and fsmount,
 * what the fd they return is (nsfs: the new mount namespace).
 */
enum nstrace_target_kind {
	TARGET_NONE = 0,
	TARGET_NSFS = 1,	/* /proc/<pid>/ns/<type> or a bind mount of it */
	TARGET_PIDFD = 2,
	TARGET_OTHER = 3,	/* anything else: setns will fail with EINVAL */
	TARGET_BADFD = 4,	/* not an open fd: setns will fail with EBADF */
};

#define NSTRACE_MAX_STEPS 48

/*
 * The in-flight table (probes/common.bpf.h): a thread's record under
 * construction is in the first of INFLIGHT_PROBES slots from
 * tid % INFLIGHT_SLOTS whose tid is its own. native/batch.c looks there too.
 */
#define INFLIGHT_SLOTS 1024	/* a power of two */
#define INFLIGHT_PROBES 4

/*
 * Kernel functions of the namespace path, in the order kfuncs.bpf.c defines
 * them. nstrace/record/steps.py FUNCTIONS mirrors this enum by value, and
 * tests/test_layout.py holds the mirror to the object's BTF;
 * kernel-notes/paths.toml says what each function does.
 */
enum nstrace_func {
	FN_copy_namespaces = 1,
	FN_create_new_namespaces,
	FN_copy_mnt_ns,
	FN_copy_utsname,
	FN_copy_ipcs,
	FN_copy_pid_ns,
	FN_copy_cgroup_ns,
	FN_copy_net_ns,
	FN_copy_time_ns,
	FN_timens_on_fork,
	FN_create_user_ns,
	FN_unshare_userns,
	FN_unshare_nsproxy_namespaces,
	FN_switch_task_namespaces,
	FN___x64_sys_setns,
	FN_validate_nsset,
	FN_commit_nsset,
	FN_free_nsproxy,
	FN_ksys_unshare,
	FN_put_nsset,
	FN_timens_commit,
	FN_mntns_install,
	FN_utsns_install,
	FN_ipcns_install,
	FN_pidns_install,
	FN_cgroupns_install,
	FN_netns_install,
	FN_userns_install,
	FN_timens_install,
	/* kernel/nsproxy.c (6.12+): exec moves the caller into time_for_children */
	FN_exec_task_namespaces,
	/* deaths: what frees a namespace, and the context that drops the references */
	FN_nsproxy_free,	/* free_nsproxy renamed (7.x) */
	FN_cleanup_net,		/* net/core/net_namespace.c: the deferred work that frees net namespaces */
	FN___ns_tree_add_raw,	/* kernel/nstree.c (6.18+): every namespace enters the tree here */
	FN___ns_tree_remove,	/* ... and leaves it here, as it is freed */
	FN_free_uts_ns,		/* before the tree: each type's own */
	FN_mq_clear_sbinfo,
	FN_free_mnt_ns,
	FN_delayed_free_pidns,
	FN___put_net,
	FN_retire_userns_sysctls,
	FN_free_cgroup_ns,
	FN_free_time_ns,
	/* fs/namespace.c (7.x): open_tree(OPEN_TREE_NAMESPACE) and fsmount(FSMOUNT_NAMESPACE) */
	FN_vfs_open_tree,
	FN_create_new_namespace,
	FN_alloc_mnt_ns,
	FN_MAX,
};

enum nstrace_step_kind {
	STEP_ENTER = 1,
	STEP_EXIT = 2,
};

/* What a step's arg, ret, inum and nsproxy fields hold. */
enum nstrace_step_value {
	VAL_NONE = 0,
	VAL_FLAGS = 1,		/* arg: CLONE_* flags */
	VAL_NSPROXY = 2,	/* nsproxy_id, refs: the nsproxy passed or returned */
	VAL_SWITCH = 3,		/* arg, old_refs: the old nsproxy's id and count; nsproxy_id, refs: the new one's */
	VAL_INT = 4,		/* ret: 0 or -errno */
	VAL_NS = 5,		/* inum, refs: the namespace returned (ret: -errno on error) */
	VAL_NS_ARG = 6,		/* inum: the namespace passed in (an ->install()) */
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
	struct nstrace_ns_set before;
	struct nstrace_ns_set after;	/* clone: the child's */
	struct nstrace_step steps[NSTRACE_MAX_STEPS];
};

#endif /* NSTRACE_H */
