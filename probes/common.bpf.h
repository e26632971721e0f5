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
#define CLONE_VM		0x00000100
#define CLONE_VFORK		0x00004000
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

/* The records, to user space (sized by user space before load). */
struct events_map {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
};
extern struct events_map events SEC(".maps");

/* --pid: the traced process and its descendants (see syscalls.bpf.c). */
struct tracked_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
};
extern struct tracked_map tracked SEC(".maps");

static __always_inline bool wanted_process(__u32 tgid)
{
	return !filter_tgid || bpf_map_lookup_elem(&tracked, &tgid);
}

/*
 * Batched wake-ups: wake the reader only for the record that crosses
 * wakeup_bytes of unread data. While the reader lags, every further record
 * would otherwise force a wake-up (an irq_work self-interrupt, microseconds
 * in a VM); the reader also polls on a timer, so nothing waits for long.
 */
static __always_inline __u64 wakeup_flags(__u64 size)
{
	__u64 avail;

	if (!wakeup_bytes)
		return 0;
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	return avail < wakeup_bytes && avail + size >= wakeup_bytes ?
	       BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/*
 * Records under construction, between syscall entry and exit: the head of
 * struct nstrace_event only, so that entering a syscall writes a few hundred
 * bytes, not the whole step array. An array of INFLIGHT_SLOTS, not a hash
 * map keyed by tid: in the namespace-churn benchmark a hash update and
 * delete (bucket lock, per-CPU free list, value copy) cost more than all the
 * rest of a probe (bench: kernel ns per probe hit), where an array slot is
 * an address computation. A slot is taken by writing its tid (0: free; the idle task
 * makes no syscalls) and given back by zeroing it.
 */
struct inflight_map {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, INFLIGHT_SLOTS);
	__type(key, __u32);
	__uint(value_size, NSTRACE_HEAD_SIZE);
};
extern struct inflight_map inflight SEC(".maps");

/* The i-th of tid's INFLIGHT_PROBES slots, from tid % INFLIGHT_SLOTS on (NULL: never, for an array). */
static __always_inline struct nstrace_event *inflight_at(__u32 tid, __u32 i)
{
	__u32 slot = (tid + i) & (INFLIGHT_SLOTS - 1);

	return bpf_map_lookup_elem(&inflight, &slot);
}

/* tid's in-flight record, or NULL. */
static __always_inline struct nstrace_event *inflight_find(__u32 tid)
{
	for (__u32 i = 0; i < INFLIGHT_PROBES; i++) {
		struct nstrace_event *e = inflight_at(tid, i);

		if (e && e->tid == tid)
			return e;
	}
	return NULL;
}

/*
 * A slot is taken with a compare-and-swap of tid and the field after it as
 * one 8-byte word (the 4-byte form needs -mcpu=v3): free is a zero word,
 * taken a word whose low half is the tid.
 */
_Static_assert(__builtin_offsetof(struct nstrace_event, tid) % 8 == 0, "tid heads an 8-byte word");

static __always_inline __u64 *slot_word(struct nstrace_event *e)
{
	return (__u64 *)&e->tid;
}

/*
 * A slot for tid, with the bytes of the record that last had it: the caller
 * writes every field (op_enter()). NULL if all of tid's slots are
 * taken by other threads. A slot tid already holds is taken again: a task
 * that died inside a syscall left it, and its tid was reused (op_exit()
 * tells such a record apart by start time).
 *
 * NSTRACE_NO_ATOMICS builds the object for kernels without BPF atomics
 * (before 5.12: kernel/bpf/verifier.c of 5.10 refuses BPF_STX|BPF_ATOMIC
 * with a nonzero imm, "BPF_STX uses reserved fields", even in dead code, so
 * no CO-RE guard can keep the compare-and-swap in one object). There, two
 * threads of the same slot entering at the same instant on two CPUs can
 * both take it; one record is then wrong.
 */
