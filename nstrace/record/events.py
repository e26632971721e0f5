"""The operation record: the ctypes mirror of ``struct nstrace_event`` and its decoded form.

probes/nstrace.h is the definition; tests/test_layout.py checks every field
of the mirror below against the compiled object's BTF.
"""

import ctypes
import dataclasses
import errno as errno_mod
import time

from ..kernel import flags as fl
from ..linux.comm import safe_comm

NS_SLOTS = len(fl.NS_ENTRIES)
MAX_STEPS = 48
# The enums of probes/nstrace.h (tests/test_layout.py checks them against BTF).
OPS = {1: "clone", 2: "clone3", 3: "unshare", 4: "setns", 5: "exec", 6: "open_tree", 7: "fsmount", 8: "free",
       9: "fork", 10: "vfork"}
OP_SLOTS = max(OPS) + 1  # enum nstrace_op's OP_MAX: the C tables' size
# The ops that make or free one namespace and say which in the record's "ns": the rest move a task
NS_OPS = ("open_tree", "fsmount", "free")
# Flags of the ops whose flags are not CLONE_*: include/uapi/linux/mount.h and fcntl.h (7.2)
OP_FLAGS = {
    "open_tree": {"OPEN_TREE_CLONE": 0x1, "OPEN_TREE_NAMESPACE": 0x2, "AT_SYMLINK_NOFOLLOW": 0x100,
                  "AT_NO_AUTOMOUNT": 0x800, "AT_EMPTY_PATH": 0x1000, "AT_RECURSIVE": 0x8000,
                  "OPEN_TREE_CLOEXEC": 0x80000},
    "fsmount": {"FSMOUNT_CLOEXEC": 0x1, "FSMOUNT_NAMESPACE": 0x2},
}
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

# CLOCK_MONOTONIC (bpf_ktime_get_ns) to wall clock, fixed once per run.
WALL_OFFSET_NS = time.time_ns() - time.monotonic_ns()


def _ns_map(ns_set, field):
    if not ns_set.valid:
        return None
    values = getattr(ns_set, field)
    return {name: (values[i] or None) for i, name in enumerate(fl.NS_ENTRIES)}


def decode_flags(value, op):
    """The names of an op's flags: its own table (OP_FLAGS), else CLONE_* (flags.decode_flags)."""
    table = OP_FLAGS.get(op)
    if table is None:
        return fl.decode_flags(value, op)
    names = []
    for name, bit in table.items():
        if value & bit:
            names.append(name)
            value &= ~bit
    return names + ([hex(value)] if value else [])


def format_id(value, raw_addresses=False):
    """A short nsproxy id as text: 8 hex digits, or the address when asked for."""
    if not value:
        return None
    return hex(value) if raw_addresses else f"{value:08x}"


@dataclasses.dataclass
class Record:
    """One namespace operation as nstrace reports it.

    Times: ``ts`` is wall-clock seconds at syscall exit; ``duration_us`` is
    syscall entry to exit in microseconds. Namespace maps are keyed by
    /proc/<pid>/ns entry names; values are inode numbers (``ns_id_*``: the
    kernel's 64-bit namespace id, None where the kernel has none).
    """

    ts: float
    duration_us: float
    op: str
    pid: int
    tid: int
    ppid: int
    uid: int
    comm: str
    raw_flags: int
    flags: list
    ret: int
    errno: str | None
    exit_signal: str | None
    child_pid: int | None
    child_tid: int | None
    target: dict | None
    ns_before: dict | None
    ns_after: dict | None
    ns_id_before: dict | None
    ns_id_after: dict | None
    changed: list
    nsproxy: dict
    start_time_ns: int
    child_start_ns: int | None
    cgroup_id: int | None = None   # None only in session files written before it was recorded
    container: dict | None = None  # the caller's container, from cgroup_id (the tracer fills it in)
    ns: dict | None = None         # open_tree, fsmount, free: {"type", "inode", "ns_id"} (+ "lived_ns")
    kernel_path: list = dataclasses.field(default_factory=list)
    kernel_path_dropped: int = 0
    proc_check: dict | None = None

    @property
    def ok(self):
        return self.ret >= 0

    @property
    def checked_task(self):
        """(pid, tid, start_time_ns, ns, ns_id) of the task whose /proc/<pid>/task/<tid>/ns the record
        describes: a clone's child after it, else the caller (before a failed clone, after unshare/setns).
        native/batch.c checked() keeps the same rule."""
        if self.op in fl.CHILD_OPS:
            if self.ok and self.child_pid:
                return self.child_pid, self.child_tid, self.child_start_ns, self.ns_after, self.ns_id_after
            return self.pid, self.tid, self.start_time_ns, self.ns_before, self.ns_id_before
        return self.pid, self.tid, self.start_time_ns, self.ns_after, self.ns_id_after

    @property
    def checked_tid(self):
        return self.checked_task[1]

    def to_json(self):
        # Shallow on purpose: dataclasses.asdict deep-copies every nested dict and list, on the
        # path of every record watch --json writes in Python.
        obj = {name: getattr(self, name) for name in _FIELDS}
        if obj["cgroup_id"] is None:  # a session from before it was recorded: the key is left out, as there
            del obj["cgroup_id"]
        return obj


