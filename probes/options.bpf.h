/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What user space tells the programs and what they tell it back, outside
 * the records. syscalls.bpf.c defines these; kfuncs.bpf.c sees them extern,
 * and the static linker (bpftool gen object) joins the two.
 */
#ifndef NSTRACE_OPTIONS_BPF_H
#define NSTRACE_OPTIONS_BPF_H

#include "core.h"

/*
 * Options, set by user space between open and load (nstrace/bpf/probeset.py).
 * const volatile puts them in .rodata, which libbpf freezes at load: the
 * verifier then reads them as constants and skips the branches they rule
 * out (kernel/bpf/verifier.c bpf_map_direct_read(), 5.2+).
 */
extern const volatile bool trace_all;		/* keep plain forks too */
extern const volatile __u32 filter_tgid;	/* 0: every process */
extern const volatile __u64 id_key;		/* secret for nsproxy ids */
extern const volatile bool raw_addresses;	/* show kernel addresses */
extern const volatile __u32 wakeup_bytes;	/* 0: wake the reader per record */
extern const volatile bool kernel_path;		/* function probes are loaded */
extern const volatile __u32 task_struct_btf_id;	/* the kernel's, or 0: no bpf_rdonly_cast() */

/* Counters user space reads live through the mmaped .bss. */
extern __u64 lost_events;	/* ring buffer full: record dropped */
extern __u64 lost_inflight;	/* in-flight table full: op not traced */
extern __u64 lost_tracked;	/* --pid descendant table full: that process not followed */

#endif /* NSTRACE_OPTIONS_BPF_H */
