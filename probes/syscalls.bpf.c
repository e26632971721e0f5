// SPDX-License-Identifier: GPL-2.0
/*
 * The syscall layer: one record per clone, clone3, unshare and setns, from
 * the syscalls:sys_{enter,exit}_* tracepoints plus the task_newtask raw
 * tracepoint for the child of a clone. Needs nothing but tracepoints and
 * BTF, so it runs on every kernel >= 5.8 (ring buffer), ours included.
 */
#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "nstrace.h"
#include "uapi.h"
#include "options.bpf.h"
#include "maps.bpf.h"
#include "inflight.bpf.h"
#include "ptr_id.bpf.h"
#include "ns_read.bpf.h"
#include "snapshot.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile bool trace_all = false;
const volatile __u32 filter_tgid = 0;
const volatile __u64 id_key = 0;
const volatile bool raw_addresses = false;
const volatile __u32 wakeup_bytes = 0;
const volatile bool kernel_path = false;
const volatile __u32 task_struct_btf_id = 0;

__u64 lost_events = 0;
__u64 lost_inflight = 0;
__u64 lost_tracked = 0;

struct events_map events SEC(".maps");

struct inflight_map inflight SEC(".maps");
struct paths_map paths SEC(".maps");
struct ptr_gen_map ptr_gens SEC(".maps");	/* ptr_id.bpf.h */

/*
 * --pid: the traced process and every descendant born while tracing. Not an
 * LRU: an evicted live descendant would vanish from the trace uncounted.
 * Entries leave when the process exits (sched_process_exit below); a full
 * table is counted in lost_tracked.
 */
struct tracked_map tracked SEC(".maps");

/*
 * The f_op of nsfs files, learned from the first one resolve_setns_fd()
 * meets: every nsfs file has f_op == &ns_file_operations (fs/nsfs.c gives
 * each nsfs inode that i_fop, do_dentry_open() copies it into the file;
 * 6.1, 6.18), an address in the kernel image, fixed for the boot. Once known,
 * one comparison stands in for two reads (inode->i_sb->s_magic). A map, not
 * .bss: user space maps .bss, and this is a kernel address.
 */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} nsfs_fop SEC(".maps");

/* Keeps struct nstrace_event in the object's BTF: nstrace checks its ctypes mirror against it. */
const struct nstrace_event *btf_anchor_event __attribute__((unused));

/*
 * The caller as BTF pointers (5.11+): the task and the task_struct pointer
 * fields a record reads, each loaded once per program, because each such
 * load may cost the verifier milliseconds (caller.bpf.h caller_task()). All
 * NULL on kernels without bpf_get_current_task_btf(), whose readers use helpers.
 */
struct caller {
	struct task_struct *t;
	struct nsproxy *nsp;		/* t->nsproxy */
	struct pid *pid;		/* t->thread_pid */
	const struct cred *cred;	/* t->real_cred */
};

/*
 * A fork without CLONE_NEW* still moves the child into a namespace when the
 * parent's pid_for_children or time_for_children differs from its own (after
 * unshare(CLONE_NEWPID) or setns into a pid/time ns): that fork "joins".
 * kernel/fork.c copy_process() -> alloc_pid(pid_ns_for_children), and
 * kernel/time/namespace.c timens_on_fork(), checked against 6.1 and 6.18.
 * Runs on every plain fork of the machine, so: loads through BTF pointers,
 * and a helper call only for a task in a nested pid namespace.
 */
/* The same for task t, by helper calls: no BTF pointer at hand. */
static __always_inline bool task_fork_enters_namespace(struct task_struct *t)
{
	struct nsproxy *nsp = BPF_CORE_READ(t, nsproxy);

	return BPF_CORE_READ(nsp, pid_ns_for_children) != active_pid_ns(t) ||
	       BPF_CORE_READ(nsp, time_ns_for_children) != BPF_CORE_READ(nsp, time_ns);
}

static __always_inline bool fork_enters_namespace(struct nsproxy *nsp, struct pid *pid)
{
	if (have_task_btf()) {
		unsigned int level = pid->level;
		const struct pid_namespace *active = NULL;

		if (nsp->time_ns_for_children != nsp->time_ns)
			return true;
		if (level == 0) {
			active = pid->numbers[0].ns;
			/* else clang merges this load with the stack load of the
			 * other branch, and the verifier wants one pointer type
			 * per instruction */
			barrier_var(active);
		} else {
			bpf_core_read(&active, sizeof(active), &pid->numbers[level].ns);
		}
		return nsp->pid_ns_for_children != active;
	} else {
		return task_fork_enters_namespace((struct task_struct *)bpf_get_current_task());
	}
}

