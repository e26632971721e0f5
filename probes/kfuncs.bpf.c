// SPDX-License-Identifier: GPL-2.0
/*
 * The kernel-function layer: each function of the namespace path gets an
 * entry and an exit program, twice over: fentry/fexit where the kernel
 * allows BPF trampolines, kprobe/kretprobe where it has kprobes. User space
 * (nstrace/bpf/hookplan.py) loads one pair per function or none, per kernel.
 *
 * Every hit inside a traced syscall appends a step to that syscall's
 * in-flight record, so one record carries its ordered kernel path. Arguments
 * and return values are read with bpf_get_func_arg()/bpf_get_func_ret()
 * (fentry, 5.17+) or pt_regs (kprobes): no program depends on a function's
 * exact prototype, which differs between 6.1 and 6.18 (flags went from
 * unsigned long to u64, the same register either way).
 */
#include "common.bpf.h"

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

static __always_inline int step_enter(enum nstrace_func fn, enum arg_kind kind, __u64 arg0, __u64 arg1)
{
	struct nstrace_step *s = next_step();
	struct nsproxy *nsp = NULL;

	if (!s)
		return 0;
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
	return 0;
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
 * A namespace's reference count, 0 where ns_common has none (5.10). Right
 * after a copy_*() returns, 1 is a namespace it made and more one it shares
 * (the !CLONE_NEW* branch takes a reference to the caller's: get_uts_ns() and
 * the like, 6.1 to 7.2).
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

static __always_inline int step_exit(enum nstrace_func fn, enum ret_kind kind, int slot, long ret)
{
	struct nstrace_step *s = next_step();

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
			s->refs = ns_refs(ns);
		}
		break;
	default:
		break;
	}
	return 0;
}

/*
 * One function, four programs. The entry side reads two arguments, the exit
 * side the return value. Program names: fentry_<fn>, fexit_<fn>,
 * kprobe_<fn>, kretprobe_<fn> (the kernel keeps the first 15 characters).
 */
#define TRACE_FUNC(fn, argk, retk, slot)					\
SEC("fentry/" #fn)								\
int fentry_##fn(__u64 *ctx)							\
{										\
	__u64 a0 = 0, a1 = 0;							\
	bpf_get_func_arg(ctx, 0, &a0);						\
	bpf_get_func_arg(ctx, 1, &a1);						\
	return step_enter(FN_##fn, argk, a0, a1);				\
}										\
SEC("fexit/" #fn)								\
int fexit_##fn(__u64 *ctx)							\
{										\
	__u64 r = 0;								\
	if (retk != RET_NONE)							\
		bpf_get_func_ret(ctx, &r);					\
	return step_exit(FN_##fn, retk, slot, (long)r);				\
}										\
SEC("kprobe/" #fn)								\
int kprobe_##fn(struct pt_regs *ctx)						\
{										\
	return step_enter(FN_##fn, argk, PT_REGS_PARM1_CORE(ctx),		\
			  PT_REGS_PARM2_CORE(ctx));				\
}										\
SEC("kretprobe/" #fn)								\
int kretprobe_##fn(struct pt_regs *ctx)						\
{										\
	return step_exit(FN_##fn, retk, slot, (long)PT_REGS_RC_CORE(ctx));	\
}

/* kernel/nsproxy.c */
TRACE_FUNC(copy_namespaces, ARG_FLAGS, RET_INT, 0)
TRACE_FUNC(create_new_namespaces, ARG_FLAGS, RET_NSPROXY, 0)
TRACE_FUNC(unshare_nsproxy_namespaces, ARG_FLAGS, RET_INT, 0)
TRACE_FUNC(switch_task_namespaces, ARG_TASK_NSPROXY, RET_NONE, 0)
TRACE_FUNC(validate_nsset, ARG_NONE, RET_INT, 0)
TRACE_FUNC(commit_nsset, ARG_NONE, RET_NONE, 0)
TRACE_FUNC(free_nsproxy, ARG_NSPROXY, RET_NONE, 0)
/* fs/namespace.c, kernel/utsname.c, ipc/namespace.c, kernel/pid_namespace.c,
 * kernel/cgroup/namespace.c, net/core/net_namespace.c, kernel/time/namespace.c */
TRACE_FUNC(copy_mnt_ns, ARG_FLAGS, RET_NS, NS_MNT)
TRACE_FUNC(copy_utsname, ARG_FLAGS, RET_NS, NS_UTS)
TRACE_FUNC(copy_ipcs, ARG_FLAGS, RET_NS, NS_IPC)
TRACE_FUNC(copy_pid_ns, ARG_FLAGS, RET_NS, NS_PID_FOR_CHILDREN)
TRACE_FUNC(copy_cgroup_ns, ARG_FLAGS, RET_NS, NS_CGROUP)
TRACE_FUNC(copy_net_ns, ARG_FLAGS, RET_NS, NS_NET)
TRACE_FUNC(copy_time_ns, ARG_FLAGS, RET_NS, NS_TIME_FOR_CHILDREN)
TRACE_FUNC(timens_on_fork, ARG_NSPROXY, RET_NONE, 0)
/* kernel/user_namespace.c */
TRACE_FUNC(create_user_ns, ARG_NONE, RET_INT, 0)
TRACE_FUNC(unshare_userns, ARG_FLAGS, RET_INT, 0)
/* the setns syscall itself (arch wrapper of kernel/nsproxy.c SYSCALL_DEFINE2(setns)) */
TRACE_FUNC(__x64_sys_setns, ARG_NONE, RET_INT, 0)
TRACE_FUNC(put_nsset, ARG_NONE, RET_NONE, 0)
/* kernel/fork.c: the body of unshare(2) */
TRACE_FUNC(ksys_unshare, ARG_FLAGS, RET_INT, 0)
/* kernel/time/namespace.c: switches the caller's vDSO clock page after setns into a time ns */
TRACE_FUNC(timens_commit, ARG_NONE, RET_NONE, 0)
/* each type's proc_ns_operations->install(), called by setns: arg1 is the ns_common joined */
TRACE_FUNC(mntns_install, ARG_NS, RET_INT, 0)
TRACE_FUNC(utsns_install, ARG_NS, RET_INT, 0)
TRACE_FUNC(ipcns_install, ARG_NS, RET_INT, 0)
TRACE_FUNC(pidns_install, ARG_NS, RET_INT, 0)
TRACE_FUNC(cgroupns_install, ARG_NS, RET_INT, 0)
TRACE_FUNC(netns_install, ARG_NS, RET_INT, 0)
TRACE_FUNC(userns_install, ARG_NS, RET_INT, 0)
TRACE_FUNC(timens_install, ARG_NS, RET_INT, 0)