static __always_inline struct nstrace_event *inflight_take(__u32 tid)
{
	for (__u32 i = 0; i < INFLIGHT_PROBES; i++) {
		struct nstrace_event *e = inflight_at(tid, i);
		__u64 was;

		if (!e)
			continue;
#ifdef NSTRACE_NO_ATOMICS
		was = *slot_word(e);
		if (!was)
			*slot_word(e) = tid;
#else
		was = __sync_val_compare_and_swap(slot_word(e), 0, tid);
#endif
		if (!was || (__u32)was == tid)
			return e;
	}
	return NULL;
}

/* Give e's slot back: after its record was emitted (or dropped). */
static __always_inline void inflight_give_back(struct nstrace_event *e)
{
	*slot_word(e) = 0;
}

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
#define have_task_btf() bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)

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
 * ptr_id() of a BTF pointer, stored in *slot (map memory). The verifier
 * refuses XOR and multiply on a pointer register ("bitwise operator on
 * pointer prohibited", kernel/bpf/verifier.c adjust_ptr_min_max_vals(), 6.1
 * and 6.18), but a load from a map value is a plain number: park the
 * pointer in the slot, load it back, hash it.
 */
static __always_inline void ptr_id_into(__u64 *slot, const void *p)
{
	*slot = (__u64)p;
	*slot = ptr_id((const void *)*(volatile __u64 *)slot);
}

/*
 * snapshot() of the calling task through BTF pointers: nsp, cred and pid are
 * its task->nsproxy, ->real_cred and ->thread_pid, which the caller loads
 * once for the whole program. Why once: on 6.18 the verifier searches the
 * kernel's BTF by name for each instruction that loads a pointer field
 * through the trusted pointer bpf_get_current_task_btf() returns. It asks
 * whether the field is in task_struct's "__safe_trusted", "__safe_rcu" ...
 * lists, each found by name with a linear walk of the kernel's ~127k BTF types, four
 * walks per load (kernel/bpf/verifier.c check_ptr_to_btf_access(),
 * kernel/bpf/btf.c btf_find_by_name_kind(); since about 6.4, none of it in
 * 6.1; 7.x sorts the BTF and searches it). Scalar fields, and loads through
 * the pointers loaded that way (plain, untrusted), cost nothing of the kind.
 *
 * One helper call is left, and only for a task in a nested pid namespace:
 * numbers[level] is at an offset the verifier cannot know, and it allows
 * only fixed offsets into a BTF pointer (numbers[0], level 0, is one). After,
 * at syscall exit, pid is not read (pass NULL): a task's struct pid, so its
 * active pid namespace, is its own for life (only exec by a non-leader
 * thread swaps it, fs/exec.c de_thread(), not unshare or setns).
 */
static __always_inline void snapshot_btf(struct nstrace_event *e, bool after, struct nsproxy *nsp,
					 const struct cred *cred, struct pid *pid)
{
	struct nstrace_ns_set *s = after ? &e->after : &e->before;

	if (!nsp) {	/* exiting task: exit_task_namespaces() already ran */
		no_nsproxy(e, after);
		return;
	}
	slot_btf(e, after, NS_MNT, &nsp->mnt_ns->ns);
	slot_btf(e, after, NS_UTS, &nsp->uts_ns->ns);
	slot_btf(e, after, NS_IPC, &nsp->ipc_ns->ns);
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
	slot_btf(e, after, NS_PID_FOR_CHILDREN, &nsp->pid_ns_for_children->ns);
	slot_btf(e, after, NS_NET, &nsp->net_ns->ns);
	slot_btf(e, after, NS_USER, &cred->user_ns->ns);
	slot_btf(e, after, NS_CGROUP, &nsp->cgroup_ns->ns);
	slot_btf(e, after, NS_TIME, &nsp->time_ns->ns);
	slot_btf(e, after, NS_TIME_FOR_CHILDREN, &nsp->time_ns_for_children->ns);
	ptr_id_into(&s->nsproxy_id, nsp);
	s->nsproxy_refs = *(int *)&nsp->count;
	s->valid = 1;
}

static __always_inline bool is_err_value(long v)
{
	return (unsigned long)v >= (unsigned long)-MAX_ERRNO;
}

#endif /* NSTRACE_COMMON_BPF_H */
