// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel-function layer: each function of functions.def gets its
 * programs (an entry and an exit program, or an entry program alone) twice
 * over: fentry/fexit where the kernel allows BPF trampolines,
 * kprobe/kretprobe where it has kprobes. User space (nstrace/bpf/hookplan.py)
 * loads one set per function or none, per kernel.
 *
 * Every hit inside a traced syscall appends a step to that syscall's
 * in-flight record, so one record carries its ordered kernel path. Arguments
 * and return values are read with bpf_get_func_arg()/bpf_get_func_ret()
 * (fentry, 5.17+) or pt_regs (kprobes): no program depends on a function's
 * exact prototype, which differs between 6.1 and 6.18 (flags went from
 * unsigned long to u64, the same register either way).
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

/* What a function's first two arguments hold that is worth recording. */
enum arg_kind {
	ARG_NONE,
	ARG_FLAGS,		/* arg0: CLONE_* flags */
	ARG_NSPROXY,		/* arg0: struct nsproxy * */
	ARG_TASK_NSPROXY,	/* arg0: a task, arg1: the nsproxy it switches to */
	ARG_NS,			/* arg1: struct ns_common * (the ->install() ops) */
};

/* What a function returns. */
enum ret_kind {
	RET_NONE,		/* void */
	RET_INT,		/* 0 or -errno */
	RET_NSPROXY,		/* struct nsproxy * or ERR_PTR */
	RET_NS,			/* a namespace of the type in `slot`, or ERR_PTR */
};

static const struct nstrace_path empty_path;

/*
 * Namespaces whose birth the function layer saw: ns_common address ->
 * bpf_ktime_get_ns() then, for the lifetime a death record gives. With
 * --pid, what lets a death be recorded at all (ns_dies()). Entries leave at
 * the death: what is left when a trace ends outlived it (user space counts
 * them). An LRU: a full table forgets the oldest birth, and that death's
 * lifetime is then unknown (0); with --pid, that death is recorded only
 * where a followed task drops the namespace.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} births SEC(".maps");

/*
 * The functions that drop namespace references a task is inside, outermost
 * first (exit_task_namespaces -> free_nsproxy, cleanup_mnt -> nsfs_evict,
 * cleanup_net): their entry steps, the first steps of any death record the
 * task makes meanwhile. By tid, from the outermost entry to its exit.
 */
#define DYING_DEPTH 3

struct dying_stack {
	__u32 depth;		/* entered; only the first DYING_DEPTH are kept */
	struct nstrace_step steps[DYING_DEPTH];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, struct dying_stack);
} dying SEC(".maps");

static const struct dying_stack empty_stack;

/*
 * create_user_ns(struct cred *new) puts the user namespace it makes in
 * new->user_ns and returns 0 (kernel/user_namespace.c, 5.10.262 and 6.1.192):
 * no copy_*() returns one. The cred it was handed waits here, by tid, from
 * entry to exit, where a success is that namespace's birth.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u32);
	__type(value, __u64);
} user_ns_cred SEC(".maps");

/* Births the tree saw outside any traced operation (6.18+), of processes traced: should stay 0. */
__u64 births_untraced = 0;

static __always_inline void born(const void *ns)
{
	__u64 key = (__u64)ns, now = bpf_ktime_get_ns();

	bpf_map_update_elem(&births, &key, &now, BPF_ANY);
}

static __always_inline void user_ns_enter(__u64 cred)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();

	if (inflight_find(tid))	/* births are those of traced operations, as at a copy_*() exit */
		bpf_map_update_elem(&user_ns_cred, &tid, &cred, BPF_ANY);
}

static __always_inline void user_ns_exit(long ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *cred = bpf_map_lookup_elem(&user_ns_cred, &tid);

	if (!cred)
		return;
	if (!ret)
		born(&BPF_CORE_READ((struct cred *)*cred, user_ns)->ns);
	bpf_map_delete_elem(&user_ns_cred, &tid);
}