/* nsp, pid: the caller's task->nsproxy and ->thread_pid as BTF pointers (NULL before 5.11) */
static __always_inline bool plain_fork(__u64 flags, struct nsproxy *nsp, struct pid *pid)
{
	return !trace_all && !(flags & CLONE_NEW_ANY_BUT_TIME) && !fork_enters_namespace(nsp, pid);
}

/* f->f_op and f->f_inode in one read: neighbours in struct file on 6.1, 6.18 and 7.2. */
static __always_inline void file_op_inode(const struct file *f, __u64 *op, struct inode **inode)
{
	__u32 o_op = bpf_core_field_offset(f->f_op), o_inode = bpf_core_field_offset(f->f_inode);
	__u32 lo = (o_op < o_inode ? o_op : o_inode) & ~7;
	__u32 hi = (o_op > o_inode ? o_op : o_inode) + 8;
	__u64 buf[8];

	if (hi - lo > sizeof(buf)) {
		bpf_core_read(op, sizeof(*op), &f->f_op);
		bpf_core_read(inode, sizeof(*inode), &f->f_inode);
		return;
	}
	bpf_probe_read_kernel(buf, hi - lo, (void *)f + lo);	/* zeroes buf on a fault */
	*op = *(__u64 *)((void *)buf + (o_op - lo));
	*inode = *(struct inode **)((void *)buf + (o_inode - lo));
}

/*
 * Fill what setns() will do with this fd, before the kernel resolves it.
 * fds is the fd array of the caller's fdtable and max_fds its size; the
 * file is read with helper calls: a struct file ** is a plain number to the
 * verifier even when the fdtable is a BTF pointer.
 */
static __always_inline void resolve_setns_fd(struct nstrace_event *e, int fd,
					     unsigned int max_fds, struct file **fds)
{
	struct inode *inode = NULL;
	struct file *f = NULL;
	unsigned long magic;
	char name[8] = {};
	__u32 zero = 0;
	__u64 fop = 0;
	__u64 *nsfs;

	e->target_kind = TARGET_BADFD;
	if (fd < 0 || (unsigned int)fd >= max_fds)
		return;
	bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]);
	if (!f)
		return;

	file_op_inode(f, &fop, &inode);
	nsfs = bpf_map_lookup_elem(&nsfs_fop, &zero);
	if (nsfs && *nsfs && *nsfs == fop) {
		magic = NSFS_MAGIC;
	} else {
		magic = BPF_CORE_READ(inode, i_sb, s_magic);
		if (nsfs && magic == NSFS_MAGIC)
			*nsfs = fop;
	}
	e->target_kind = TARGET_OTHER;
	if (magic == NSFS_MAGIC) {
		/* fs/nsfs.c: an nsfs inode's i_private is its ns_common */
		const struct ns_common *ns = BPF_CORE_READ(inode, i_private);

		e->target_kind = TARGET_NSFS;
		ns_fields(ns, &e->target_inum, &e->target_ns_id, &e->target_nstype);
		return;
	}

	struct pid *pid = NULL;

	if (magic == PID_FS_MAGIC) {
		/* fs/pidfs.c (6.9+): the inode's i_private is the struct pid */
		pid = BPF_CORE_READ(inode, i_private);
	} else if (magic == ANON_INODE_FS_MAGIC) {
		/* kernel/pid.c before pidfs: an anon inode file named "[pidfd]" */
		bpf_probe_read_kernel_str(name, sizeof(name),
					  BPF_CORE_READ(f, f_path.dentry, d_name.name));
		if (__builtin_memcmp(name, "[pidfd]", 8) == 0)
			pid = BPF_CORE_READ(f, private_data);
	}
	if (pid) {
		e->target_kind = TARGET_PIDFD;
		e->target_pid = BPF_CORE_READ(pid, numbers[0].nr);
	}
}

/*
 * bpf_get_current_comm() without the call: strscpy_pad(buf, comm, 16)
 * (kernel/bpf/helpers.c), up to 15 bytes before the first NUL and zeros
 * after, from two 8-byte loads. (w - 0x01..01) & ~w & 0x80..80 flags the
 * zero bytes of w; the lowest flag is exactly the first zero byte.
 */
static __always_inline void comm_copy(char *dst, const char *src)
{
	__u64 lo = *(const __u64 *)src, hi = *(const __u64 *)(src + 8);
	__u64 z = (lo - 0x0101010101010101ULL) & ~lo & 0x8080808080808080ULL;

	if (z) {
		lo &= ((z & -z) >> 7) - 1;
		hi = 0;
	} else {
		z = (hi - 0x0101010101010101ULL) & ~hi & 0x8080808080808080ULL;
		if (z)
			hi &= ((z & -z) >> 7) - 1;
		hi &= 0x00ffffffffffffffULL;	/* the 16th byte is always NUL */
	}
	__builtin_memcpy(dst, &lo, sizeof(lo));
	__builtin_memcpy(dst + 8, &hi, sizeof(hi));
}

