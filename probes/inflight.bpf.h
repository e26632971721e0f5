/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A thread's record while its syscall runs: the head in the in-flight table,
 * the kernel path, once a function step makes one, in the path table.
 * syscalls.bpf.c defines both maps; kfuncs.bpf.c sees them extern, and the
 * static linker (bpftool gen object) joins the two. native/batch.c reads the
 * in-flight table too.
 */
#ifndef NSTRACE_INFLIGHT_BPF_H
#define NSTRACE_INFLIGHT_BPF_H

#include "core.h"
#include <bpf/bpf_helpers.h>
#include "nstrace.h"

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

#endif /* NSTRACE_INFLIGHT_BPF_H */
