"""The record as the BPF side writes it: the ctypes mirror of ``struct nstrace_event`` and the codes of
its enums.

probes/nstrace.h is the definition; tests/test_layout.py checks every field of the mirror and every
code below against the compiled object's BTF.
"""

import ctypes

from ..kernel import flags as fl

NS_SLOTS = len(fl.NS_ENTRIES)
MAX_STEPS = 48
# The enums of probes/nstrace.h (tests/test_layout.py checks them against BTF).
OPS = {1: "clone", 2: "clone3", 3: "unshare", 4: "setns", 5: "exec", 6: "open_tree", 7: "fsmount", 8: "free",
       9: "fork", 10: "vfork"}
OP_SLOTS = max(OPS) + 1  # enum nstrace_op's OP_MAX: the C tables' size
# The ops that make or free one namespace and say which in the record's "ns": the rest move a task
NS_OPS = ("open_tree", "fsmount", "free")
TARGET_KINDS = {0: None, 1: "nsfs", 2: "pidfd", 3: "other", 4: "badfd"}
STEP_KINDS = {1: "enter", 2: "exit"}
STEP_VALUES = {0: "none", 1: "flags", 2: "nsproxy", 3: "switch", 4: "int", 5: "ns", 6: "ns_arg"}


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
