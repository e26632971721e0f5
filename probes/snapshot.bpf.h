/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A task's namespaces as a record's snapshot: what /proc/<pid>/ns/ would
 * show, read from the kernel's own pointers.
 */
#ifndef NSTRACE_SNAPSHOT_BPF_H
#define NSTRACE_SNAPSHOT_BPF_H

#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "nstrace.h"
#include "ns_read.bpf.h"
#include "ptr_id.bpf.h"
#include "caller.bpf.h"

/*
 * Two ways to read kernel memory, with very different costs per probe hit.
 *
 * BPF_CORE_READ(a, b, c) is one bpf_probe_read_kernel() call per pointer hop:
 * a helper call into copy_from_kernel_nofault() and its address check, tens
 * of ns each on the 6.18 build VMs (retpolines and return thunks). A record's
 * namespace snapshot took 35 of them.
 *
 * A pointer from bpf_get_current_task_btf() (5.11+) carries the kernel's BTF
 * type: the verifier lets the program load through it and through every
 * struct pointer loaded from it, and the JIT makes each such load one
 * instruction with an exception-table entry (BPF_PROBE_MEM, 5.5+): a faulting
 * or NULL address reads as 0, as a failed probe read does. The syscall
 * programs read their caller that way (snapshot_btf()).
 *
 * The child in task_newtask is a raw tracepoint argument, a plain number to
 * the verifier, and so is the caller on 5.8-5.10 (no such helper): snapshot()
 * reads those with as few helper calls as the kernel's layout allows.
 */

/*
 * A record's two snapshots: what /proc/<pid>/ns/ would show, read from the
 * kernel's own pointers, at syscall entry (e->before) and after it
 * (e->after: the caller at exit for unshare and setns, the child in
 * task_newtask for clone).
 *
 * The stash. Between entry and exit, e->after.ns_id[] holds, by slot, the
 * address of the ns_common behind e->before. An after snapshot reads only
 * the namespaces whose address differs and copies the others from before:
 * an operation changes one or two of ten, and a namespace's line is one
 * other CPUs keep writing (its refcount sits beside inum and ns_id). Equal
 * addresses are the same namespace: the caller holds every namespace of
 * before, through its nsproxy and cred, until switch_task_namespaces() and
 * commit_creds(), after every namespace the operation creates was allocated
 * (kernel/nsproxy.c create_new_namespaces(), unshare_nsproxy_namespaces(),
 * prepare_nsset(), commit_nsset(); kernel/fork.c ksys_unshare() and
 * copy_process(): 6.1 and 6.18), so no new one can have an old one's
 * address. op_exit() clears an after that was never filled: the stash
 * never leaves the kernel.
 */
static __always_inline void copy_slot(struct nstrace_event *e, int slot)
{
	e->after.inum[slot] = e->before.inum[slot];
	e->after.ns_id[slot] = e->before.ns_id[slot];
}

/*
 * A snapshot of a task without an nsproxy: not valid. Before, that is also
 * an empty stash: the slot holds the last record's bytes (inflight_take()).
 * After, valid stays 0 and op_exit() clears the set.
 */
static __always_inline void no_nsproxy(struct nstrace_event *e, bool after)
{
	if (after)
		return;
	__builtin_memset(&e->before, 0, sizeof(e->before));
	__builtin_memset(e->after.ns_id, 0, sizeof(e->after.ns_id));
}

/* One slot from a pointer that is a plain number, with bpf_probe_read_kernel(). */
static __always_inline void slot_probe(struct nstrace_event *e, bool after, int slot,
				       const struct ns_common *ns)
{
	if (!after) {
		e->after.ns_id[slot] = (__u64)ns;
		ns_fields(ns, &e->before.inum[slot], &e->before.ns_id[slot], NULL);
	} else if (e->after.ns_id[slot] == (__u64)ns) {
		copy_slot(e, slot);
	} else {
		ns_fields(ns, &e->after.inum[slot], &e->after.ns_id[slot], NULL);
	}
}

/*
 * One slot through a BTF pointer: plain loads. A privileged program may
 * store a pointer in map memory and compare it with a number (CAP_PERFMON,
 * kernel/bpf/verifier.c allow_ptr_leaks).
 */
static __always_inline void slot_btf(struct nstrace_event *e, bool after, int slot,
				     const struct ns_common *ns)
{
	struct nstrace_ns_set *s = after ? &e->after : &e->before;
	__u32 inum;
	__u64 id = 0;

	if (!after)
		e->after.ns_id[slot] = (__u64)ns;
	else if (e->after.ns_id[slot] == (__u64)ns) {
		copy_slot(e, slot);
		return;
	}
	inum = ns->inum;
	if (bpf_core_field_exists(ns->ns_id))
		id = ns->ns_id;
	/*
	 * Else clang merges these loads with copy_slot()'s from map memory
	 * into one instruction, and the verifier wants one pointer type per
	 * instruction ("same insn cannot be used with different pointers").
	 */
	barrier_var(inum);
	barrier_var(id);
	s->inum[slot] = inum;
	s->ns_id[slot] = id;
}

/*
 * A snapshot of task t read with bpf_probe_read_kernel(), for a task that is
 * not a BTF pointer: task_newtask's child; the caller before 5.11.
 */
