/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The calling task as a BTF pointer: what a syscall program reads its
 * caller through, where the kernel can give one.
 */
#ifndef NSTRACE_CALLER_BPF_H
#define NSTRACE_CALLER_BPF_H

#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include "options.bpf.h"

/* bpf_get_current_task_btf(): 5.11+ */
#define have_task_btf() bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_current_task_btf)

enum nstrace_btf_call {
#define NSTRACE_BTF_CALL(name, mark) BTF_CALL_##name = mark,
#include "btf_calls.def"
};

/* kernel/bpf/helpers.c (6.2+): obj as an untrusted pointer to the type btf_id */
static void *(*const bpf_rdonly_cast)(const void *obj, __u32 btf_id) = (void *)BTF_CALL_bpf_rdonly_cast;

/*
 * The caller, as a pointer the verifier does not trust. The one
 * bpf_get_current_task_btf() returns is trusted, and the verifier pays for
 * each load of a pointer field through a trusted pointer: it asks whether
 * the field keeps the trust (task_struct's "__safe_trusted", "__safe_rcu" ...
 * lists), each list found by name with a linear walk of the kernel's ~127k
 * BTF types, four walks per load and per path that reaches it
 * (kernel/bpf/verifier.c check_ptr_to_btf_access(), kernel/bpf/btf.c
 * btf_find_by_name_kind()). On 6.18 that was most of the verifier's time for
 * these programs (bench: start-up breakdown, verifier per program: sys_enter
 * 10.5 ms, 2.2 ms cast); the 6.12 and 7.2 lab guests verify in the same time
 * either way, and 6.1 has neither the walks nor bpf_rdonly_cast(). Nothing here
 * hands the task to a function that wants trust, and an untrusted pointer
 * loads the same (BPF_PROBE_MEM: a fault reads 0) without the walks.
 * bpf_rdonly_cast() makes one, and the verifier rewrites the call as a
 * register move (fixup_kfunc_call()): it costs nothing per hit.
 * task_struct_btf_id is 0 where the kernel has no bpf_rdonly_cast(), and
 * the call is dead code there.
 */
static __always_inline struct task_struct *caller_task(void)
{
	struct task_struct *t = bpf_get_current_task_btf();

	if (task_struct_btf_id)
		t = bpf_rdonly_cast(t, task_struct_btf_id);
	return t;
}

#endif /* NSTRACE_CALLER_BPF_H */
