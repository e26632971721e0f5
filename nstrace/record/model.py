"""The operation record as nstrace reports it: one namespace operation, decoded (record/decode.py) or
read back from a session file, and its JSON form."""

import dataclasses

from ..kernel import flags as fl


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
