/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Kernel pointers as ids: what a record says of an nsproxy or a namespace
 * instead of its address.
 */
#ifndef NSTRACE_PTR_ID_BPF_H
#define NSTRACE_PTR_ID_BPF_H

#include "core.h"
#include <bpf/bpf_helpers.h>
#include "options.bpf.h"

/*
 * How often an address was seen freed (ptr_retire()), by its 64-bit hash
 * (a bijection of the address): mixed into its id, so that the next nsproxy
 * the slab puts at the same address gets another id. syscalls.bpf.c defines
 * it; kfuncs.bpf.c, where nsproxies are seen freed, fills it: without the
 * function layer no free is seen and ids are as before. An LRU: an address it forgets goes back to its
 * first id.
 */
struct ptr_gen_map {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
};
extern struct ptr_gen_map ptr_gens SEC(".maps");

/* splitmix64's finalizer: a bijection of 64-bit numbers */
static __always_inline __u64 mix64(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/*
 * An nsproxy or namespace pointer as a short id: a keyed splitmix64
 * finalizer cut to 32 bits. Stable for the life of the object within one
 * nstrace run, equal for equal pointers, another for another object at a
 * freed one's address, and not an address.
 */
static __always_inline __u64 ptr_id(const void *p)
{
	__u64 x = (__u64)p, *gen;

	if (!x)
		return 0;
	if (raw_addresses)
		return x;
	x = mix64(x ^ id_key);
	/* only the function layer sees frees: without it the map stays empty, and
	 * the verifier drops the lookup (an LRU lookup on every syscall snapshot) */
	if (kernel_path) {
		gen = bpf_map_lookup_elem(&ptr_gens, &x);
		if (gen)
			x = mix64(x + *gen * 0x9e3779b97f4a7c15ULL);
	}
	return (x >> 32) | 1;	/* never 0: 0 means "no nsproxy" */
}

/* p is being freed: what is made at its address next is another object, with another id. */
static __always_inline void ptr_retire(const void *p)
{
	__u64 x = mix64((__u64)p ^ id_key), one = 1, *gen;

	if (raw_addresses || !p)
		return;
	gen = bpf_map_lookup_elem(&ptr_gens, &x);
	if (gen)
		__sync_fetch_and_add(gen, 1);
	else
		bpf_map_update_elem(&ptr_gens, &x, &one, BPF_NOEXIST);
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

#endif /* NSTRACE_PTR_ID_BPF_H */