static __always_inline struct nstrace_step *next_step(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct nstrace_path *p;
	__u32 i;

	if (!inflight_find(tid))
		return NULL;	/* not inside a traced syscall: nothing to join */
	p = bpf_map_lookup_elem(&paths, &tid);
	if (!p) {
		bpf_map_update_elem(&paths, &tid, &empty_path, BPF_NOEXIST);
		p = bpf_map_lookup_elem(&paths, &tid);
		if (!p) {
			__sync_fetch_and_add(&lost_inflight, 1);
			return NULL;
		}
	}
	i = p->nsteps;
	if (i >= NSTRACE_MAX_STEPS) {
		p->dropped++;
		return NULL;
	}
	p->nsteps = i + 1;
	return &p->steps[i];
}

/* fn's entry as a step of the traced syscall the task is inside, if any */
static __always_inline void path_enter(enum nstrace_func fn, enum arg_kind kind, __u64 arg0, __u64 arg1)
{
	struct nstrace_step *s = next_step();
	struct nsproxy *nsp = NULL;

	if (!s)
		return;
	s->ts_ns = bpf_ktime_get_ns();
	s->func = fn;
	s->kind = STEP_ENTER;
	switch (kind) {
	case ARG_FLAGS:
		s->what = VAL_FLAGS;
		s->arg = arg0;
		break;
	case ARG_NSPROXY:
		s->what = VAL_NSPROXY;
		nsp = (struct nsproxy *)arg0;
		break;
	case ARG_TASK_NSPROXY: {
		struct nsproxy *old = BPF_CORE_READ((struct task_struct *)arg0, nsproxy);

		s->what = VAL_SWITCH;
		s->arg = ptr_id(old);
		/* 1: this switch drops the last reference and frees it (kernel/nsproxy.c
		 * switch_task_namespaces() -> put_nsproxy(), 5.10 to 7.2) */
		s->old_refs = old ? nsproxy_refs(old) : 0;
		nsp = (struct nsproxy *)arg1;
		break;
	}
	case ARG_NS:
		s->what = VAL_NS_ARG;
		s->inum = BPF_CORE_READ((struct ns_common *)arg1, inum);
		break;
	default:
		break;
	}
	if (nsp) {
		s->nsproxy_id = ptr_id(nsp);
		s->refs = nsproxy_refs(nsp);
	}
}

/*
 * The DROPS functions no other is ever around: a task's exit, a mount's
 * release (task work after the umount returned, a kworker's after exit:
 * fs/namespace.c mntput_no_expire(), 6.1.192 and 7.2.13), net's cleanup
 * work.
 */
static __always_inline bool dying_outermost(enum nstrace_func fn)
{
	return fn == FN_exit_task_namespaces || fn == FN_exit_nsproxy_namespaces || fn == FN_cleanup_mnt ||
	       fn == FN_cleanup_net;
}

/*
 * The step of a DROPS function's entry that heads the death records made
 * inside it (ns_dies()), pushed on the task's stack of them.
 */
static __always_inline void dying_push(enum nstrace_func fn, enum arg_kind kind, __u64 arg0)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), i;
	struct dying_stack *st;
	struct nstrace_step *s;

	st = bpf_map_lookup_elem(&dying, &tid);
	if (!st) {
		bpf_map_update_elem(&dying, &tid, &empty_stack, BPF_ANY);
		st = bpf_map_lookup_elem(&dying, &tid);
		if (!st)
			return;
	}
	if (dying_outermost(fn))
		st->depth = 0;	/* what a missed kretprobe left is gone, not under this one */
	i = st->depth++;
	if (i >= DYING_DEPTH)
		return;
	s = &st->steps[i];
	__builtin_memset(s, 0, sizeof(*s));
	s->ts_ns = bpf_ktime_get_ns();
	s->func = fn;
	s->kind = STEP_ENTER;
	if (kind == ARG_NSPROXY) {
		s->what = VAL_NSPROXY;
		s->nsproxy_id = ptr_id((void *)arg0);
		s->refs = nsproxy_refs((struct nsproxy *)arg0);
	}
}

/* A DROPS function returns: off the stack, which goes with its outermost. */
static __always_inline void dying_pop(void)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct dying_stack *st = bpf_map_lookup_elem(&dying, &tid);

	if (!st)
		return;
	if (st->depth <= 1)
		bpf_map_delete_elem(&dying, &tid);
	else
		st->depth--;
}