/*
 * The fields of a new in-flight record that its entry does not write and
 * that may stay unwritten (the clone child, ret, the setns target, the step
 * counts, the bytes after comm, after.valid), zeroed. The slot still holds
 * the last record's bytes; writing each field once instead of zeroing the
 * whole 416-byte head first saves the stores to the fields written anyway,
 * to lines that are cold in the churn benchmark (bench: kernel ns per probe
 * hit).
 */
#define HEAD_OFF(f) __builtin_offsetof(struct nstrace_event, f)
_Static_assert(HEAD_OFF(uid) % 8 == 0 && HEAD_OFF(comm) - HEAD_OFF(uid) == 52,
	       "uid .. steps_dropped: 13 u32 from an 8-byte boundary");
_Static_assert(HEAD_OFF(before) - HEAD_OFF(comm) == 16 + 4, "4 bytes of padding after comm");

static __always_inline void clear_unwritten(struct nstrace_event *e)
{
	e->child_start_ns = 0;
	e->ret = 0;
	__builtin_memset((__u64 *)&e->uid, 0, 48);	/* uid .. nsteps */
	e->steps_dropped = 0;
	e->lived_ns = 0;
	*(__u32 *)((void *)e + HEAD_OFF(comm) + sizeof(e->comm)) = 0;
	e->after.valid = 0;
}

/*
 * A new in-flight record: the caller, its comm, the before snapshot. NULL
 * if the op is not traced. Nothing here branches on op: the verifier walks
 * this once for all four syscalls only while no register it compares tells
 * them apart (a branch on op would make op "precise", kernel/bpf/verifier.c
 * mark_chain_precision(), and each syscall's walk its own).
 */
static __always_inline struct nstrace_event *op_enter(struct caller *c, __u32 op, __u64 flags,
						      int exit_signal, int setns_fd)
{
	struct task_struct *t = c->t;
	struct nstrace_event *e;
	__u32 tid, tgid;

	if (have_task_btf()) {
		tid = t->pid;
		tgid = t->tgid;
	} else {
		__u64 pid_tgid = bpf_get_current_pid_tgid();

		tid = (__u32)pid_tgid;
		tgid = pid_tgid >> 32;
	}
	if (!wanted_process(tgid))
		return NULL;
	e = inflight_take(tid);
	if (!e) {
		__sync_fetch_and_add(&lost_inflight, 1);
		return NULL;
	}
	if (kernel_path)	/* a path left by a task that died inside a syscall */
		bpf_map_delete_elem(&paths, &tid);

	clear_unwritten(e);
	e->enter_ns = bpf_ktime_get_ns();
	e->op = op;
	e->pid = tgid;
	e->raw_flags = flags;
	e->exit_signal = exit_signal;
	e->setns_fd = setns_fd;
	if (have_task_btf()) {
		/*
		 * The caller's cgroup v2 id, the inode number of its cgroup
		 * directory: what a container runtime names a container by. Read
		 * at the call (a process may move to another cgroup while it runs),
		 * as bpf_get_current_cgroup_id() does (kernel/bpf/helpers.c:
		 * task_dfl_cgroup(current)->kn->id, 5.10 to 7.2) but with plain
		 * loads instead of the helper call (bench: kernel ns per probe hit).
		 */
		e->cgroup_id = t->cgroups->dfl_cgrp->kn->id;
		/*
		 * The kuid is the uid as in the init user ns. From real_cred, as
		 * /proc/<pid>/status (fs/proc/array.c task_state()); it differs
		 * from the subjective cred only inside override_creds(), which
		 * no syscall entry is.
		 */
		e->uid = c->cred->uid.val;
		comm_copy(e->comm, t->comm);
		e->ppid = t->real_parent->tgid;
		e->start_time_ns = t->start_boottime;
		snapshot_btf(e, false, c->nsp, c->cred, c->pid);
	} else {
		struct task_struct *ct = (struct task_struct *)bpf_get_current_task();

		e->cgroup_id = bpf_get_current_cgroup_id();
		e->uid = (__u32)bpf_get_current_uid_gid();
		bpf_get_current_comm(e->comm, sizeof(e->comm));
		e->ppid = BPF_CORE_READ(ct, real_parent, tgid);
		e->start_time_ns = BPF_CORE_READ(ct, start_boottime);
		snapshot(e, false, ct);
	}
	return e;
}

