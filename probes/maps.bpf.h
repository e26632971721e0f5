/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The maps both BPF files use, besides the in-flight table (inflight.bpf.h):
 * the ring buffer that takes the records to user space, and the --pid table
 * of followed processes. syscalls.bpf.c defines them; kfuncs.bpf.c sees them
 * extern, and the static linker (bpftool gen object) joins the two.
 */
#ifndef NSTRACE_MAPS_BPF_H
#define NSTRACE_MAPS_BPF_H

#include "core.h"
#include <bpf/bpf_helpers.h>
#include "options.bpf.h"

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

#endif /* NSTRACE_MAPS_BPF_H */