_FIELDS = tuple(f.name for f in dataclasses.fields(Record))


def decode(raw, raw_addresses=False, step_decoder=None):
    """Decode one ring-buffer record (bytes) into a :class:`Record`."""
    ev = EventHead.from_buffer_copy(raw)
    op = OPS.get(ev.op, f"op{ev.op}")
    is_clone = op in fl.CHILD_OPS
    before = _ns_map(ev.before, "inum")
    after = _ns_map(ev.after, "inum")
    changed = []
    if before and after:
        id_before, id_after = _ns_map(ev.before, "ns_id"), _ns_map(ev.after, "ns_id")
        changed = [n for n in fl.NS_ENTRIES if before[n] != after[n] or id_before[n] != id_after[n]]

    target = None
    if op == "setns":
        kind = TARGET_KINDS.get(ev.target_kind, "other")
        target = {"fd": ev.setns_fd, "kind": kind}
        if kind == "nsfs":
            target.update(type=fl.NS_FLAG_VALUES.get(ev.target_nstype, hex(ev.target_nstype)),
                          inode=ev.target_inum, ns_id=ev.target_ns_id or None)
        elif kind == "pidfd":
            target["pid"] = ev.target_pid

    ns = None
    if op in NS_OPS and (op == "free" or ev.target_kind == 1):  # open_tree, fsmount: the fd is nsfs
        ns = {"type": fl.NS_FLAG_VALUES.get(ev.target_nstype, hex(ev.target_nstype)),
              "inode": ev.target_inum, "ns_id": ev.target_ns_id or None}
        if op == "free":
            ns["lived_ns"] = ev.lived_ns or None

    ret = ev.ret
    steps = []
    if step_decoder and ev.nsteps:
        n = min(ev.nsteps, MAX_STEPS, (len(raw) - HEAD_SIZE) // ctypes.sizeof(Step))
        steps = [step_decoder(Step.from_buffer_copy(raw, HEAD_SIZE + i * ctypes.sizeof(Step)), raw_addresses)
                 for i in range(n)]
    rec = Record(
        # whole microseconds: the float then prints as its 6 decimals (native/batch.c prints the same)
        ts=((ev.exit_ns + WALL_OFFSET_NS + 500) // 1000) / 1e6,
        duration_us=max(ev.exit_ns - ev.enter_ns, 0) / 1e3,
        op=op,
        pid=ev.pid,
        tid=ev.tid,
        ppid=ev.ppid,
        uid=ev.uid,
        comm=safe_comm(ev.comm),
        raw_flags=ev.raw_flags,
        flags=decode_flags(ev.raw_flags, op),
        ret=ret,
        errno=errno_mod.errorcode.get(-ret, str(-ret)) if ret < 0 else None,
        exit_signal=fl.exit_signal_name(ev.exit_signal) if is_clone else None,
        child_pid=(ev.child_pid or None) if is_clone else None,
        child_tid=(ev.child_tid or None) if is_clone else None,
        target=target,
        ns_before=before,
        ns_after=after,
        ns_id_before=_ns_map(ev.before, "ns_id"),
        ns_id_after=_ns_map(ev.after, "ns_id"),
        changed=changed,
        nsproxy={"before": format_id(ev.before.nsproxy_id, raw_addresses),
                 "after": format_id(ev.after.nsproxy_id, raw_addresses)},
        start_time_ns=ev.start_time_ns,
        child_start_ns=ev.child_start_ns or None if is_clone else None,
        cgroup_id=ev.cgroup_id,
        ns=ns,
        kernel_path=steps,
        kernel_path_dropped=ev.steps_dropped,
    )
    return rec
