"""The record as the BPF side writes it: the ctypes mirror of ``struct nstrace_event`` and the codes of
its enums.

probes/nstrace.h is the definition, its enums made from the rows of probes/record.def, which the codes
below are read from (nstrace/kernel/defs.py); tests/test_layout.py checks every field of the mirror and
every code below against the compiled object's BTF.
"""

import ctypes

from ..kernel import defs
from ..kernel import flags as fl


def _codes(macro):
    """{value: name} of one enum of probes/record.def, each named by its row's name in lower case."""
    return {int(value): name.lower() for name, value in defs.rows("record.def", macro)}


NS_SLOTS = len(fl.NS_ENTRIES)
MAX_STEPS = int(dict(defs.rows("record.def", "NSTRACE_SIZE"))["MAX_STEPS"])
OPS = _codes("NSTRACE_OP")
OP_SLOTS = max(OPS) + 1  # enum nstrace_op's OP_MAX: the C tables' size
# The ops that make or free one namespace and say which in the record's "ns": the rest move a task
NS_OPS = ("open_tree", "fsmount", "free")
TARGET_KINDS = {value: name if value else None for value, name in _codes("NSTRACE_TARGET").items()}  # NONE: null
STEP_KINDS = _codes("NSTRACE_STEP_KIND")
STEP_VALUES = _codes("NSTRACE_STEP_VALUE")
# a free's context and last holder (enum nstrace_context, nstrace_holder); NONE: null
CONTEXTS = {value: name if value else None for value, name in _codes("NSTRACE_CONTEXT").items()}
HOLDERS = {value: name if value else None for value, name in _codes("NSTRACE_HOLDER").items()}


class NsSet(ctypes.Structure):
    _fields_ = [
        ("inum", ctypes.c_uint32 * NS_SLOTS),
        ("ns_id", ctypes.c_uint64 * NS_SLOTS),
        ("nsproxy_id", ctypes.c_uint64),
        ("nsproxy_refs", ctypes.c_uint32),
        ("valid", ctypes.c_uint32),
    ]


class Step(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("ret", ctypes.c_int64),
        ("arg", ctypes.c_uint64),
        ("nsproxy_id", ctypes.c_uint64),
        ("func", ctypes.c_uint32),
        ("kind", ctypes.c_uint32),
        ("what", ctypes.c_uint32),
        ("inum", ctypes.c_uint32),
        ("refs", ctypes.c_uint32),
        ("old_refs", ctypes.c_uint32),
    ]


_HEAD_FIELDS = [
        ("enter_ns", ctypes.c_uint64),
        ("exit_ns", ctypes.c_uint64),
        ("start_time_ns", ctypes.c_uint64),
        ("child_start_ns", ctypes.c_uint64),
        ("raw_flags", ctypes.c_uint64),
        ("ret", ctypes.c_int64),
        ("cgroup_id", ctypes.c_uint64),
        ("lived_ns", ctypes.c_uint64),
        ("op", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("ppid", ctypes.c_uint32),
        ("uid", ctypes.c_uint32),
        ("child_pid", ctypes.c_uint32),
        ("child_tid", ctypes.c_uint32),
        ("exit_signal", ctypes.c_int32),
        ("setns_fd", ctypes.c_int32),
        ("target_kind", ctypes.c_uint32),
        ("target_nstype", ctypes.c_uint32),
        ("target_inum", ctypes.c_uint32),
        ("target_ns_id", ctypes.c_uint64),
        ("target_pid", ctypes.c_uint32),
        ("nsteps", ctypes.c_uint32),
        ("steps_dropped", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("context", ctypes.c_uint16),
        ("holder", ctypes.c_uint16),
        ("before", NsSet),
        ("after", NsSet),
]


class Event(ctypes.Structure):
    """struct nstrace_event, whole."""

    _fields_ = _HEAD_FIELDS + [("steps", Step * MAX_STEPS)]


class EventHead(ctypes.Structure):
    """struct nstrace_event up to its steps: what every record carries (decoded without copying 3 KiB)."""

    _fields_ = _HEAD_FIELDS


HEAD_SIZE = Event.steps.offset