/* drops: fn is a DROPS row of functions.def, whose entry heads the death records made inside it */
static __always_inline int step_enter(enum nstrace_func fn, bool drops, enum arg_kind kind, __u64 arg0,
				      __u64 arg1)
{
	if (drops)
		dying_push(fn, kind, arg0);
	if (fn == FN_create_user_ns)
		user_ns_enter(arg0);
	path_enter(fn, kind, arg0, arg1);
	/* the nsproxy's ids taken above: its address may hold another next, under another id (ptr_id.bpf.h) */
	if (fn == FN_free_nsproxy || fn == FN_nsproxy_free)
		ptr_retire((const void *)arg0);
	return 0;
}


/* A pointer a function returns that is an error: ERR_PTR(-errno), include/linux/err.h IS_ERR_VALUE() */
#define MAX_ERRNO 4095

static __always_inline bool is_err_value(long v)
{
	return (unsigned long)v >= (unsigned long)-MAX_ERRNO;
}

/* The ns_common of a namespace returned by a copy_*() function, by the slot its type fills (no read). */
static __always_inline const struct ns_common *ns_common_of(int slot, const void *p)
{
	switch (slot) {
	case NS_MNT: return &((struct mnt_namespace *)p)->ns;
	case NS_UTS: return &((struct uts_namespace *)p)->ns;
	case NS_IPC: return &((struct ipc_namespace *)p)->ns;
	case NS_PID_FOR_CHILDREN: return &((struct pid_namespace *)p)->ns;
	case NS_NET: return &((struct net *)p)->ns;
	case NS_CGROUP: return &((struct cgroup_namespace *)p)->ns;
	case NS_TIME_FOR_CHILDREN: return &((struct time_namespace *)p)->ns;
	}
	return NULL;
}

/*
 * The fixed inode numbers of the initial namespaces, MNT_NS_INIT_INO
 * 0xEFFFFFF8 to IPC_NS_INIT_INO 0xEFFFFFFF (include/uapi/linux/nsfs.h, 6.17+;
 * all but mnt and net already in include/linux/proc_ns.h, 5.10). 7.x keeps
 * no count for them (include/linux/ns_common.h __ns_ref_get(): a fixed 1,
 * 7.2), so theirs is not read: it would look like a new namespace's.
 */
static __always_inline bool is_initial_inum(__u32 inum)
{
	return inum >= 0xEFFFFFF8U && inum <= 0xEFFFFFFFU;
}

/*
 * A namespace's reference count, 0 where ns_common has none (5.10). Right
 * after a copy_*() returns, 1 is a namespace it made and more one it shares
 * (the !CLONE_NEW* branch takes a reference to the caller's: get_uts_ns() and
 * the like, 6.1 to 7.2). Shown, not what a birth is told by: see callers_ns().
 */
static __always_inline __u32 ns_refs(const struct ns_common *ns)
{
	int refs = 0;

	if (bpf_core_field_exists(ns->__ns_ref))
		bpf_core_read(&refs, sizeof(refs), &ns->__ns_ref);
	else if (bpf_core_field_exists(ns->count))
		bpf_core_read(&refs, sizeof(refs), &ns->count);
	return refs;
}

/*
 * The caller's namespace in a slot: what a copy_*() hands back, with a
 * reference taken, when it makes none. create_new_namespaces() passes each
 * copy_*() tsk->nsproxy's namespace of its type, tsk being current (unshare,
 * setns) or a clone child whose nsproxy is still the parent's
 * (kernel/nsproxy.c, 5.10.262 to 7.2.13). A namespace that is not the
 * caller's is new: the one test on every kernel, 5.10's namespaces having no
 * count in ns_common to tell (include/linux/ns_common.h, 5.10.262).
 */