/* setns: what the caller's fd e->setns_fd is, before the kernel resolves it. */
static __always_inline void setns_target(struct caller *c, struct nstrace_event *e)
{
	if (have_task_btf()) {
		struct fdtable *fdt = c->t->files->fdt;

		resolve_setns_fd(e, e->setns_fd, fdt->max_fds, fdt->fd);
	} else {
		struct task_struct *ct = (struct task_struct *)bpf_get_current_task();
		struct fdtable *fdt = BPF_CORE_READ(ct, files, fdt);

		resolve_setns_fd(e, e->setns_fd, BPF_CORE_READ(fdt, max_fds), BPF_CORE_READ(fdt, fd));
	}
}

/* Head and kernel path as one record; on kernels without function probes, the head alone. */
static __always_inline void emit(struct nstrace_event *e, __u32 tid)
{
	struct nstrace_path *p = kernel_path ? bpf_map_lookup_elem(&paths, &tid) : NULL;
	struct nstrace_event *rec;
	__u32 n;

	if (!p) {
		if (bpf_ringbuf_output(&events, e, NSTRACE_HEAD_SIZE, wakeup_flags(NSTRACE_HEAD_SIZE)))
			__sync_fetch_and_add(&lost_events, 1);
		return;
	}
	n = p->nsteps;
	if (n > NSTRACE_MAX_STEPS)
		n = NSTRACE_MAX_STEPS;
	e->nsteps = n;
	e->steps_dropped = p->dropped;
	rec = bpf_ringbuf_reserve(&events, sizeof(*rec), 0);
	if (!rec) {
		__sync_fetch_and_add(&lost_events, 1);
		return;
	}
	bpf_probe_read_kernel(rec, NSTRACE_HEAD_SIZE, e);
	if (n)
		bpf_probe_read_kernel(rec->steps, n * sizeof(struct nstrace_step), p->steps);
	bpf_ringbuf_submit(rec, wakeup_flags(sizeof(*rec)));
}

/*
 * open_tree(OPEN_TREE_NAMESPACE) and fsmount(FSMOUNT_NAMESPACE) return an
 * nsfs fd of the mount namespace they made (fs/namespace.c
 * open_new_namespace() -> open_namespace_file(), 7.2): read it as setns
 * reads its fd, into target_*.
 */
static __always_inline void new_mount_ns(struct nstrace_event *e)
{
	/*
	 * By helper calls even where the caller is a BTF pointer: a load of
	 * task->files through a trusted one costs the verifier BTF searches
	 * (caller.bpf.h caller_task()), in the exit body every syscall shares,
	 * for a record only 7.x makes.
	 */
	struct task_struct *ct = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt;

	if (e->ret < 0)
		return;
	fdt = BPF_CORE_READ(ct, files, fdt);
	resolve_setns_fd(e, e->ret, BPF_CORE_READ(fdt, max_fds), BPF_CORE_READ(fdt, fd));
}

/*
 * The slots an unshare with these flags cannot change: each namespace is
 * copied into the new nsproxy unless its own flag asks for a new one
 * (kernel/nsproxy.c create_new_namespaces(): copy_mnt_ns(), copy_utsname(),
 * copy_ipcs(), copy_pid_ns(), copy_net_ns(), copy_cgroup_ns(),
 * copy_time_ns() each return the old one without their flag; time_ns itself
 * is always the old one), the user namespace changes only with
 * CLONE_NEWUSER (kernel/fork.c unshare_userns()), and the active pid
 * namespace never (see snapshot_btf()). 6.1 and 6.18. So the exit of the
 * tight unshare loop reads one slot or two, not ten.
 */
/* the slot an unshare of each type changes: pid and time, their children's only */
#define UNSHARE_SLOT_mnt	NS_MNT
#define UNSHARE_SLOT_uts	NS_UTS
#define UNSHARE_SLOT_ipc	NS_IPC
#define UNSHARE_SLOT_pid	NS_PID_FOR_CHILDREN
#define UNSHARE_SLOT_net	NS_NET
#define UNSHARE_SLOT_user	NS_USER
#define UNSHARE_SLOT_cgroup	NS_CGROUP
#define UNSHARE_SLOT_time	NS_TIME_FOR_CHILDREN

static __always_inline __u32 unshare_same(__u64 flags)
{
	__u32 changed = 0;

	/* every flag that makes a namespace, uapi.def's (7.1's UNSHARE_EMPTY_MNTNS too) */
#define NSTRACE_NS_TYPE(type, flag) \
	if (flags & (flag)) \
		changed |= 1U << UNSHARE_SLOT_##type;
#define NSTRACE_NS_ALSO(type, flag) NSTRACE_NS_TYPE(type, flag)
#include "uapi.def"
	return ~changed;
}

