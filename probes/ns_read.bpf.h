/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Readers of the kernel's namespace structures: an ns_common's inode, id and
 * type, an nsproxy's pointers and count, a task's active pid namespace. Each
 * with as few helper calls as the running kernel's layout allows (CO-RE).
 */
#ifndef NSTRACE_NS_READ_BPF_H
#define NSTRACE_NS_READ_BPF_H

#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

/*
 * Bytes one read may span to take ns_type, inum and ns_id of an ns_common
 * together: 16 on 6.18 (inum at 24, ns_id at 32), 40 with ns_type (at 0);
 * 7.2 keeps the same 40 (ns_type at 64 after the cache-line aligned
 * refcount, ns_id heading the anonymous struct ns_tree at 96).
 * include/linux/ns_common.h of 6.18 and 7.2.
 */
#define NS_SPAN 48

/*
 * inum and ns_id of an ns_common with one helper call where the kernel has
 * ns_id (6.18+), also ns_type when type is not NULL. Offsets are the running
 * kernel's (CO-RE), so the span is a constant to the verifier.
 */
static __always_inline void ns_fields(const struct ns_common *ns, __u32 *inum, __u64 *id,
				      __u32 *type)
{
	__u64 buf[NS_SPAN / 8];
	__u32 o_inum, o_id, o_type, lo, hi;

	if (!bpf_core_field_exists(ns->ns_id)) {	/* before 6.18: no ns_id, no ns_type */
		bpf_core_read(inum, sizeof(*inum), &ns->inum);
		*id = 0;
		if (type)
			*type = BPF_CORE_READ(ns, ops, type);
		return;
	}
	o_inum = bpf_core_field_offset(ns->inum);
	o_id = bpf_core_field_offset(ns->ns_id);
	lo = o_inum < o_id ? o_inum : o_id;
	hi = o_inum + 4 > o_id + 8 ? o_inum + 4 : o_id + 8;
	if (type) {
		o_type = bpf_core_field_offset(ns->ns_type);
		lo = o_type < lo ? o_type : lo;
		hi = o_type + 4 > hi ? o_type + 4 : hi;
	}
	lo &= ~7;	/* ns_id is 8-aligned in the struct: keep it 8-aligned in buf */
	if (hi - lo > sizeof(buf)) {	/* a future layout that spreads them out */
		bpf_core_read(inum, sizeof(*inum), &ns->inum);
		bpf_core_read(id, sizeof(*id), &ns->ns_id);
		if (type)
			bpf_core_read(type, sizeof(*type), &ns->ns_type);
		return;
	}
	bpf_probe_read_kernel(buf, hi - lo, (void *)ns + lo);	/* zeroes buf on a fault */
	*inum = *(__u32 *)((void *)buf + (o_inum - lo));
	*id = *(__u64 *)((void *)buf + (o_id - lo));
	if (type)
		*type = *(__u32 *)((void *)buf + (o_type - lo));
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

/* The namespaces an nsproxy points to, as plain numbers. */
struct nsproxy_ptrs {
	const struct mnt_namespace *mnt;
	const struct uts_namespace *uts;
	const struct ipc_namespace *ipc;
	const struct pid_namespace *pid_for_children;
	const struct net *net;
	const struct cgroup_namespace *cgroup;
	const struct time_namespace *time;
	const struct time_namespace *time_for_children;
	__u32 refs;
};

/*
 * All of *nsp with one helper call: a whole copy of the kernel's struct
 * (72 bytes on 6.1, 6.18 and 7.2, include/linux/nsproxy.h), read at the offsets
 * CO-RE gives core.h's struct nsproxy, which applies inside the copy as in
 * the kernel. A kernel whose nsproxy outgrew the copy is read field by field.
 */
static __always_inline void nsproxy_read(struct nsproxy_ptrs *p, const struct nsproxy *nsp)
{
	union {
		struct nsproxy n;
		__u64 raw[16];
	} c;	/* only bytes the read wrote (or zeroed, on a fault) are used */

	if (bpf_core_type_size(struct nsproxy) > sizeof(c)) {
		p->mnt = BPF_CORE_READ(nsp, mnt_ns);
		p->uts = BPF_CORE_READ(nsp, uts_ns);
		p->ipc = BPF_CORE_READ(nsp, ipc_ns);
		p->pid_for_children = BPF_CORE_READ(nsp, pid_ns_for_children);
		p->net = BPF_CORE_READ(nsp, net_ns);
		p->cgroup = BPF_CORE_READ(nsp, cgroup_ns);
		p->time = BPF_CORE_READ(nsp, time_ns);
		p->time_for_children = BPF_CORE_READ(nsp, time_ns_for_children);
		p->refs = nsproxy_refs(nsp);
		return;
	}
	bpf_core_read(&c, bpf_core_type_size(struct nsproxy), nsp);
	p->mnt = c.n.mnt_ns;
	p->uts = c.n.uts_ns;
	p->ipc = c.n.ipc_ns;
	p->pid_for_children = c.n.pid_ns_for_children;
	p->net = c.n.net_ns;
	p->cgroup = c.n.cgroup_ns;
	p->time = c.n.time_ns;
	p->time_for_children = c.n.time_ns_for_children;
	p->refs = *(int *)&c.n.count;
}

#endif /* NSTRACE_NS_READ_BPF_H */