static __always_inline const void *callers_ns(int slot)
{
	struct nsproxy *nsp = BPF_CORE_READ((struct task_struct *)bpf_get_current_task(), nsproxy);

	switch (slot) {
	case NS_MNT: return BPF_CORE_READ(nsp, mnt_ns);
	case NS_UTS: return BPF_CORE_READ(nsp, uts_ns);
	case NS_IPC: return BPF_CORE_READ(nsp, ipc_ns);
	case NS_PID_FOR_CHILDREN: return BPF_CORE_READ(nsp, pid_ns_for_children);
	case NS_NET: return BPF_CORE_READ(nsp, net_ns);
	case NS_CGROUP: return BPF_CORE_READ(nsp, cgroup_ns);
	case NS_TIME_FOR_CHILDREN: return BPF_CORE_READ(nsp, time_ns_for_children);
	}
	return NULL;
}

static __always_inline int step_exit(enum nstrace_func fn, bool drops, enum ret_kind kind, int slot, long ret)
{
	struct nstrace_step *s;

	if (drops)
		dying_pop();
	if (fn == FN_create_user_ns)
		user_ns_exit(ret);
	s = next_step();
	if (!s)
		return 0;
	s->ts_ns = bpf_ktime_get_ns();
	s->func = fn;
	s->kind = STEP_EXIT;
	switch (kind) {
	case RET_INT:
		s->what = VAL_INT;
		s->ret = (int)ret;
		break;
	case RET_NSPROXY:
		if (is_err_value(ret)) {
			s->what = VAL_INT;
			s->ret = ret;
			break;
		}
		s->what = VAL_NSPROXY;
		s->nsproxy_id = ptr_id((void *)ret);
		s->refs = nsproxy_refs((struct nsproxy *)ret);
		break;
	case RET_NS:
		s->what = VAL_NS;
		if (is_err_value(ret)) {
			s->ret = ret;
		} else {
			const struct ns_common *ns = ns_common_of(slot, (void *)ret);

			s->inum = BPF_CORE_READ(ns, inum);
			if (!is_initial_inum(s->inum))
				s->refs = ns_refs(ns);
			if ((const void *)ret != callers_ns(slot))
				born(ns);
		}
		break;
	default:
		break;
	}
	return 0;
}

/* The namespace tree's insertion (6.18+): a birth, and a step of the operation that makes it. */
static __always_inline int tree_add(enum nstrace_func fn, const struct ns_common *ns)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct nstrace_step *s;

	if (!wanted_process(pid_tgid >> 32))
		return 0;	/* with --pid, births are the followed processes', as before the tree */
	born(ns);
	if (!inflight_find((__u32)pid_tgid)) {
		__sync_fetch_and_add(&births_untraced, 1);
		return 0;
	}
	s = next_step();
	if (!s)
		return 0;
	s->ts_ns = bpf_ktime_get_ns();
	s->func = fn;
	s->kind = STEP_ENTER;
	s->what = VAL_NS_ARG;
	s->inum = BPF_CORE_READ(ns, inum);
	return 0;
}

/*
 * The CPU's preempt count, where softirq service is told (include/linux/preempt.h
 * in_serving_softirq(): SOFTIRQ_OFFSET, 1 << 8, 5.10.262 to 7.2.13). x86 keeps
 * it per CPU: int __preempt_count (arch/x86/include/asm/preempt.h, 5.10.262,
 * 6.1.192, 7.2.13), a member of struct pcpu_hot in between (6.12.118), read
 * at __per_cpu_offset[cpu] + the variable's per-CPU offset, as %gs does.
 * Typeless ksyms, from kallsyms: 5.10's BTF has no per-CPU variables, so
 * bpf_this_cpu_ptr() has nothing to take there. Weak: the one this kernel
 * lacks is 0, and its branch is dead to the verifier.
 */
extern const void __preempt_count __ksym __weak;
extern const void pcpu_hot __ksym __weak;
extern const void __per_cpu_offset __ksym __weak;

struct pcpu_hot {
	int preempt_count;
} __attribute__((preserve_access_index));

#define SOFTIRQ_OFFSET 0x100