/*
 * Whether e is the caller's (a task that died inside a syscall leaves its
 * entry, and a new task may reuse the tid: start times tell them apart), and
 * if so, for unshare and setns, the snapshot of after. t: the caller as a
 * BTF pointer, where the kernel has them.
 */
static __always_inline bool same_task_snapshot(struct nstrace_event *e, struct task_struct *t)
{
	bool snap = e->op == OP_UNSHARE || e->op == OP_SETNS;

	if (have_task_btf()) {
		if (e->start_time_ns != t->start_boottime)
			return false;
		if (snap)
			snapshot_btf_but(e, true, t->nsproxy, t->real_cred, NULL,
					 e->op == OP_UNSHARE ? unshare_same(e->raw_flags) : 0);
	} else {
		struct task_struct *ct = (struct task_struct *)bpf_get_current_task();

		if (e->start_time_ns != BPF_CORE_READ(ct, start_boottime))
			return false;
		if (snap)
			snapshot(e, true, ct);
	}
	return true;
}

static __always_inline int op_exit(long ret)
{
	struct task_struct *t = NULL;
	struct nstrace_event *e;
	__u32 tid;

	if (have_task_btf()) {
		t = caller_task();
		tid = t->pid;
	} else {
		tid = (__u32)bpf_get_current_pid_tgid();
	}
	e = inflight_find(tid);
	if (!e)
		return 0;
	e->exit_ns = bpf_ktime_get_ns();
	e->ret = ret;
	/* clone: e->after was filled from the child by task_newtask, if one was born */
	if (same_task_snapshot(e, t)) {
		if (!e->after.valid)	/* no child, or no nsproxy: clear the stash */
			__builtin_memset(&e->after, 0, sizeof(e->after));
		if (e->op == OP_OPEN_TREE || e->op == OP_FSMOUNT)
			new_mount_ns(e);
		emit(e, tid);
	}
	inflight_give_back(e);
	if (kernel_path)
		bpf_map_delete_elem(&paths, &tid);
	return 0;
}

/*
 * One body for every syscall entry and one for every exit, reached by tail
 * call from a small program per tracepoint. Why not a body inlined into each
 * of the eight: the body is most of the object's instructions, and each costs
 * the verifier time (the loads through a trusted task_struct most: caller.bpf.h
 * caller_task()), so it is verified once per direction instead of once per
 * tracepoint (bench: start-up). The tail call keeps one program per
 * tracepoint, so bpf_stats still price each syscall on its own (a tail-called
 * body's run time counts to the program that called it: include/linux/filter.h
 * __bpf_prog_run(), 6.1 to 7.2). The bodies switch on the syscall number.
 */
/* Slots of bodies: nstrace/bpf/probeset.py BODY_PROGRAMS lists the programs in this order. */
enum { BODY_ENTER, BODY_EXIT };

/*
 * Filled by user space after load, not declared with .values: libbpf would
 * then refuse every load that leaves the bodies out, such as the single
 * program loads that probe what a kernel allows.
 */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u32);
} bodies SEC(".maps");

/* Returns only if the body could not be called: count the op as not traced. */
static __always_inline int to_body(void *ctx, __u32 body)
{
	bpf_tail_call(ctx, &bodies, body);
	__sync_fetch_and_add(&lost_inflight, 1);
	return 0;
}

