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
