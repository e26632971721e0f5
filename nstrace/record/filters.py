"""Which records a user asked to see: --comm, --op, --type, --container, --ns (user space; --pid is
followed in the kernel). One value, :class:`Filter`, parsed and refused here for watch, show and
render alike; native/batch.c's wanted() applies it in C as struct batch_filter (:meth:`Filter.to_c`).
tests/test_batch.py and tests/test_json_output.py hold the two filters to each other, and
tests/test_layout.py and tests/test_batch.py the mirror below and its limits to the library's own layout.
"""

import ctypes
import dataclasses
import re
import typing

from ..errors import UsageError
from ..kernel import flags as fl
from ..linux import comm, containers
from . import layout

# The arrays of native/batch.c's struct batch_filter: BATCH_MAX_COMMS names of the record's comm width
# (TASK_COMM_LEN), BATCH_MAX_NS namespaces
MAX_COMMS = 16
MAX_NS = 16
COMM_WIDTH = layout.EventHead.comm.size
OPS = tuple(layout.OPS.values())


def _widest(field):
    """The largest value one element of an NsSet array holds."""
    return (1 << 8 * ctypes.sizeof(dict(layout.NsSet._fields_)[field]._type_)) - 1


# What a record can hold, and so what a --ns value can match: ns_common.inum is an unsigned int, and
# ns_common.ns_id a u64 (include/linux/ns_common.h, 6.18); 0 is neither (the record's "none").
INODE_MAX = _widest("inum")
NS_ID_MAX = _widest("ns_id")


class Ns(typing.NamedTuple):
    """One --ns value: a namespace by type and inode (ns_id None), or by ns_id alone (type, inode None)."""

    type: str | None
    inode: int | None
    ns_id: int | None


# ASCII digits only: int() and str.isdigit() also take other scripts' digits (and isdigit "²", which
# int() then refuses), and a filter is no place for them
_NUMBER = re.compile(r"[0-9]+")
_TYPED = re.compile(r"(?P<type>[a-z]+):(?:\[(?P<bracketed>[0-9]+)\]|(?P<inode>[0-9]+))")


def parse_ns(value):
    """--ns TYPE:INODE (also lsns's TYPE:[INODE]) or an NS_ID, as an Ns; UsageError for anything else."""
    text = value.strip()
    if _NUMBER.fullmatch(text):
        return Ns(None, None, _number(text, text, "an ns_id"))
    m = _TYPED.fullmatch(text)
    if not m or m["type"] not in fl.NS_TYPES:
        raise UsageError(f"--ns {_shown(value)!r}: a namespace is TYPE:INODE (one of {', '.join(fl.NS_TYPES)}, "
                         f"e.g. net:4026531840 or net:[4026531840], as lsns and /proc/PID/ns show it) or its ns_id")
    return Ns(m["type"], _number(m["bracketed"] or m["inode"], text, "an inode"), None)


_LIMITS = {"an inode": (INODE_MAX, "unsigned int"), "an ns_id": (NS_ID_MAX, "u64")}


def _number(digits, text, what):
    """int(digits), but past every limit without asking int(), which refuses more than 4300 digits."""
    significant = digits.lstrip("0") or "0"
    if len(significant) > len(str(NS_ID_MAX)):
        raise _past(text, what)
    return int(significant)


def _past(text, what):
    limit, c_type = _LIMITS[what]
    return UsageError(f"--ns {_shown(text)}: {what} is 1 to {limit} (the kernel's {c_type}): this one could never match")


def _shown(text):
    return text if len(text) <= 48 else text[:45] + "..."


def _split(values, option, what):
    """Repeated and comma-separated values; given only empty ones, a usage error."""
    out = tuple(v.strip() for value in values for v in value.split(",") if v.strip())
    if values and not out:
        raise UsageError(f"{option}: no {what}")
    return out