static __always_inline bool in_serving_softirq(void)
{
	__u64 base = 0, where;
	int count = 0;

	if (&__preempt_count)
		where = (__u64)&__preempt_count;
	else if (&pcpu_hot && bpf_core_field_exists(struct pcpu_hot, preempt_count))
		where = (__u64)&pcpu_hot + bpf_core_field_offset(struct pcpu_hot, preempt_count);
	else
		return false;
	if (!&__per_cpu_offset)
		return false;
	bpf_probe_read_kernel(&base, sizeof(base), (const __u64 *)&__per_cpu_offset + bpf_get_smp_processor_id());
	bpf_probe_read_kernel(&count, sizeof(count), (const void *)(base + where));
	return count & SOFTIRQ_OFFSET;
}

/* task_struct->flags, whose bits say a kernel thread and a workqueue worker */
struct task_struct___flags {
	unsigned int flags;
} __attribute__((preserve_access_index));

#define PF_WQ_WORKER 0x00000020	/* include/linux/sched.h, 6.1.192 and 7.2.13 */
#define PF_KTHREAD 0x00200000

/*
 * What a free runs in. A softirq first: it borrows whatever task it
 * interrupted (swapper, a kworker, a process of the trace), which is
 * nothing to the namespace.
 */
static __always_inline __u16 death_context(struct task_struct *t)
{
	unsigned int flags = BPF_CORE_READ((struct task_struct___flags *)t, flags);

	if (in_serving_softirq())
		return CTX_SOFTIRQ;
	if (flags & PF_WQ_WORKER)
		return CTX_KWORKER;
	if (flags & PF_KTHREAD)
		return CTX_KTHREAD;
	return CTX_TASK;
}

/* Who held the last reference, by the dropping functions the freeing task is inside. */
static __always_inline __u16 holder_of(const struct dying_stack *st)
{
	__u16 holder = HOLDER_NONE;

	for (__u32 i = 0; i < DYING_DEPTH && i < st->depth; i++) {
		switch (st->steps[i].func) {
		case FN_exit_task_namespaces:
		case FN_exit_nsproxy_namespaces:
			return HOLDER_EXIT;	/* outermost: what the exit frees, it frees through free_nsproxy */
		case FN_cleanup_mnt:
			return HOLDER_UMOUNT;	/* outermost: the umount's release evicts the ns file inside it */
		case FN_nsfs_evict:
			holder = HOLDER_CLOSE;
			break;
		case FN_free_nsproxy:
		case FN_nsproxy_free:
			if (!holder)
				holder = HOLDER_SWITCH;
			break;
		default:
			break;
		}
	}
	return holder;
}

/* Death records carry the dropping steps and the freeing function's: at most this many steps. */
#define DEATH_STEPS (DYING_DEPTH + 1)
#define DEATH_SIZE (NSTRACE_HEAD_SIZE + DEATH_STEPS * sizeof(struct nstrace_step))

/* The record's task: the one that frees, when it is not a softirq's borrowed one. */
static __always_inline void death_task(struct nstrace_event *rec, struct task_struct *t, __u64 pid_tgid)
{
	rec->pid = pid_tgid >> 32;
	rec->tid = (__u32)pid_tgid;
	rec->ppid = BPF_CORE_READ(t, real_parent, tgid);
	rec->uid = (__u32)bpf_get_current_uid_gid();
	rec->start_time_ns = BPF_CORE_READ(t, start_boottime);
	rec->cgroup_id = bpf_get_current_cgroup_id();
	bpf_get_current_comm(rec->comm, sizeof(rec->comm));
}

/* The dropping steps of the freeing task before fn's, and who they say held the namespace. */
static __always_inline __u32 death_path(struct nstrace_event *rec, __u32 tid)
{
	const struct dying_stack *st = bpf_map_lookup_elem(&dying, &tid);
	__u32 n = 0;

	if (!st)
		return 0;
	for (__u32 i = 0; i < DYING_DEPTH; i++) {
		if (i >= st->depth)
			break;
		rec->steps[i] = st->steps[i];
		n = i + 1;
	}
	rec->holder = holder_of(st);
	return n;
}