static __always_inline void snapshot(struct nstrace_event *e, bool after, struct task_struct *t)
{
	struct nstrace_ns_set *s = after ? &e->after : &e->before;
	struct nsproxy *nsp = BPF_CORE_READ(t, nsproxy);
	const struct pid_namespace *pidns;
	const struct user_namespace *userns;
	struct nsproxy_ptrs p;

	if (!nsp) {	/* exiting task: exit_task_namespaces() already ran */
		no_nsproxy(e, after);
		return;
	}
	nsproxy_read(&p, nsp);
	slot_probe(e, after, NS_MNT, &p.mnt->ns);
	slot_probe(e, after, NS_UTS, &p.uts->ns);
	slot_probe(e, after, NS_IPC, &p.ipc->ns);
	pidns = active_pid_ns(t);
	slot_probe(e, after, NS_PID, &pidns->ns);
	slot_probe(e, after, NS_PID_FOR_CHILDREN, &p.pid_for_children->ns);
	slot_probe(e, after, NS_NET, &p.net->ns);
	userns = BPF_CORE_READ(t, real_cred, user_ns);
	slot_probe(e, after, NS_USER, &userns->ns);
	slot_probe(e, after, NS_CGROUP, &p.cgroup->ns);
	slot_probe(e, after, NS_TIME, &p.time->ns);
	slot_probe(e, after, NS_TIME_FOR_CHILDREN, &p.time_for_children->ns);
	s->nsproxy_id = ptr_id(nsp);
	s->nsproxy_refs = p.refs;
	s->valid = 1;
}

/*
 * A slot of after that the operation cannot have changed (a bit of same):
 * copied from before without a load. Else as slot_btf().
 */
#define SLOT_BTF_BUT(e, after, slot, ns, same)					\
	do {									\
		if ((same) & (1U << (slot)))					\
			copy_slot(e, slot);					\
		else								\
			slot_btf(e, after, slot, ns);				\
	} while (0)

/*
 * snapshot() of the calling task through BTF pointers: nsp, cred and pid are
 * its task->nsproxy, ->real_cred and ->thread_pid, which the caller loads
 * once for the whole program: where the verifier trusts the caller, each
 * such load costs it milliseconds (caller.bpf.h caller_task()).
 *
 * One helper call is left, and only for a task in a nested pid namespace:
 * numbers[level] is at an offset the verifier cannot know, and it allows
 * only fixed offsets into a BTF pointer (numbers[0], level 0, is one). After,
 * at syscall exit, pid is not read (pass NULL): a task's struct pid, so its
 * active pid namespace, is its own for life (only exec by a non-leader
 * thread swaps it, fs/exec.c de_thread(), not unshare or setns).
 *
 * same: the slots (bits 1 << NS_*) an after snapshot copies from before
 * unread, because the operation cannot have changed them (see
 * unshare_same() in syscalls.bpf.c).
 */
static __always_inline void snapshot_btf_but(struct nstrace_event *e, bool after, struct nsproxy *nsp,
					     const struct cred *cred, struct pid *pid, __u32 same)
{
	struct nstrace_ns_set *s = after ? &e->after : &e->before;

	if (!nsp) {	/* exiting task: exit_task_namespaces() already ran */
		no_nsproxy(e, after);
		return;
	}
	SLOT_BTF_BUT(e, after, NS_MNT, &nsp->mnt_ns->ns, same);
	SLOT_BTF_BUT(e, after, NS_UTS, &nsp->uts_ns->ns, same);
	SLOT_BTF_BUT(e, after, NS_IPC, &nsp->ipc_ns->ns, same);
	if (after) {
		copy_slot(e, NS_PID);
	} else {
		unsigned int level = pid->level;
		struct upid up = {};

		if (level == 0) {
			slot_btf(e, false, NS_PID, &pid->numbers[0].ns->ns);
		} else {
			bpf_core_read(&up, sizeof(up), &pid->numbers[level]);
			slot_probe(e, false, NS_PID, &up.ns->ns);
		}
	}
	SLOT_BTF_BUT(e, after, NS_PID_FOR_CHILDREN, &nsp->pid_ns_for_children->ns, same);
	SLOT_BTF_BUT(e, after, NS_NET, &nsp->net_ns->ns, same);
	SLOT_BTF_BUT(e, after, NS_USER, &cred->user_ns->ns, same);
	SLOT_BTF_BUT(e, after, NS_CGROUP, &nsp->cgroup_ns->ns, same);
	SLOT_BTF_BUT(e, after, NS_TIME, &nsp->time_ns->ns, same);
	SLOT_BTF_BUT(e, after, NS_TIME_FOR_CHILDREN, &nsp->time_ns_for_children->ns, same);
	ptr_id_into(&s->nsproxy_id, nsp);
	s->nsproxy_refs = *(int *)&nsp->count;
	s->valid = 1;
}


/* Every slot read (where the stash allows nothing less). */
static __always_inline void snapshot_btf(struct nstrace_event *e, bool after, struct nsproxy *nsp,
					 const struct cred *cred, struct pid *pid)
{
	snapshot_btf_but(e, after, nsp, cred, pid, 0);
}
#endif /* NSTRACE_SNAPSHOT_BPF_H */
