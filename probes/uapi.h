/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What the BPF side knows of the kernel's user-space ABI: the flags of
 * uapi.def, and the constants only C reads (file system magics, syscall
 * numbers, struct clone_args). The same on every kernel nstrace runs on.
 */
#ifndef NSTRACE_UAPI_H
#define NSTRACE_UAPI_H

#include "core.h"

/* CSIGNAL, CLONE_*, UNSHARE_*, and the open_tree/fsmount flags (OPEN_TREE_NAMESPACE, ...): uapi.def */
enum {
#define NSTRACE_CLONE_MASK(name, value) name = value,
#define NSTRACE_CLONE_FLAG(name, value) name = value,
#define NSTRACE_UNSHARE_FLAG(name, value) name = value,
#define NSTRACE_OP_FLAG(op, name, value) name = value,
#include "uapi.def"
};

/* The CLONE_NEW* flag of each namespace type, by the name of its /proc entry (uapi.def): NS_TYPE_uts */
enum {
#define NSTRACE_NS_TYPE(type, flag) NS_TYPE_##type = flag,
#include "uapi.def"
};

/*
 * The clone flags that make a namespace, but CLONE_NEWTIME (inside clone()'s
 * signal byte): a fork with none of them is plain. CLONE_EMPTY_MNTNS (7.1)
 * makes a mount namespace alone: kernel_clone() adds CLONE_NEWNS only after
 * the syscall's entry (kernel/fork.c, 7.2.13).
 */
#define CLONE_NEW_ANY_BUT_TIME	(CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | \
				 CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | \
				 CLONE_EMPTY_MNTNS)

/* include/uapi/linux/magic.h */
#define NSFS_MAGIC		0x6e736673
#define PID_FS_MAGIC		0x50494446	/* pidfs, 6.9+ */
#define ANON_INODE_FS_MAGIC	0x09041934	/* pidfds before pidfs */

/*
 * x86-64 syscall numbers, arch/x86/entry/syscalls/syscall_64.tbl (the same
 * on every kernel): how the shared bodies of syscalls.bpf.c tell their
 * callers apart.
 */
#define NR_clone	56
#define NR_unshare	272
#define NR_setns	308
#define NR_open_tree	428
#define NR_fsmount	432
#define NR_clone3	435
#define NR_open_tree_attr 467

/* struct clone_args, include/uapi/linux/sched.h: user memory, plain layout */
struct clone_args {
	__u64 flags;
	__u64 pidfd;
	__u64 child_tid;
	__u64 parent_tid;
	__u64 exit_signal;
};

#endif /* NSTRACE_UAPI_H */
