"""The operation record as nstrace reports it: one namespace operation, decoded (record/decode.py) or
read back from a session file, and its JSON form; its kernel path as Step objects; and the questions a
test asks of it (created, joined).

This is the public ``nstrace.Record`` (nstrace/api.py): what a field means is the README's table of
the JSON record, which the fields follow one to one.
"""

import dataclasses

from ..errors import UsageError
from ..kernel import flags as fl

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (type checkers know the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import ModuleType


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
    ns: dict | None = None         # open_tree, fsmount, free: {"type", "inode", "ns_id"} (+ "lived_ns", "context", "held_by")
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

    def as_dict(self) -> dict:
        """The record as the JSON object `watch --json` writes: {key: value}, the README's keys."""
        # Shallow on purpose: dataclasses.asdict deep-copies every nested dict and list, on the
        # path of every record watch --json writes in Python.
        obj = {name: getattr(self, name) for name in _FIELDS}
        if obj["cgroup_id"] is None:  # a session from before it was recorded: the key is left out, as there
            del obj["cgroup_id"]
        return obj

    def to_json(self) -> str:
        """The record as the one line `watch --json` writes for it, byte for byte (without its newline)."""
        from .jsonline import json_line
        return json_line(self)

    # --- what a test asks -------------------------------------------------------------------

    def created(self, ns_type: str | None = None) -> bool:
        """True if this operation made a new namespace of `ns_type` ("mnt", "uts", "ipc", "pid", "net",
        "user", "cgroup", "time"; None: of any type).

        A clone, clone3 or unshare that succeeded makes one namespace for each CLONE_NEW* flag it was
        given: each copy_*() that create_new_namespaces() calls with its flag set builds a new one
        (kernel/nsproxy.c, kernel/utsname.c copy_utsname(), kernel/pid_namespace.c copy_pid_ns(),
        fs/namespace.c copy_mnt_ns() ...; kernel/user_namespace.c unshare_userns(); 6.1 and 7.2).
        A clone's child is in them; unshare's caller is, but for pid and time, whose new namespace is
        its children's (pid_for_children, time_for_children). 7.1's UNSHARE_EMPTY_MNTNS and
        CLONE_EMPTY_MNTNS make a mount namespace too (kernel/fork.c, 7.2): the op's flag table says so
        (probes/uapi.def NSTRACE_NS_ALSO, kernel/flags.py requested_types()). An open_tree or fsmount
        with its 7.x flag made a mount namespace (the record's ``ns``).
        """
        return _any_of(ns_type, self._created_types())

    def joined(self, ns_type: str | None = None) -> bool:
        """True if this operation moved its caller into a namespace of `ns_type` that existed before
        it (None: of any type): a setns that succeeded, for each type whose /proc/<pid>/ns entry
        changed (``changed``; setns into a pid or time namespace changes the _for_children entry),
        or an exec that entered the caller's time_for_children (6.12+)."""
        return _any_of(ns_type, self._joined_types())

    def _created_types(self):
        if self.ret < 0:
            return set()
        if self.op in ("clone", "clone3", "unshare"):
            return set(fl.requested_types(self.raw_flags, self.op))
        if self.op in ("open_tree", "fsmount") and self.ns:
            return {self.ns.get("type")}
        return set()

    def _joined_types(self):
        if self.ret < 0 or self.op not in ("setns", "exec"):
            return ()
        return {fl.ns_type_of_entry(entry) for entry in self.changed}

    # --- the kernel path ----------------------------------------------------------------------

    @property
    def path(self) -> "KernelPath":
        """``kernel_path`` as a KernelPath: its Step objects in order (empty where the kernel-function
        layer was off)."""
        return KernelPath(self)

    def _repr_html_(self):
        return html_view().record_html(self) if html_view else None

    def __repr__(self) -> str:
        # The dataclass's own repr holds every field (a screenful): pytest prints this one in a
        # failed assertion's explanation, a row of the table shows the rest.
        return (f"Record(op={self.op!r}, pid={self.pid}, comm={self.comm!r}, flags={self.flags!r}, "
                f"ret={self.errno or self.ret!r}, changed={self.changed!r})")


def _any_of(ns_type, types):
    if ns_type is None:
        return bool(types)
    if ns_type not in fl.NS_TYPES:
        raise UsageError(f"unknown namespace type {ns_type!r}: valid types are {', '.join(fl.NS_TYPES)}")
    return ns_type in types


_FIELDS = tuple(f.name for f in dataclasses.fields(Record))

# A notebook (IPython, Jupyter) shows an object by its _repr_html_. That HTML is the view layer's (the
# HTML page's escaping and look), which this layer may not import (tests/test_layout.py): nstrace.api,
# which every public way to a Record passes through, sets this to a function that returns
# nstrace.view.notebook.
html_view: "Callable[[], ModuleType] | None" = None


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a record's kernel path: a kernel function entered or returned from, as a probe on it
    saw it (README: the JSON record, ``kernel_path``). Only the values the function's probe reads are
    set; the others are None."""

    func: str                       # the kernel function, e.g. "copy_utsname"
    kind: str                       # "enter" or "exit"
    file: str                       # its source file, e.g. "kernel/utsname.c"
    line: int | None = None         # its definition's line in `file`, in the recorded kernel's version
    line_from: str | None = None    # the kernel version `line` was read from, when not the recorded one
    ts_ns: int | None = None        # CLOCK_MONOTONIC nanoseconds at the probe
    flags: tuple | None = None      # CLONE_* names the function was passed
    ret: int | None = None          # an int result (0, or -errno)
    inode: int | None = None        # the namespace passed or returned
    created: bool | None = None     # a copy_*() exit: True if it built a new namespace, False if it shared the caller's
    nsproxy: str | None = None      # the nsproxy passed or returned (a short id)
    old_nsproxy: str | None = None  # switch_task_namespaces: the nsproxy it replaces
    refs: int | None = None         # the count of that nsproxy, or of the namespace a copy_*() returned
    old_refs: int | None = None     # switch_task_namespaces: the count of the nsproxy it replaces
    short: str = ""                 # the step in a few characters, as the table shows it

    @classmethod
    def from_json(cls, step: dict) -> "Step":
        """A Step from one element of a record's ``kernel_path`` (keys it does not know are left out)."""
        values = {name: step[name] for name in _STEP_FIELDS if name in step}
        if values.get("flags") is not None:
            values["flags"] = tuple(values["flags"])
        return cls(**values)


_STEP_FIELDS = tuple(f.name for f in dataclasses.fields(Step))


class KernelPath(tuple[Step, ...]):
    """A record's kernel path: its Steps, in the order the probes saw them. `record` is the Record it
    belongs to (a step's arguments and result read against it); a notebook shows it as the HTML
    page shows a path."""

    record: Record

    def __new__(cls, record: Record) -> "KernelPath":
        path = super().__new__(cls, (Step.from_json(s) for s in record.kernel_path))
        path.record = record
        return path

    def __getnewargs__(self):  # copy and pickle make it again from its record
        return (self.record,)

    def _repr_html_(self):
        return html_view().path_html(self.record) if html_view else None