SEC("tracepoint")
int sys_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct caller c = {};
	struct nstrace_event *e;
	int exit_signal = 0, setns_fd = -1;
	__u64 flags;
	__u32 op;

	if (have_task_btf()) {
		c.t = caller_task();
		c.nsp = c.t->nsproxy;
		c.pid = c.t->thread_pid;
		c.cred = c.t->real_cred;
	}
	/* __syscall_nr is an int: kernel/trace/trace_syscalls.c struct syscall_trace_enter */
	switch ((int)ctx->id) {
	case NR_clone:
		/* x86-64 clone(flags, newsp, parent_tid, child_tid, tls), read in place */
		flags = ctx->args[0];
		if (plain_fork(flags & ~CSIGNAL, c.nsp, c.pid))
			return 0;
		op = OP_CLONE;
		exit_signal = flags & CSIGNAL;
		break;
	case NR_clone3: {
		struct clone_args args = {};

		if (bpf_probe_read_user(&args, sizeof(args), (void *)ctx->args[0]) == 0 &&
		    !(args.flags & CLONE_NEWTIME) && plain_fork(args.flags, c.nsp, c.pid))
			return 0;
		/* unreadable args are kept: the kernel will fail the call with EFAULT */
		op = OP_CLONE3;
		flags = args.flags;
		exit_signal = args.exit_signal;
		break;
	}
	case NR_unshare:
		op = OP_UNSHARE;
		flags = ctx->args[0];
		break;
	case NR_setns:
		op = OP_SETNS;
		flags = ctx->args[1];
		setns_fd = ctx->args[0];
		break;
	case NR_open_tree:
	case NR_open_tree_attr:	/* (dfd, path, flags, ...): as open_tree */
		flags = ctx->args[2];
		if (!(flags & OPEN_TREE_NAMESPACE))
			return 0;
		op = OP_OPEN_TREE;
		break;
	case NR_fsmount:	/* (fs_fd, flags, attr_flags) */
		flags = ctx->args[1];
		if (!(flags & FSMOUNT_NAMESPACE))
			return 0;
		op = OP_FSMOUNT;
		break;
	default:
		return 0;
	}
	e = op_enter(&c, op, flags, exit_signal, setns_fd);
	/* op read back from the record, an unknown to the verifier: see op_enter() */
	if (e && *(volatile __u32 *)&e->op == OP_SETNS)
		setns_target(&c, e);
	return 0;
}

SEC("tracepoint")
int sys_exit(struct trace_event_raw_sys_exit *ctx)
{
	return op_exit(ctx->ret);
}

/* A syscall tracepoint's program: straight to the body of its direction (BODY_ENTER, BODY_EXIT). */
#define TO_BODY(tp, body)							\
SEC("tracepoint/syscalls/" #tp)							\
int tp(void *ctx)								\
{										\
	return to_body(ctx, body);						\
}

TO_BODY(sys_enter_clone, BODY_ENTER)
TO_BODY(sys_enter_clone3, BODY_ENTER)
TO_BODY(sys_enter_unshare, BODY_ENTER)
TO_BODY(sys_enter_setns, BODY_ENTER)
/* Mount namespaces made outside clone/unshare (7.x); attached only where the kernel has the flags. */
TO_BODY(sys_enter_open_tree, BODY_ENTER)
TO_BODY(sys_exit_open_tree, BODY_EXIT)
TO_BODY(sys_enter_open_tree_attr, BODY_ENTER)
TO_BODY(sys_exit_open_tree_attr, BODY_EXIT)
TO_BODY(sys_enter_fsmount, BODY_ENTER)
TO_BODY(sys_exit_fsmount, BODY_EXIT)

/*
 * clone and clone3 return twice: 0 in the child, which starts with no
 * in-flight record (its tid is new), and the child's pid or -errno in the
 * caller. Half the hits, so the child's return is told apart here.
 */
SEC("tracepoint/syscalls/sys_exit_clone")
int sys_exit_clone(struct trace_event_raw_sys_exit *ctx)
{
	return ctx->ret ? to_body(ctx, BODY_EXIT) : 0;
}

SEC("tracepoint/syscalls/sys_exit_clone3")
int sys_exit_clone3(struct trace_event_raw_sys_exit *ctx)
{
	return ctx->ret ? to_body(ctx, BODY_EXIT) : 0;
}

TO_BODY(sys_exit_unshare, BODY_EXIT)
TO_BODY(sys_exit_setns, BODY_EXIT)

/*
 * include/trace/events/task.h: fires in copy_process() after
 * copy_namespaces(), in the parent's context, so task->nsproxy is already
 * the child's. Also where --pid learns about descendants.
 */
/* The child's side of a record that made one: who it is, and its namespaces as after. */
static __always_inline void child_fields(struct nstrace_event *e, struct task_struct *task)
{
	/* pid and tgid are neighbours in task_struct: one read where CO-RE says they still are */
	if (bpf_core_field_offset(task->tgid) == bpf_core_field_offset(task->pid) + 4) {
		__u32 ids[2] = {};

		bpf_core_read(ids, sizeof(ids), &task->pid);
		e->child_tid = ids[0];
		e->child_pid = ids[1];
	} else {
		e->child_pid = BPF_CORE_READ(task, tgid);
		e->child_tid = BPF_CORE_READ(task, pid);
	}
	e->child_start_ns = BPF_CORE_READ(task, start_boottime);
	snapshot(e, true, task);
}

/*
 * fork(2) and vfork(2). They have syscall tracepoints of their own, which
 * nstrace does not attach: four more would add their detaches' grace periods
 * to every watch's shutdown (bench: start-up). Their children come through
 * task_newtask like every child (kernel/fork.c copy_process() ->
 * trace_task_newtask(), after the child's pid and namespaces are set; 5.10
 * to 7.2), so the record is made here, whole, when the child enters a pid or
 * time namespace its parent is not in (fork_enters_namespace()), or with
 * --all. Only they get here without a record of their own: a clone or clone3
 * that enters a namespace, or any under --all, took one at its entry. Their
 * flags tell them apart (kernel/fork.c: fork passes SIGCHLD alone, vfork
 * CLONE_VFORK | CLONE_VM | SIGCHLD); a kernel thread or io_uring worker has
 * others and is left alone. ret is what the syscall returns to the caller:
 * the child's pid in the caller's own pid namespace. A fork that fails makes
 * no child, comes by nowhere here, and has no record. Nothing brackets the
 * call, so its duration is 0 and it has no kernel path. Snapshots by helper
 * calls, as for exec: the rare fork that moves pays for them, no other.
 */
static __always_inline struct nstrace_event *fork_record(struct task_struct *child, __u64 clone_flags,
							  __u32 tid)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32, op;
	__u64 flags = clone_flags & ~CSIGNAL;
	struct nstrace_event *e;

	if (flags == (CLONE_VFORK | CLONE_VM))
		op = OP_VFORK;
	else if (!flags)
		op = OP_FORK;
	else
		return NULL;
	if (!trace_all && !task_fork_enters_namespace(t))
		return NULL;
	if (!wanted_process(tgid))
		return NULL;
	e = inflight_take(tid);
	if (!e) {
		__sync_fetch_and_add(&lost_inflight, 1);
		return NULL;
	}
	clear_unwritten(e);
	e->enter_ns = e->exit_ns = bpf_ktime_get_ns();
	e->op = op;
	e->pid = tgid;
	e->raw_flags = flags;
	/* kernel/fork.c: fork and vfork pass SIGCHLD in kernel_clone_args.exit_signal, not in the flags */
	e->exit_signal = BPF_CORE_READ(child, exit_signal);
	e->setns_fd = -1;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->ppid = BPF_CORE_READ(t, real_parent, tgid);
	e->start_time_ns = BPF_CORE_READ(t, start_boottime);
	snapshot(e, false, t);
	return e;
}