/*
 * A namespace dies: a record of its own, op OP_FREE, made here, outside any
 * syscall (a dying task's exit, an umount, a kworker's deferred free, an RCU
 * callback). Its path: the dropping functions the freeing task is inside,
 * if any (dying), then fn. In a softirq the task is a bystander: neither its
 * identity nor its dropping functions are the record's.
 * With --pid, only deaths of namespaces a followed process made (births), or
 * dropped by a task it follows. An exit is not such a task: it leaves the
 * followed set at sched_process_exit, before exit_task_namespaces() drops
 * its namespaces (kernel/exit.c do_exit(), 5.10.262 and 6.1.192); nor is
 * the RCU callback that frees a pid namespace, or the last put of a cred
 * (kernel/pid_namespace.c, kernel/cred.c).
 */
static __always_inline int ns_dies(enum nstrace_func fn, const struct ns_common *ns, __u32 type)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid(), key = (__u64)ns, now = bpf_ktime_get_ns(), lived = 0;
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	__u16 context = death_context(t);
	struct nstrace_event *rec;
	struct nstrace_step *last;
	__u64 *birth;
	bool claimed;
	__u32 n = 0;

	birth = bpf_map_lookup_elem(&births, &key);
	if (birth && *birth && now > *birth)
		lived = now - *birth;
	/* a birth is taken once: by its death here, or by user space as the trace ends (outlived) */
	claimed = birth && !bpf_map_delete_elem(&births, &key);
	if (!claimed && filter_tgid && (context == CTX_SOFTIRQ || !wanted_process(pid_tgid >> 32)))
		return 0;
	rec = bpf_ringbuf_reserve(&events, DEATH_SIZE, 0);
	if (!rec) {
		__sync_fetch_and_add(&lost_events, 1);
		return 0;
	}
	__builtin_memset(rec, 0, DEATH_SIZE);
	rec->enter_ns = rec->exit_ns = now;
	rec->op = OP_FREE;
	rec->context = context;
	if (context != CTX_SOFTIRQ) {
		death_task(rec, t, pid_tgid);
		n = death_path(rec, (__u32)pid_tgid);
	}
	ns_fields(ns, &rec->target_inum, &rec->target_ns_id, NULL);
	rec->target_nstype = type ?: ns_type(ns);
	rec->raw_flags = rec->target_nstype;
	rec->lived_ns = lived;
	if (n >= DEATH_STEPS)	/* never: for the verifier */
		n = DEATH_STEPS - 1;
	last = &rec->steps[n];
	last->ts_ns = now;
	last->func = fn;
	last->kind = STEP_ENTER;
	last->what = VAL_NS_ARG;
	last->inum = rec->target_inum;
	rec->nsteps = n + 1;
	bpf_ringbuf_submit(rec, wakeup_flags(DEATH_SIZE));
	return 0;
}

/* The ns_common a death function is handed, by what it is handed (functions.def DEATH rows). */
static __always_inline const struct ns_common *as_ns(__u64 a)
{
	return (const struct ns_common *)a;
}

static __always_inline const struct ns_common *uts_of(__u64 a)
{
	if (bpf_core_field_exists(struct uts_namespace, kref))	/* 5.10: free_uts_ns(struct kref *) */
		a -= bpf_core_field_offset(struct uts_namespace, kref);
	return &((struct uts_namespace *)a)->ns;
}

static __always_inline const struct ns_common *time_of(__u64 a)
{
	if (bpf_core_field_exists(struct time_namespace, kref))	/* 5.10: free_time_ns(struct kref *) */
		a -= bpf_core_field_offset(struct time_namespace, kref);
	return &((struct time_namespace *)a)->ns;
}

static __always_inline const struct ns_common *pid_of(__u64 a)
{
	/* kernel/pid_namespace.c: the RCU callback of destroy_pid_ns() */
	return &((struct pid_namespace *)(a - bpf_core_field_offset(struct pid_namespace, rcu)))->ns;
}

static __always_inline const struct ns_common *ipc_of(__u64 a) { return &((struct ipc_namespace *)a)->ns; }
static __always_inline const struct ns_common *mnt_of(__u64 a) { return &((struct mnt_namespace *)a)->ns; }
static __always_inline const struct ns_common *net_of(__u64 a) { return &((struct net *)a)->ns; }
static __always_inline const struct ns_common *user_of(__u64 a) { return &((struct user_namespace *)a)->ns; }
static __always_inline const struct ns_common *cgroup_of(__u64 a) { return &((struct cgroup_namespace *)a)->ns; }

