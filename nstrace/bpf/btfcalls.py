"""Kernel functions nstrace's programs call by BTF id (kfuncs), written into the calls by nstrace.

The object calls each function of probes/btf_calls.def as a helper number no
kernel has (its mark). Before the load, the calls become calls by this
kernel's BTF id of the function, and the option that goes with them is set;
where the kernel has no such function, the mark stays, in code the option
leaves dead. libbpf would resolve a ``__ksym`` extern itself, but to do so it
parses the kernel's whole BTF (5.5 MB on 6.18) at every load, which costs
more than the call saves the verifier (bench: start-up breakdown). The ids
are a fact of the boot: found in the walk of the raw BTF that builds the
boot's minimal copy of it (nstrace/bpf/corebtf.py kernel(), once per process),
and kept for the rest of the boot (bootcache).
"""

import struct

from ..kernel import defs
from . import bootcache, corebtf

# {function: its mark}: the helper number the object calls it by
MARKS = {name: int(mark, 0) for name, mark in defs.rows("btf_calls.def", "NSTRACE_BTF_CALL")}
# The BTF types whose ids the calls take, as options (probes/options.bpf.h): the type's kernel id,
# or 0 where the kernel lacks the function that uses it.
TYPE_OPTIONS = {"task_struct_btf_id": ("task_struct", "bpf_rdonly_cast")}

_CALL = 0x85                 # BPF_JMP | BPF_CALL
_PSEUDO_KFUNC_CALL = 2       # src_reg of a call by BTF id (include/uapi/linux/bpf.h)
_INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst_reg:4 src_reg:4, off, imm
_CACHE = "btf-calls"    # bootcache name


def _wanted():
    """{name: BTF kind} of what the calls need: MARKS' functions, and the types of TYPE_OPTIONS."""
    return {**{name: corebtf.FUNC for name in MARKS}, **{t: corebtf.STRUCT for t, _ in TYPE_OPTIONS.values()}}


def _lookup():
    """'name=id ...' for _wanted(), as this kernel's BTF has them: from the walk of it this process
    made for the boot's minimal copy (corebtf.kernel()), or one of its own."""
    try:
        ids = corebtf.kernel().find(_wanted())
    except (OSError, ValueError, struct.error):
        return ""
    return " ".join(f"{name}={type_id}" for name, type_id in sorted(ids.items()))


def kernel_ids():
    """{name: BTF id} of this boot's kernel, for the functions and types the calls need (those it has)."""
    text = bootcache.text(_CACHE, _lookup)
    return {name: int(type_id) for name, _, type_id in (word.partition("=") for word in text.split())}


def write_calls(obj):
    """Make obj's marked calls the kernel's functions, and set the options that enable them; before load."""
    ids = kernel_ids()
    for option, (type_name, function) in TYPE_OPTIONS.items():
        if type_name in ids and function in ids:
            obj.set_rodata(option, ids[type_name])
    for function, mark in MARKS.items():
        if function in ids:
            obj.replace_calls(_INSN.pack(_CALL, 0, 0, mark),
                              _INSN.pack(_CALL, _PSEUDO_KFUNC_CALL << 4, 0, ids[function]))