@dataclasses.dataclass(frozen=True)
class Filter:
    """The records wanted: each field given narrows them (an empty one takes every record).

    Refused at construction if a field holds a value no record could ever match, or more than C's
    struct batch_filter holds: a Filter that exists is one both filters apply alike.
    """

    comms: tuple = ()       # task->comm as nstrace shows it (escaped: linux/comm.py)
    ops: tuple = ()         # names of OPS
    types: tuple = ()       # namespace types the operation touches (flags.NS_TYPES)
    containers: tuple = ()  # the caller's or a setns target's container: an id prefix or a name
    namespaces: tuple = ()  # Ns values the record involves

    @classmethod
    def parse(cls, comm=(), ops=(), types=(), container=(), ns=()):
        """From the command line's words: each option repeatable, and comma-separated."""
        return cls(comms=_split(comm, "--comm", "command name given"),
                   ops=_split(ops, "--op", f"operation given: valid are {', '.join(OPS)}"),
                   types=tuple(fl.parse_ns_types(",".join(types))) if types else (),
                   containers=_split(container, "--container", "container id or name given"),
                   namespaces=tuple(parse_ns(v) for v in _split(ns, "--ns", "namespace given")))

    def __post_init__(self):
        for name in ("comms", "ops", "types", "containers"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "namespaces", tuple(Ns(*ns) for ns in self.namespaces))
        for name in self.comms:
            _check_comm(name)
        for op in self.ops:
            if op not in OPS:
                raise UsageError(f"unknown operation {op!r}: valid are {', '.join(OPS)}")
        for t in self.types:
            if t not in fl.NS_TYPES:
                raise UsageError(f"unknown namespace type {t!r}: valid are {', '.join(fl.NS_TYPES)}")
        for ns in self.namespaces:
            _check_ns(ns)
        if len(self.comms) > MAX_COMMS:
            raise UsageError(f"at most {MAX_COMMS} --comm values, not {len(self.comms)}")
        if len(self.namespaces) > MAX_NS:
            raise UsageError(f"at most {MAX_NS} --ns values, not {len(self.namespaces)}")

    def wanted(self, rec):
        """True if rec (an model.Record) passes every field."""
        if self.ops and rec.op not in self.ops:
            return False
        if self.comms and rec.comm not in self.comms:
            return False
        if self.types and not touched_types(rec) & set(self.types):
            return False
        if self.containers and not container_wanted(rec, self.containers):
            return False
        return not self.namespaces or involves(rec, self.namespaces)

    def to_c(self):
        """This filter as native/batch.c's struct batch_filter. --container is C's to apply through the
        match bit of each container text (record/reader.py Batch.set_container)."""
        f = BatchFilter()
        number = {name: num for num, name in layout.OPS.items()}
        for op in self.ops:
            f.ops_mask |= 1 << number[op]
        for i, name in enumerate(self.comms):
            f.comms[i].value = comm.comm_bytes(name)  # the kernel's bytes: C compares those
        f.ncomms = len(self.comms)
        for t in self.types:
            f.types_mask |= _type_bit(t)
        f.containers = bool(self.containers)
        for i, ns in enumerate(self.namespaces):
            f.ns_type_bit[i] = _type_bit(ns.type) if ns.type else 0
            f.ns_inum[i], f.ns_id[i] = ns.inode or 0, ns.ns_id or 0
        f.nns = len(self.namespaces)
        return f


def _type_bit(ns_type):
    return fl.CLONE_FLAGS[fl.NS_TYPES[ns_type]]


def _check_comm(name):
    raw = comm.comm_bytes(name)
    if raw is None:
        raise UsageError(f"--comm {name!r}: not a command name as nstrace shows it (a control character, "
                         f"a backslash or a byte that is not UTF-8 is written as events show it, e.g. \\x1b)")
    if not raw or len(raw) > comm.COMM_BYTES or b"\0" in raw:
        raise UsageError(f"--comm {name!r}: a command name has 1 to {comm.COMM_BYTES} bytes, none of them NUL "
                         f"(the kernel's TASK_COMM_LEN less the NUL that ends it): this one could never match")


def _check_ns(ns):
    if ns.type is None:
        if not 0 < ns.ns_id <= NS_ID_MAX:
            raise _past(str(ns.ns_id), "an ns_id")
    elif ns.type not in fl.NS_TYPES:
        raise UsageError(f"--ns: unknown namespace type {ns.type!r}: valid are {', '.join(fl.NS_TYPES)}")
    elif not 0 < ns.inode <= INODE_MAX:
        raise _past(f"{ns.type}:{ns.inode}", "an inode")


class BatchFilter(ctypes.Structure):
    """native/batch.c struct batch_filter (tests/test_layout.py compares the two layouts)."""

    _fields_ = [
        ("ops_mask", ctypes.c_uint32),
        ("ncomms", ctypes.c_uint32),
        ("comms", (ctypes.c_char * COMM_WIDTH) * MAX_COMMS),
        ("types_mask", ctypes.c_uint64),
        ("containers", ctypes.c_uint32),
        ("nns", ctypes.c_uint32),
        ("ns_type_bit", ctypes.c_uint64 * MAX_NS),
        ("ns_inum", ctypes.c_uint64 * MAX_NS),
        ("ns_id", ctypes.c_uint64 * MAX_NS),
    ]


def touched_types(rec):
    """The namespace types an operation touches: those its flags ask for, those that changed, a setns
    target's, and the one open_tree or fsmount made or a free freed."""
    touched = set() if rec.op in fl.OP_FLAGS else set(fl.requested_types(rec.raw_flags, rec.op))
    touched |= {fl.ns_type_of_entry(e) for e in rec.changed}
    if rec.target and rec.target.get("type"):
        touched.add(rec.target["type"])
    if rec.ns:
        touched.add(rec.ns["type"])
    return touched


def container_wanted(rec, wanted):
    """--container: the caller's container, or a setns target's, is one of `wanted` (an id prefix or a name)."""
    target = (rec.target or {}).get("container")
    return any(containers.matches(rec.container, w) or containers.matches(target, w) for w in wanted)


def involves(rec, namespaces):
    """--ns: one of `namespaces` (Ns values) is the record's, before, after, as the target, or
    as the namespace it made or freed (open_tree, fsmount, free: `ns`)."""
    target = rec.target if rec.target and rec.target.get("kind") == "nsfs" else rec.ns
    for ns_type, inode, ns_id in namespaces:
        for inodes, ids in ((rec.ns_before, rec.ns_id_before), (rec.ns_after, rec.ns_id_after)):
            for entry, value in (inodes or {}).items():
                if ns_id is None:
                    if value == inode and fl.ns_type_of_entry(entry) == ns_type:
                        return True
                elif ids and ids.get(entry) == ns_id:
                    return True
        if target and ((ns_id is None and target.get("type") == ns_type and target.get("inode") == inode)
                       or (ns_id is not None and target.get("ns_id") == ns_id)):
            return True
    return False