/* ret of a fork record: the child's pid as the caller's own pid namespace numbers it. */
static __always_inline void fork_ret(struct nstrace_event *e, struct task_struct *child)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u32 level = BPF_CORE_READ(t, thread_pid, level);
	struct pid *cpid = BPF_CORE_READ(child, thread_pid);
	struct upid up = {};

	bpf_core_read(&up, sizeof(up), &cpid->numbers[level & 31]);
	e->ret = up.nr;
}

SEC("raw_tp/task_newtask")
int BPF_PROG(task_newtask, struct task_struct *task, u64 clone_flags)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct nstrace_event *e;

	if (filter_tgid) {
		__u32 parent = bpf_get_current_pid_tgid() >> 32;
		__u32 child = BPF_CORE_READ(task, tgid);
		__u8 one = 1;

		if (bpf_map_lookup_elem(&tracked, &parent) &&
		    bpf_map_update_elem(&tracked, &child, &one, BPF_ANY))
			__sync_fetch_and_add(&lost_tracked, 1);
	}

	e = inflight_find(tid);
	if (e) {	/* a clone or clone3 with a record: its child's side */
		if (e->op != OP_CLONE && e->op != OP_CLONE3)
			return 0;
	} else {	/* a fork or vfork has none: made here, whole, if it moves */
		e = fork_record(task, clone_flags, tid);
		if (!e)
			return 0;
	}
	/* One call for both, so the verifier walks one copy of the child's snapshot (bench: start-up) */
	child_fields(e, task);
	if (e->op == OP_FORK || e->op == OP_VFORK) {
		fork_ret(e, task);
		emit(e, tid);
		inflight_give_back(e);
	}
	return 0;
}

/* Did e's snapshots differ anywhere? */
static __always_inline bool moved(const struct nstrace_event *e)
{
	for (int i = 0; i < NS_SLOTS; i++)
		if (e->before.inum[i] != e->after.inum[i] || e->before.ns_id[i] != e->after.ns_id[i])
			return true;
	return false;
}