/*
 * The programs of each row of functions.def. Arguments are read with
 * bpf_get_func_arg() (fentry) or pt_regs (kprobes); program names are
 * fentry_<fn>, fexit_<fn>, kprobe_<fn>, kretprobe_<fn> (the kernel keeps the
 * first 15 characters). User space loads the fentry or the kprobe ones of a
 * function, or none (nstrace/bpf/hookplan.py).
 *
 * CALL and DROPS: an entry side that reads two arguments, an exit side that
 * reads the return value.
 */
#define HOOK_CALL_DROPS(fn, argk, retk, slot, drops)				\
SEC("fentry/" #fn)								\
int fentry_##fn(__u64 *ctx)							\
{										\
	__u64 a0 = 0, a1 = 0;							\
	bpf_get_func_arg(ctx, 0, &a0);						\
	bpf_get_func_arg(ctx, 1, &a1);						\
	return step_enter(FN_##fn, drops, argk, a0, a1);			\
}										\
SEC("fexit/" #fn)								\
int fexit_##fn(__u64 *ctx)							\
{										\
	__u64 r = 0;								\
	if (retk != RET_NONE)							\
		bpf_get_func_ret(ctx, &r);					\
	return step_exit(FN_##fn, drops, retk, slot, (long)r);			\
}										\
SEC("kprobe/" #fn)								\
int kprobe_##fn(struct pt_regs *ctx)						\
{										\
	return step_enter(FN_##fn, drops, argk, PT_REGS_PARM1_CORE(ctx),	\
			  PT_REGS_PARM2_CORE(ctx));				\
}										\
SEC("kretprobe/" #fn)								\
int kretprobe_##fn(struct pt_regs *ctx)						\
{										\
	return step_exit(FN_##fn, drops, retk, slot, (long)PT_REGS_RC_CORE(ctx)); \
}

#define HOOK_CALL(fn, argk, retk, slot) HOOK_CALL_DROPS(fn, argk, retk, slot, false)
#define HOOK_DROPS(fn, argk) HOOK_CALL_DROPS(fn, argk, RET_NONE, 0, true)

/* BIRTH: entry only, the first argument is the namespace born */
#define HOOK_BIRTH(fn)								\
SEC("fentry/" #fn)								\
int fentry_##fn(__u64 *ctx)							\
{										\
	__u64 a0 = 0;								\
	bpf_get_func_arg(ctx, 0, &a0);						\
	return tree_add(FN_##fn, (const struct ns_common *)a0);			\
}										\
SEC("kprobe/" #fn)								\
int kprobe_##fn(struct pt_regs *ctx)						\
{										\
	return tree_add(FN_##fn, (const struct ns_common *)PT_REGS_PARM1_CORE(ctx)); \
}

/* DEATH and DEATH_ANY: entry only. nstype: the CLONE_NEW* of what fn frees, 0 to read the namespace's own. */
#define HOOK_DEATH_OF(fn, ns_of, nstype)					\
SEC("fentry/" #fn)								\
int fentry_##fn(__u64 *ctx)							\
{										\
	__u64 a0 = 0;								\
	bpf_get_func_arg(ctx, 0, &a0);						\
	return ns_dies(FN_##fn, ns_of(a0), nstype);				\
}										\
SEC("kprobe/" #fn)								\
int kprobe_##fn(struct pt_regs *ctx)						\
{										\
	return ns_dies(FN_##fn, ns_of(PT_REGS_PARM1_CORE(ctx)), nstype);	\
}

#define HOOK_DEATH(fn, ns_of, type) HOOK_DEATH_OF(fn, ns_of, NS_TYPE_##type)
#define HOOK_DEATH_ANY(fn, ns_of) HOOK_DEATH_OF(fn, ns_of, 0)

#define HOOK(kind, fn, ...) HOOK_##kind(fn, ##__VA_ARGS__)
#include "functions.def"