/*
 * exec. fs/exec.c begin_new_exec() -> kernel/nsproxy.c exec_task_namespaces()
 * (6.12 and 7.2) moves the caller into a new nsproxy whose time_ns is its
 * time_ns_for_children, when those differ (after unshare(CLONE_NEWTIME), or
 * setns into a time namespace by a multi-threaded task). The record runs
 * between two raw tracepoints of include/trace/events/sched.h:
 * sched_prepare_exec, in begin_new_exec() before anything of the old program
 * is flushed and from where an error kills the task instead of returning
 * (6.10+: every kernel whose exec can move a task has it), and
 * sched_process_exec, in exec_binprm() after the move. Raw tracepoints, not
 * the syscalls:sys_*_execve* tracepoints: four more syscall tracepoints cost
 * a watch a tenth of a second to detach (bench: start-up), and this needs no
 * failure path. Every exec of the machine asks exec_may_move(): three reads.
 * The snapshots are read with helper calls, as task_newtask's: loads through
 * a trusted BTF task pointer would cost each its BTF searches at load
 * (caller.bpf.h caller_task()), for programs that record only the rare exec
 * that moves.
 */
static __always_inline bool exec_may_move(void)
{
	struct task_struct *t;
	struct nsproxy *nsp;

	if (have_task_btf()) {
		/* plain loads: this runs on every exec of the machine (bench: kernel ns per probe hit) */
		nsp = caller_task()->nsproxy;
		return nsp && nsp->time_ns_for_children != nsp->time_ns;
	}
	t = (struct task_struct *)bpf_get_current_task();
	nsp = BPF_CORE_READ(t, nsproxy);
	return nsp && BPF_CORE_READ(nsp, time_ns_for_children) != BPF_CORE_READ(nsp, time_ns);
}

/*
 * Exec records between sched_prepare_exec and sched_process_exec, on all
 * CPUs: while there is none, sched_process_exec has nothing to find and
 * returns at once, without probing the in-flight table's cold slots. Only
 * the rare exec that may move writes it; one whose task dies between the
 * two (an error past the point of no return kills it, fs/exec.c) leaves
 * it above zero, which costs the lookups again, never a record.
 */
__u64 exec_pending = 0;

SEC("raw_tp/sched_prepare_exec")
int BPF_PROG(sched_prepare_exec, struct task_struct *task)
{
	struct task_struct *t;
	__u64 pid_tgid;
	__u32 tid, tgid;
	struct nstrace_event *e;

	if (!exec_may_move())	/* first, and alone: every exec of the machine asks */
		return 0;
	t = (struct task_struct *)bpf_get_current_task();
	pid_tgid = bpf_get_current_pid_tgid();
	tid = (__u32)pid_tgid;
	tgid = pid_tgid >> 32;
	if (!wanted_process(tgid))
		return 0;
	e = inflight_take(tid);
	if (!e) {
		__sync_fetch_and_add(&lost_inflight, 1);
		return 0;
	}
	__sync_fetch_and_add(&exec_pending, 1);
	if (kernel_path)
		bpf_map_delete_elem(&paths, &tid);
	clear_unwritten(e);
	e->enter_ns = bpf_ktime_get_ns();
	e->op = OP_EXEC;
	e->pid = tgid;
	e->raw_flags = 0;
	e->exit_signal = 0;
	e->setns_fd = -1;
	e->cgroup_id = bpf_get_current_cgroup_id();
	e->uid = (__u32)bpf_get_current_uid_gid();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->ppid = BPF_CORE_READ(t, real_parent, tgid);
	e->start_time_ns = BPF_CORE_READ(t, start_boottime);
	snapshot(e, false, t);
	return 0;
}

/*
 * After a successful exec, in its context. old_pid is the tid before exec:
 * a non-leader thread that execs takes its leader's pid in de_thread(), and
 * its record was taken under old_pid. An exec that moved nothing is dropped.
 */
SEC("raw_tp/sched_process_exec")
int BPF_PROG(sched_process_exec, struct task_struct *p, int old_pid)
{
	__u32 tid;
	struct nstrace_event *e;

	if (!exec_pending)
		return 0;
	e = inflight_find(old_pid);
	if (!e || e->op != OP_EXEC)
		return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	e->exit_ns = bpf_ktime_get_ns();
	e->ret = 0;
	e->tid = tid;
	snapshot(e, true, (struct task_struct *)bpf_get_current_task());
	if (e->after.valid && moved(e))
		emit(e, tid);
	inflight_give_back(e);
	__sync_fetch_and_add(&exec_pending, -1);
	if (kernel_path) {
		bpf_map_delete_elem(&paths, &tid);
		if ((__u32)old_pid != tid)
			bpf_map_delete_elem(&paths, &old_pid);
	}
	return 0;
}

/* --pid only: forget a process when its thread-group leader exits, so a reused pid is not traced. */
SEC("tracepoint/sched/sched_process_exit")
int sched_process_exit(void *ctx)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u32 tgid = pid_tgid >> 32;

	if (filter_tgid && (__u32)pid_tgid == tgid)
		bpf_map_delete_elem(&tracked, &tgid);
	return 0;
}
